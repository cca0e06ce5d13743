"""Solo runs that the continuous-batching tests compare against (shared by the CPU, real-model and GPU tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedkit.generate import BatchGenerator, Generator, SamplerParams

GREEDY = SamplerParams(temp=0)


@dataclass
class Case:
    """One prompt of the mixed batch: how many tokens, its stop strings, when it is submitted."""

    prompt: list[int]
    n_predict: int
    stop: tuple[str, ...] = ()
    submit_at: int = 0  # scheduler step before which it is submitted


@dataclass
class Solo:
    """The prompt run alone: Generator's tokens, text and stop reason, and the logits of every sampled step."""

    tokens: list[int]
    text: str
    finish_reason: str
    logits: list[np.ndarray]


def solo_run(gen: Generator, case: Case) -> Solo:
    """Generate `case` alone (greedy), then recompute the logits it sampled from with plain forwards (the
    prompt in `gen.n_batch`-token forwards, as `gen` processed it)."""
    gen.reset()
    r = gen.generate(case.prompt, n_predict=case.n_predict, sampler=GREEDY, stop=list(case.stop), ignore_eos=True)
    model, state = gen.model, gen.model.new_state(len(case.prompt) + case.n_predict + 1)
    prompt = np.asarray(case.prompt, dtype=np.int32)
    for i in range(0, len(prompt), gen.n_batch):
        out = model.forward(prompt[i : i + gen.n_batch], state, i)
    logits = [out[-1]]
    pos = len(case.prompt)
    for t in r.tokens[:-1]:
        logits.append(model.forward(np.asarray([t], dtype=np.int32), state, pos)[-1])
        pos += 1
    return Solo(r.tokens, r.text, r.stop_reason or "", logits)


def with_stop_from_solo(gen: Generator, case: Case) -> Case:
    """`case` with a stop string taken from the middle of its solo text (so it stops early), if it has one."""
    text = solo_run(gen, case).text
    mid = len(text) // 2
    piece = text[mid : mid + 2]
    if len(piece) < 2 or not piece.strip():
        return case
    return Case(case.prompt, case.n_predict, (piece,), case.submit_at)


def batched_run(bgen: BatchGenerator, cases: list[Case]) -> list:
    """Submit each case before its `submit_at` step of a caller-driven BatchGenerator; run to the end."""
    handles: list = [None] * len(cases)
    step = 0
    while True:
        for i, c in enumerate(cases):
            if handles[i] is None and c.submit_at <= step:
                handles[i] = bgen.submit(
                    c.prompt, n_predict=c.n_predict, sampler=GREEDY, stop=list(c.stop), ignore_eos=True,
                    return_logits=True,
                )  # fmt: skip
        worked = bgen.step()
        step += 1
        if not worked and all(h is not None for h in handles):
            break
    return [h.result() for h in handles]


def max_rel_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """Largest |got - want| over the steps, relative to the largest |want|."""
    assert len(got) == len(want), (len(got), len(want))
    scale = max(float(np.abs(w).max()) for w in want)
    worst = max(float(np.abs(np.asarray(g) - np.asarray(w).reshape(-1)).max()) for g, w in zip(got, want, strict=True))
    return worst / scale
