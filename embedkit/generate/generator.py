"""The generation loop: prompt in batches, then token-by-token decode with sampling, streaming and stops.

    gen = Generator("model.gguf", n_ctx=4096)
    run = gen.start("Once upon a time", n_predict=64, sampler=SamplerParams(temp=0))
    for piece in run:              # text as it is produced
        print(piece, end="", flush=True)
    run.result.timings             # load/prompt/generation times

The KV cache is allocated once (``n_ctx`` positions) and kept between calls: a new prompt that starts
with tokens already in the cache (the previous turns of a chat) only processes the rest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from embedkit.errors import GenerationError, UnsupportedModelError
from embedkit.generate.chat_template import ChatTemplate, template_for_gguf
from embedkit.generate.sampler import Sampler, SamplerParams
from embedkit.generate.stops import StopReason, StopStrings, budget_left, is_end_of_generation
from embedkit.gguf import GGUFFile

# Default KV cache size cap: a model's training context can be 32k-128k positions, too much memory for
# a default; -c raises it.
DEFAULT_CTX_CAP = 4096
# Positions are int32 (as llama.cpp's llama_pos).
MAX_CTX = 2**31 - 1


def _out_of_memory(e: BaseException) -> bool:
    """True for a failed allocation: the host's MemoryError, CuPy's OutOfMemoryError, CUDA_ERROR_OUT_OF_MEMORY."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "OUT_OF_MEMORY" in str(e)


def _kv_bytes(params: Any, n_ctx: int) -> int:
    """Bytes of float32 keys and values for ``n_ctx`` positions in every layer."""
    head_dim = getattr(params, "head_dim", 0)
    per_pos = getattr(params, "n_head_kv", 0) * (head_dim + getattr(params, "head_dim_v", head_dim)) * 4
    return getattr(params, "n_layer", 0) * n_ctx * per_pos


def default_ctx(n_ctx_train: int) -> int:
    """The context used when none is given: the model's own, capped at DEFAULT_CTX_CAP."""
    return max(1, min(int(n_ctx_train or DEFAULT_CTX_CAP), DEFAULT_CTX_CAP))


def load_generative(
    model: str | os.PathLike[str] | GGUFFile, n_threads: int | None = None, placement: Any = None
) -> tuple[GGUFFile, Any, Any]:
    """(file, model, tokenizer) of a generative GGUF model; UnsupportedModelError for an encoder."""
    from embedkit.models import ENCODER_ARCHITECTURES, GENERATIVE_ARCHITECTURES, load_model
    from embedkit.tokenizer import load_tokenizer

    if n_threads is not None:
        from embedkit.kernels import set_num_threads

        set_num_threads(n_threads)
    f = model if isinstance(model, GGUFFile) else GGUFFile(Path(model))
    if f.architecture in ENCODER_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{f.path}: {f.architecture!r} is an embedding (encoder) model and cannot generate text; "
            f"generation supports {', '.join(GENERATIVE_ARCHITECTURES)}"
        )
    return f, load_model(f, placement), load_tokenizer(f)


