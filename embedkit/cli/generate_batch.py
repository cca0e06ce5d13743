"""`embedkit generate --batch prompts.jsonl --parallel N`: many prompts, continuous batching, JSON lines out.

Each input line is a JSON object: ``{"prompt": str, "id": any (default: the line number), "n": int}`` plus
any of the sampling options (``temp``, ``top_k``, ``top_p``, ``min_p``, ``repeat_penalty``,
``repeat_last_n``, ``presence_penalty``, ``frequency_penalty``, ``seed``, ``stop`` (a string or a list of
them), ``ignore_eos``); the command-line options are the defaults of every line. Blank lines are skipped.
Each output line is ``{"id", "text", "tokens", "finish_reason"}``, in input order, written as soon as it
and every line before it are done. Every line is checked before the model runs.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, TextIO

from embedkit.errors import GenerationError, InputError

# JSON field -> (SamplerParams field, accepted Python types); bool is excluded from the numbers explicitly
_SAMPLING_FIELDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "temp": ("temp", (int, float)),
    "top_k": ("top_k", (int,)),
    "top_p": ("top_p", (int, float)),
    "min_p": ("min_p", (int, float)),
    "repeat_penalty": ("repeat_penalty", (int, float)),
    "repeat_last_n": ("repeat_last_n", (int,)),
    "presence_penalty": ("presence_penalty", (int, float)),
    "frequency_penalty": ("frequency_penalty", (int, float)),
    "seed": ("seed", (int,)),
}
_KNOWN = {"prompt", "id", "n", "stop", "ignore_eos", *_SAMPLING_FIELDS}


@dataclass
class BatchLine:
    """One validated input line."""

    line_no: int
    id: Any
    prompt: str
    n_predict: int
    params: Any  # SamplerParams
    stop: list[str]
    ignore_eos: bool


def _field_error(line_no: int, name: str, expected: str, value: Any) -> InputError:
    shown = json.dumps(value, ensure_ascii=False)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return InputError(f"line {line_no}: field {name!r}: expected {expected}, got {shown}")


def parse_line(line_no: int, text: str, defaults: BatchLine) -> BatchLine:
    """One JSON line -> BatchLine, the command-line defaults filling what it leaves out."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"line {line_no}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise InputError(f"line {line_no}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _KNOWN)
    if unknown:
        raise InputError(f"line {line_no}: unknown field {unknown[0]!r}; known: {', '.join(sorted(_KNOWN))}")
    if "prompt" not in obj:
        raise InputError(f"line {line_no}: field 'prompt' is missing")
    prompt = obj["prompt"]
    if not isinstance(prompt, str) or not prompt:
        raise _field_error(line_no, "prompt", "a non-empty string", prompt)
    n = obj.get("n", defaults.n_predict)
    if isinstance(n, bool) or not isinstance(n, int) or n < -1:
        raise _field_error(line_no, "n", "an integer >= -1", n)
    stop = obj.get("stop", defaults.stop)
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _field_error(line_no, "stop", "a string or a list of strings", stop)
    ignore_eos = obj.get("ignore_eos", defaults.ignore_eos)
    if not isinstance(ignore_eos, bool):
        raise _field_error(line_no, "ignore_eos", "true or false", ignore_eos)
    changes = {}
    for name, (attr, types) in _SAMPLING_FIELDS.items():
        if name in obj:
            v = obj[name]
            if isinstance(v, bool) or not isinstance(v, types):
                raise _field_error(line_no, name, "an integer" if types == (int,) else "a number", v)
            changes[attr] = v
    params = replace(defaults.params, **changes)
    try:
        params.check()
    except GenerationError as e:
        bad = next(iter(changes), "seed")
        raise InputError(f"line {line_no}: field {bad!r}: {e}") from None
    line_id = obj.get("id", line_no)
    return BatchLine(line_no, line_id, prompt, n, params, list(stop), ignore_eos)


def read_lines(path: str, defaults: BatchLine) -> list[BatchLine]:
    """Every non-blank line of `path` ('-': stdin), validated."""
    try:
        fh = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise InputError(f"{path}: cannot read the batch file ({e.strerror})") from None
    lines = []
    try:
        for no, text in enumerate(fh, start=1):
            if text.strip():
                lines.append(parse_line(no, text, defaults))
    except UnicodeDecodeError:
        raise InputError(f"{path}: expected UTF-8 JSON lines") from None
    finally:
        if fh is not sys.stdin:
            fh.close()
    if not lines:
        raise InputError(f"{path}: no prompts (expected one JSON object a line)")
    return lines


def run_batch(gen: Any, lines: list[BatchLine], chat: bool, system: str | None, out: TextIO, quiet: bool) -> None:
    """Submit every line to the BatchGenerator `gen` and write the results in input order."""
    prompts = []
    extra_stops: tuple[str, ...] = ()
    for ln in lines:
        if chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": ln.prompt}
            ]
            ids = gen.chat_prompt(messages)
            extra_stops = tuple(gen.chat_template.stops)
        else:
            ids = gen.tokenize(ln.prompt)
        if len(ids) > gen.n_ctx_slot:
            raise InputError(
                f"line {ln.line_no}: field 'prompt': {len(ids)} tokens, more than a slot holds ({gen.n_ctx_slot} = "
                f"-c {gen.n_ctx} / --parallel {gen.n_parallel}); raise -c/--ctx-size"
            )
        prompts.append(ids)
    t0 = time.perf_counter()
    handles = [
        gen.submit(ids, n_predict=ln.n_predict, sampler=ln.params, stop=[*ln.stop, *extra_stops],
                   ignore_eos=ln.ignore_eos)
        for ln, ids in zip(lines, prompts, strict=True)
    ]  # fmt: skip
    n_gen = n_prompt = 0
    for ln, h in zip(lines, handles, strict=True):
        r = h.result()
        if r.finish_reason == "error":
            raise GenerationError(f"line {ln.line_no}: {r.error}")
        n_gen += len(r.tokens)
        n_prompt += len(r.prompt_tokens)
        body = {"id": ln.id, "text": r.text, "tokens": r.tokens, "finish_reason": r.finish_reason}
        out.write(json.dumps(body, ensure_ascii=False) + "\n")
        out.flush()
    if not quiet:
        dt = time.perf_counter() - t0
        print(
            f"batch: {len(lines)} prompts, {n_prompt} prompt + {n_gen} generated tokens in {dt:.2f} s "
            f"({(n_prompt + n_gen) / dt if dt > 0 else 0.0:.1f} tokens/s, {gen.steps} steps, "
            f"--parallel {gen.n_parallel})",
            file=sys.stderr,
        )
