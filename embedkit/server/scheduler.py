"""The generation seam: routes hand a `GenerationRequest` to `GenerationScheduler.submit` and read
`GenerationEvent`s from the returned handle; nothing else of the engine is visible to them.

This scheduler runs one model's `embedkit.generate.BatchGenerator` (continuous batching): its `--parallel`
slots each hold one sequence, and every engine step is one forward over all of them, so concurrent requests
decode together. The engine's thread pushes each sequence's tokens and its end to a listener here, which turns
them into `GenerationEvent`s on the request's asyncio queue; cancelling a handle cancels the sequence.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from embedkit.generate.batch_sequence import CANCELLED, ERROR, SequenceResult, TokenEvent
from embedkit.generate.sampler import Sampler, SamplerParams
from embedkit.generate.stops import StopReason
from embedkit.server.logprobs import RecordingSampler, TokenLogprob
from embedkit.server.metrics import ServerMetrics


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is full."""


@dataclass
class GenerationRequest:
    """One generation: prompt tokens, token budget (>= 1), sampling, stop strings, and how many alternatives
    to report per token (`top_logprobs`; None: no log-probabilities)."""

    prompt_ids: list[int]
    max_tokens: int
    sampler: SamplerParams
    stop: list[str] = field(default_factory=list)
    top_logprobs: int | None = None
    ignore_eos: bool = False
    cache_prompt: bool = True  # may start after a prefix a slot's cache holds


