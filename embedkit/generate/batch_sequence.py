"""One sequence of a `BatchGenerator`: its sampling and stop state, its event stream and its handle.

The scheduler (batch_generator.py) owns `BatchSequence` objects and calls `accept(logits)` for each row
of a step that belongs to the sequence; callers only see the `SequenceHandle` that `submit` returns.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from embedkit.errors import GenerationError
from embedkit.generate.generator import Timings
from embedkit.generate.sampler import Sampler
from embedkit.generate.stops import StopReason, StopStrings, budget_left, is_end_of_generation

if TYPE_CHECKING:
    from embedkit.generate.batch_generator import BatchGenerator

CANCELLED = "cancelled"  # finish_reason of a sequence stopped by `cancel()` or by closing the generator
ERROR = "error"  # finish_reason of a sequence whose forward failed (`SequenceResult.error` says why)


@dataclass(frozen=True)
class TokenEvent:
    """One streamed step: a generated token and the text it released.

    `text` may be "" (an incomplete UTF-8 character, or text held back while it could still become a
    stop string). The last event of a sequence may have `token` None: text released at the end.
    """

    token: int | None
    text: str


@dataclass
class SequenceResult:
    """What a finished sequence produced."""

    text: str
    tokens: list[int]  # generated ids (an end-of-generation token that stopped it is not included)
    finish_reason: str  # "eog", "length", "stop", "context", "cancelled" or "error"
    timings: Timings
    prompt_tokens: list[int] = field(default_factory=list)
    error: str | None = None  # the failure, when finish_reason is "error"
    logits: list[np.ndarray] | None = None  # each sampled step's logits, when submitted with return_logits


class BatchSequence:
    """Scheduler-side state of one submitted prompt (used from the scheduler thread only, but `cancel`)."""

    def __init__(
        self,
        engine: BatchGenerator,
        seq_id: int,
        prompt_ids: list[int],
        n_predict: int,
        sampler: Sampler,
        stops: list[str],
        ignore_eos: bool,
        return_logits: bool,
        listener: Callable[[TokenEvent | SequenceResult], None] | None = None,
    ) -> None:
        self.engine = engine
        self._listener = listener
        self.id = seq_id
        self.prompt_ids = prompt_ids
        self.n_predict = n_predict
        self.sampler = sampler
        self.ignore_eos = ignore_eos
        self._stops = StopStrings(stops)
        self._decoder = engine.tokenizer.incremental_decoder()
        self.history = list(prompt_ids)
        self.tokens: list[int] = []
        self.text = ""
        self.logits: list[np.ndarray] | None = [] if return_logits else None
        self.slot: int | None = None
        self.n_past = 0  # tokens of this sequence in its slot's cache
        self.pending: int | None = None  # sampled token to feed at the next step
        self.may_reuse = True  # may start after a prefix its slot's cache already holds
        self.cancel_requested = False
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.timings = Timings(load_ms=engine.load_ms, prompt_tokens=len(prompt_ids))
        self._t_submit = time.perf_counter()
        self._t_start: float | None = None
        self._t_first: float | None = None
        self.events: queue.Queue[TokenEvent | None] = queue.Queue()
        self.finished = threading.Event()

    # -- scheduler side ------------------------------------------------------------------
    @property
    def prompt_left(self) -> int:
        """Prompt tokens not yet in the cache."""
        return max(0, len(self.prompt_ids) - self.n_past)

    def reuse_cached(self, n: int) -> None:
        """The slot's cache already holds the first `n` prompt tokens: start after them."""
        self.n_past = n
        self.timings.prompt_tokens = len(self.prompt_ids) - n

    def started(self) -> None:
        """The first chunk of the prompt goes into a forward now."""
        if self._t_start is None:
            self._t_start = time.perf_counter()

    def accept(self, logits: np.ndarray, n_ctx: int) -> None:
        """Sample the next token from this sequence's output row; finish or leave it `pending`."""
        now = time.perf_counter()
        if self._t_first is None:
            self._t_first = now
            self.timings.prompt_ms = 1000.0 * (now - (self._t_start or now))
        if self.logits is not None:
            self.logits.append(np.array(logits, dtype=np.float32, copy=True))
        token = self.sampler(logits, self.history)
        if is_end_of_generation(token, self.engine.tokenizer.is_eog, self.ignore_eos):
            self.finish(StopReason.EOG)
            return
        self.tokens.append(token)
        self.history.append(token)
        self.timings.gen_tokens = len(self.tokens)
        piece = self._stops.feed(self._decoder.feed(token))
        self.text += piece
        self._emit(TokenEvent(token, piece))
        if self._stops.stopped:
            self.finish(StopReason.STOP_STRING)
        elif not budget_left(len(self.tokens), self.n_predict):
            self.finish(StopReason.LENGTH)
        elif self.n_past >= n_ctx:
            self.finish(StopReason.CONTEXT)  # the slot is full: the token just sampled cannot be fed
        else:
            self.pending = token

    def finish(self, reason: str, error: str | None = None) -> None:
        """End the sequence: release held text, close the event stream, wake `result()` waiters."""
        if self.finish_reason is not None:
            return
        self.finish_reason, self.error, self.pending = reason, error, None
        tail = self._stops.feed(self._decoder.flush()) + self._stops.flush()
        if tail:
            self.text += tail
            self._emit(TokenEvent(None, tail))
        end = time.perf_counter()
        self.timings.gen_ms = 1000.0 * (end - self._t_first) if self._t_first is not None else 0.0
        self.events.put(None)
        self.finished.set()
        if self._listener is not None:
            self._listener(self.result())

    def _emit(self, event: TokenEvent) -> None:
        self.events.put(event)
        if self._listener is not None:
            self._listener(event)

    def result(self) -> SequenceResult:
        """The result so far (final once finished)."""
        return SequenceResult(
            self.text, list(self.tokens), self.finish_reason or "", self.timings, list(self.prompt_ids),
            self.error, self.logits,
        )  # fmt: skip