def chat_prompt_ids(
    template: ChatTemplate, tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of ``messages`` rendered by ``template`` (special tokens in it are parsed)."""
    text = template.render(messages, add_generation_prompt=add_generation_prompt)
    ids = tokenizer.encode(text, add_special=True, parse_special=True)
    bos = tokenizer.bos_id
    writes_bos = "bos_token" in template.source
    if writes_bos and len(ids) >= 2 and bos is not None and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]  # the template wrote BOS itself and the tokenizer added another
    return ids


@dataclass
class Timings:
    """Where the time went, in milliseconds (llama.cpp's perf counters, reduced)."""

    load_ms: float = 0.0
    prompt_tokens: int = 0  # tokens actually processed (a cached prefix is not counted)
    prompt_ms: float = 0.0
    gen_tokens: int = 0
    gen_ms: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON output."""
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def summary(self) -> str:
        """Lines in the style of llama.cpp's ``llama_perf_context_print``."""

        def rate(n: int, ms: float) -> str:
            per = ms / n if n else 0.0
            tps = 1000.0 * n / ms if ms > 0 else 0.0
            return f"{ms:10.2f} ms / {n:5d} tokens ({per:8.2f} ms per token, {tps:8.2f} tokens per second)"

        return "\n".join(
            [
                f"load time        = {self.load_ms:10.2f} ms",
                f"prompt eval time = {rate(self.prompt_tokens, self.prompt_ms)}",
                f"       eval time = {rate(self.gen_tokens, self.gen_ms)}",
                f"      total time = {self.load_ms + self.prompt_ms + self.gen_ms:10.2f} ms",
            ]
        )


@dataclass
class GenerationResult:
    """What a finished (or interrupted) run produced."""

    text: str
    tokens: list[int]  # generated ids (an end-of-generation token that stopped the run is not included)
    stop_reason: str | None  # StopReason value; None while running or after an interruption
    timings: Timings
    prompt_tokens: list[int] = field(default_factory=list)


class Generation:
    """One run of the loop; iterate it for streamed text, then read ``result``.

    Safe to abandon midway (e.g. KeyboardInterrupt): ``text``/``tokens`` hold what was produced, and the
    generator's cache stays consistent with the tokens it reports as cached.
    """

    def __init__(
        self,
        gen: Generator,
        prompt_ids: list[int],
        n_predict: int,
        sampler: Sampler,
        stops: Sequence[str],
        ignore_eos: bool,
    ) -> None:
        self._gen = gen
        self.prompt_ids = prompt_ids
        self.n_predict = n_predict
        self.sampler = sampler
        self.ignore_eos = ignore_eos
        self._stops = StopStrings(stops)
        self.text = ""
        self.tokens: list[int] = []
        self.stop_reason: str | None = None
        self.timings = Timings(load_ms=gen.load_ms)
        self._started = False

    @property
    def result(self) -> GenerationResult:
        """Text, tokens, stop reason and timings so far (final once iteration ended)."""
        return GenerationResult(self.text, list(self.tokens), self.stop_reason, self.timings, self.prompt_ids)

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise GenerationError("a Generation can be iterated only once")
        self._started = True
        gen, tok = self._gen, self._gen.tokenizer
        t0 = time.perf_counter()
        logits = gen._process_prompt(self.prompt_ids, self.timings)
        t1 = time.perf_counter()
        self.timings.prompt_ms = 1000.0 * (t1 - t0)
        history = list(self.prompt_ids)
        decoder = tok.incremental_decoder()
        try:
            while budget_left(len(self.tokens), self.n_predict):
                token = self.sampler(logits, history)
                if is_end_of_generation(token, tok.is_eog, self.ignore_eos):
                    self.stop_reason = StopReason.EOG
                    break
                self.tokens.append(token)
                history.append(token)
                self.timings.gen_tokens = len(self.tokens)
                piece = self._stops.feed(decoder.feed(token))
                if piece:
                    self.text += piece
                    yield piece
                if self._stops.stopped:
                    self.stop_reason = StopReason.STOP_STRING
                    break
                if not budget_left(len(self.tokens), self.n_predict):
                    break  # no need to run the model on the last token
                if self.n_predict < 0 and len(gen.cached) >= gen.n_ctx:
                    self.stop_reason = StopReason.CONTEXT  # "until the context is full" was asked for
                    break
                logits = gen._decode(token)
            else:
                self.stop_reason = StopReason.LENGTH
            if self.stop_reason is None:
                self.stop_reason = StopReason.LENGTH
            tail = self._stops.feed(decoder.flush()) + self._stops.flush()
            if tail:
                self.text += tail
                yield tail
        finally:
            self.timings.gen_ms = 1000.0 * (time.perf_counter() - t1)


class PromptMethods:
    """Prompt helpers shared by `Generator` and `BatchGenerator`: their ``tokenizer`` and GGUF ``file``."""

    tokenizer: Any
    file: GGUFFile | None

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of a raw prompt (BOS as the model asks)."""
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    @cached_property
    def chat_template(self) -> ChatTemplate:
        """The file's ``tokenizer.chat_template``, or the built-in format that fits the model."""
        if self.file is None:
            raise GenerationError("no GGUF file to read a chat template from")
        return template_for_gguf(self.file.metadata, self.file.architecture)

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of ``messages`` rendered by the chat template (special tokens in it are parsed)."""
        return chat_prompt_ids(self.chat_template, self.tokenizer, messages, add_generation_prompt)


class Generator(PromptMethods):
    """A loaded model, its tokenizer and a KV cache of ``n_ctx`` positions."""

    def __init__(
        self,
        model: str | os.PathLike[str] | GGUFFile,
        n_ctx: int | None = None,
        n_batch: int = 512,
        n_threads: int | None = None,
        placement: Any = None,
    ) -> None:
        """Load ``model`` (a GGUF path or open file); ``n_ctx`` None = the model's context capped at 4096."""
        t0 = time.perf_counter()
        f, m, tok = load_generative(model, n_threads, placement)
        self._setup(f, m, tok, n_ctx, n_batch)
        self.load_ms = 1000.0 * (time.perf_counter() - t0)

    @classmethod
    def from_parts(
        cls, file: GGUFFile | None, model: Any, tokenizer: Any, n_ctx: int | None = None, n_batch: int = 512
    ) -> Generator:
        """A generator over an already loaded model and tokenizer (``file`` gives the chat template)."""
        self = cls.__new__(cls)
        self._setup(file, model, tokenizer, n_ctx, n_batch)
        self.load_ms = 0.0
        return self

    def _setup(self, file: GGUFFile | None, model: Any, tokenizer: Any, n_ctx: int | None, n_batch: int) -> None:
        if n_batch < 1:
            raise GenerationError(f"batch size must be >= 1, got {n_batch}")
        if n_ctx is not None and not 1 <= n_ctx <= MAX_CTX:
            raise GenerationError(f"context size must be in [1, {MAX_CTX}], got {n_ctx}")
        self.file, self.model, self.tokenizer = file, model, tokenizer
        self.n_ctx = int(n_ctx) if n_ctx else default_ctx(model.params.n_ctx_train)
        self.n_batch = int(n_batch)
        try:
            self.state = model.new_state(self.n_ctx)
        except Exception as e:
            if not _out_of_memory(e):
                raise
            gib = _kv_bytes(model.params, self.n_ctx) / 2**30
            raise GenerationError(
                f"a context of {self.n_ctx} tokens (-c/--ctx-size) needs {gib:.1f} GiB of KV cache, more than can be "
                f"allocated; lower -c (the model was trained with {model.params.n_ctx_train})"
            ) from None
        self.cached: list[int] = []  # tokens whose keys/values are in self.state, positions 0..

    # -- the loop -------------------------------------------------------------------------------
    def start(
        self,
        prompt: str | Sequence[int],
        n_predict: int = 128,
        sampler: SamplerParams | Sampler | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
    ) -> Generation:
        """Prepare a run; iterate the returned Generation to produce text.

        ``n_predict < 0`` generates until an end-of-generation token, a stop string or a full context
        (stop reason "context"); with a budget, running out of context raises GenerationError.
        """
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise GenerationError("the prompt is empty (no tokens)")
        if len(ids) > self.n_ctx:
            raise GenerationError(
                f"the prompt has {len(ids)} tokens but the context holds {self.n_ctx}; raise -c/--ctx-size"
            )
        bad = [t for t in ids if not 0 <= t < self.model.params.n_vocab]
        if bad:
            raise GenerationError(f"prompt token id {bad[0]} is outside the vocabulary ({self.model.params.n_vocab})")
        if not isinstance(sampler, Sampler):
            sampler = Sampler(sampler)
        return Generation(self, ids, int(n_predict), sampler, stop, ignore_eos)

    def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> GenerationResult:
        """Run to the end and return the result (``start``'s arguments)."""
        run = self.start(prompt, **kwargs)
        for _ in run:
            pass
        return run.result

    def reset(self) -> None:
        """Forget the cached prefix (the next prompt is processed from its first token)."""
        self.cached = []

    def _process_prompt(self, ids: list[int], timings: Timings) -> np.ndarray:
        """Fill the cache with ``ids`` (reusing a cached prefix) and return the last position's logits."""
        keep = 0
        for a, b in zip(self.cached, ids, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(ids) - 1)  # at least one token must run to get logits
        self.cached = self.cached[:keep]
        todo = ids[keep:]
        timings.prompt_tokens = len(todo)
        logits = None
        for i in range(0, len(todo), self.n_batch):
            chunk = todo[i : i + self.n_batch]
            last = i + self.n_batch >= len(todo)
            out = self.model.forward(
                np.asarray(chunk, dtype=np.int32), self.state, len(self.cached), output="logits" if last else "hidden"
            )
            self.cached.extend(chunk)
            if last:
                logits = out[-1]
        assert logits is not None
        return logits

    def _decode(self, token: int) -> np.ndarray:
        """Run one token at the next position; its logits."""
        pos = len(self.cached)
        if pos >= self.n_ctx:
            raise GenerationError(
                f"context full: {self.n_ctx} tokens (prompt + generated) reached -c/--ctx-size {self.n_ctx}; "
                "raise -c or lower -n"
            )
        out = self.model.forward(np.asarray([token], dtype=np.int32), self.state, pos, output="logits")
        self.cached.append(token)
        return out[-1]