@dataclass
class GenerationEvent:
    """Streamed text (with its tokens' log-probabilities), or the end: finish reason, usage, timings, or error."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    done: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: dict[str, Any] | None = None
    error: BaseException | None = None


class _Outbox:
    """Events from the engine's thread to one event loop, delivered by one loop callback per burst: every token of
    a step (one per running sequence) wakes the loop once, not once each. Each wake-up hands the GIL and a core
    to the loop thread while the engine's kernel threads want them, which on a small machine costs more than
    the event's own work."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue[GenerationEvent], GenerationEvent]] = []
        self._scheduled = False

    def put(self, queue: asyncio.Queue[GenerationEvent], event: GenerationEvent) -> bool:
        """Queue `event` for `queue` (from any thread); False if the loop is closed."""
        with self._lock:
            self._items.append((queue, event))
            if self._scheduled:
                return True
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            return False
        return True

    def _drain(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for queue, event in items:
            queue.put_nowait(event)


class GenerationHandle:
    """The caller's side of a submitted generation: `events()` to read, `cancel()` to stop it."""

    def __init__(self, outbox: _Outbox) -> None:
        self._outbox = outbox
        self._events: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self.on_cancel: Callable[[], None] | None = None  # stops the engine's sequence

    def post(self, event: GenerationEvent) -> None:
        """Deliver an event (from the scheduler's thread)."""
        if not self._outbox.put(self._events, event):
            self.cancel()

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """Events until (and including) the one that is done or carries an error."""
        while True:
            ev = await self._events.get()
            yield ev
            if ev.done or ev.error is not None:
                return

    async def next_event(self, timeout: float) -> GenerationEvent | None:
        """The next event, or None after `timeout` seconds without one."""
        try:
            return await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            return None

    def cancel(self) -> None:
        """Stop the generation at its next token (the client went away); a no-op once it has ended."""
        if self.on_cancel is not None:
            self.on_cancel()


class _Job:
    """One submitted generation, seen from the engine's thread (its listener)."""

    def __init__(self, scheduler: GenerationScheduler, request: GenerationRequest, handle: GenerationHandle,
                 sampler: Sampler) -> None:
        self.scheduler, self.request, self.handle, self.sampler = scheduler, request, handle, sampler
        self.submitted = time.perf_counter()
        self.n_tokens = 0  # generated tokens delivered so far
        self.reported = 0  # of them, how many had their log-probabilities sent

    def __call__(self, item: TokenEvent | SequenceResult) -> None:
        """The engine's listener: a token's text, or the sequence's end."""
        if isinstance(item, SequenceResult):
            self.scheduler._finished(self, item)
            return
        if item.token is not None:
            self.n_tokens += 1
            self.scheduler._token(self)
        self.handle.post(GenerationEvent(text=item.text, logprobs=self.take_logprobs(self.n_tokens)))

    def take_logprobs(self, upto: int) -> list[TokenLogprob]:
        """Log-probabilities of the tokens not yet reported, up to the `upto`-th (when recorded): the sampler
        also records the end-of-generation token it picks, which is not part of the completion."""
        if not isinstance(self.sampler, RecordingSampler):
            return []
        new = self.sampler.records[self.reported : upto]
        self.reported = max(self.reported, upto)
        return new


def _finish_reason(stop_reason: str | None) -> str:
    return "stop" if stop_reason in (StopReason.EOG, StopReason.STOP_STRING) else "length"


def timings_json(t: Any, n_prompt: int) -> dict[str, Any]:
    """llama-server's `timings` object from a run's Timings (`n_prompt`: the whole prompt's tokens, of which
    `t.prompt_tokens` were processed and the rest, `cache_n`, came from the slot's cache)."""
    def per(ms: float, n: int) -> tuple[float, float]:
        return (ms / n if n else 0.0), (1000.0 * n / ms if ms > 0 else 0.0)

    p_tok, p_sec = per(t.prompt_ms, t.prompt_tokens)
    g_tok, g_sec = per(t.gen_ms, t.gen_tokens)
    return {"cache_n": n_prompt - t.prompt_tokens,
            "prompt_n": t.prompt_tokens, "prompt_ms": round(t.prompt_ms, 3), "prompt_per_token_ms": round(p_tok, 3),
            "prompt_per_second": round(p_sec, 3), "predicted_n": t.gen_tokens, "predicted_ms": round(t.gen_ms, 3),
            "predicted_per_token_ms": round(g_tok, 3), "predicted_per_second": round(g_sec, 3)}


class GenerationScheduler:
    """Runs generations for one model on its BatchGenerator: at most `slots` at once, `max_queue` more waiting."""

    def __init__(self, engine: Any, max_queue: int, metrics: ServerMetrics, model_name: str) -> None:
        """`engine`: a background `BatchGenerator` (its `n_parallel` slots are the server's slots)."""
        self.engine = engine
        self.slots = engine.n_parallel
        self.tokenizer = engine.tokenizer
        self.n_ctx = engine.n_ctx_slot  # one request's context: prompt plus completion
        self.max_queue = max_queue
        self.metrics = metrics
        self.model_name = model_name
        self._in_flight = 0  # submitted and not yet finished (running or waiting)
        self._count_lock = threading.Lock()  # never held while calling into the engine
        metrics.queue_depth.set_function(lambda: engine.n_waiting, model=model_name)
        metrics.slots_busy.set_function(lambda: engine.n_running, model=model_name)
        engine.on_step = self._observe_step
        self._outboxes: dict[asyncio.AbstractEventLoop, _Outbox] = {}  # one per event loop (the server's)

    # -- callers ---------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue a generation (call from the event loop); QueueFull when no slot and no queue place is free,
        GenerationError for a request the engine refuses (e.g. a prompt longer than a slot)."""
        with self._count_lock:
            if self._in_flight >= self.slots + self.max_queue:
                self.metrics.rejected.inc(model=self.model_name)
                raise QueueFull()
            self._in_flight += 1
        loop = asyncio.get_running_loop()
        outbox = self._outboxes.get(loop)
        if outbox is None:
            outbox = self._outboxes[loop] = _Outbox(loop)
        handle = GenerationHandle(outbox)
        try:
            sampler = (RecordingSampler(request.sampler, self.tokenizer, request.top_logprobs)
                       if request.top_logprobs is not None else Sampler(request.sampler))
            job = _Job(self, request, handle, sampler)
            seq = self.engine.submit(request.prompt_ids, n_predict=request.max_tokens, sampler=sampler,
                                     stop=request.stop, ignore_eos=request.ignore_eos, listener=job,
                                     reuse_prefix=request.cache_prompt)
        except BaseException:
            self._release()
            raise
        handle.on_cancel = seq.cancel
        self.metrics.tokens_in.inc(len(request.prompt_ids), model=self.model_name)
        return handle

    def close(self) -> None:
        """Stop the engine (running and waiting generations end as cancelled)."""
        self.engine.close()

    # -- the engine's thread ---------------------------------------------------------------------
    def _release(self) -> None:
        with self._count_lock:
            self._in_flight -= 1

    def _observe_step(self, rows: int, sequences: int) -> None:
        self.metrics.generation_batch_sequences.observe(sequences, model=self.model_name)

    def _token(self, job: _Job) -> None:
        self.metrics.tokens_out.inc(model=self.model_name)
        if job.n_tokens == 1:
            self.metrics.time_to_first_token.observe(time.perf_counter() - job.submitted, model=self.model_name)

    def _finished(self, job: _Job, res: SequenceResult) -> None:
        self._release()
        if res.finish_reason == CANCELLED:
            self.metrics.generations.inc(model=self.model_name, outcome="cancelled")
            return
        if res.finish_reason == ERROR:
            self.metrics.generations.inc(model=self.model_name, outcome="error")
            # the engine's forward failed: not the request's fault, so a 500 (bad requests fail in `submit`)
            job.handle.post(GenerationEvent(error=RuntimeError(f"generation failed: {res.error}")))
            return
        self.metrics.generations.inc(model=self.model_name, outcome="completed")
        job.handle.post(GenerationEvent(
            logprobs=job.take_logprobs(len(res.tokens)), done=True, finish_reason=_finish_reason(res.finish_reason),
            prompt_tokens=len(job.request.prompt_ids), completion_tokens=len(res.tokens),
            timings=timings_json(res.timings, len(job.request.prompt_ids))))