class SequenceHandle:
    """What `BatchGenerator.submit` returns: iterate it for `TokenEvent`s, `cancel()` it, read `result()`.

    Iterating from one thread at a time is supported (events are queued, so a handle may be read
    after the sequence finished). With a generator that has no scheduler thread (`background=False`),
    iterating or waiting on a handle drives the scheduler's steps itself.
    """

    def __init__(self, seq: BatchSequence) -> None:
        self._seq = seq
        self.id = seq.id
        self._iterated = False

    @property
    def done(self) -> bool:
        """True once the sequence has finished (any reason)."""
        return self._seq.finished.is_set()

    def cancel(self) -> None:
        """Stop the sequence at the next step (finish_reason "cancelled"; what was generated is kept)."""
        self._seq.engine._cancel(self._seq)

    def __iter__(self) -> Iterator[TokenEvent]:
        if self._iterated:
            raise GenerationError("a sequence's events can be iterated only once")
        self._iterated = True
        seq, engine = self._seq, self._seq.engine
        while True:
            try:
                ev = seq.events.get_nowait()
            except queue.Empty:
                if not engine.background:
                    engine.drive(seq)
                    continue
                ev = seq.events.get()
            if ev is None:
                break
            yield ev
        if seq.finish_reason == ERROR:
            raise GenerationError(seq.error or "generation failed")

    def result(self, timeout: float | None = None) -> SequenceResult:
        """Wait for the end (at most `timeout` seconds: TimeoutError) and return the result."""
        seq, engine = self._seq, self._seq.engine
        if not engine.background:
            while not seq.finished.is_set():
                engine.drive(seq)
        elif not seq.finished.wait(timeout):
            raise TimeoutError(f"sequence {self.id} still running after {timeout} s")
        return seq.result()

    def text(self) -> str:
        """Wait for the end and return the generated text."""
        return self.result().text

    def __repr__(self) -> str:
        return f"SequenceHandle(id={self.id}, done={self.done})"
