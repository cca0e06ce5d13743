"""Log-probabilities of generated tokens: a sampler that records, for each token it picks, its log-probability
under the model's distribution (log-softmax of the raw logits) and the most likely alternatives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedkit.generate.sampler import Sampler, SamplerParams

MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and the `top` alternatives (text, bytes, logprob)."""

    token_id: int
    text: str
    bytes: list[int]
    logprob: float
    top: list[tuple[str, list[int], float]]


class RecordingSampler(Sampler):
    """A Sampler that also appends a TokenLogprob to `records` for every token it returns."""

    def __init__(self, params: SamplerParams, tokenizer, top_n: int) -> None:
        super().__init__(params)
        self.tokenizer = tokenizer
        self.top_n = top_n
        self.records: list[TokenLogprob] = []

    def _piece(self, tid: int) -> tuple[str, list[int]]:
        raw = self.tokenizer.token_to_piece(tid)
        return raw.decode("utf-8", "replace"), list(raw)

    def __call__(self, logits: np.ndarray, history: Sequence[int] | np.ndarray = ()) -> int:
        token = super().__call__(logits, history)
        x = np.asarray(logits, dtype=np.float64).reshape(-1)
        logz = x.max() + np.log(np.exp(x - x.max()).sum())
        top: list[tuple[str, list[int], float]] = []
        if self.top_n > 0:
            n = min(self.top_n, x.shape[0])
            ids = np.argpartition(-x, n - 1)[:n]
            for tid in ids[np.argsort(-x[ids], kind="stable")]:
                text, raw = self._piece(int(tid))
                top.append((text, raw, float(x[tid] - logz)))
        text, raw = self._piece(token)
        self.records.append(TokenLogprob(token, text, raw, float(x[token] - logz), top))
        return token


def chat_logprobs(records: Sequence[TokenLogprob]) -> dict:
    """The `logprobs` object of a chat completion choice (or chunk)."""
    return {"content": [
        {"token": r.text, "logprob": r.logprob, "bytes": r.bytes,
         "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, b, lp in r.top]}
        for r in records
    ], "refusal": None}


def completion_logprobs(records: Sequence[TokenLogprob], text_offset: int = 0) -> dict:
    """The legacy `logprobs` object of a text completion choice (or chunk)."""
    offsets, pos = [], text_offset
    for r in records:
        offsets.append(pos)
        pos += len(r.text)
    return {
        "tokens": [r.text for r in records],
        "token_logprobs": [r.logprob for r in records],
        "top_logprobs": [{t: lp for t, _, lp in r.top} for r in records],
        "text_offset": offsets,
    }
