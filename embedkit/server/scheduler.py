"""The generation seam: routes hand a `GenerationRequest` to `GenerationScheduler.submit` and read
`GenerationEvent`s from the returned handle; nothing else of the engine is visible to them.

This scheduler runs `embedkit.generate.Generator` on one thread per model: `slots` generators share the loaded
weights, each with its own KV cache, and the thread advances the active ones in turn (one streamed piece each),
so `--parallel N` requests progress together while the engine computes one sequence at a time. The engine's
multi-sequence batching can replace `_run`'s loop (one batched step for all active slots) behind the same
`submit` / handle interface without touching the routes.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

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


class GenerationHandle:
    """The caller's side of a submitted generation: `events()` to read, `cancel()` to stop it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self._cancelled = threading.Event()

    def post(self, event: GenerationEvent) -> None:
        """Deliver an event (from the scheduler's thread)."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self._cancelled.set()

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
        """Stop the generation at its next token (the client went away)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class _Job:
    request: GenerationRequest
    handle: GenerationHandle
    submitted: float
    slot: int = -1
    run: Any = None
    it: Any = None
    sampler: Any = None
    reported_tokens: int = 0
    reported_logprobs: int = 0


def _finish_reason(stop_reason: str | None) -> str:
    return "stop" if stop_reason in (StopReason.EOG, StopReason.STOP_STRING) else "length"


def timings_json(t: Any) -> dict[str, Any]:
    """llama-server's `timings` object from a run's Timings."""
    def per(ms: float, n: int) -> tuple[float, float]:
        return (ms / n if n else 0.0), (1000.0 * n / ms if ms > 0 else 0.0)

    p_tok, p_sec = per(t.prompt_ms, t.prompt_tokens)
    g_tok, g_sec = per(t.gen_ms, t.gen_tokens)
    return {"prompt_n": t.prompt_tokens, "prompt_ms": round(t.prompt_ms, 3), "prompt_per_token_ms": round(p_tok, 3),
            "prompt_per_second": round(p_sec, 3), "predicted_n": t.gen_tokens, "predicted_ms": round(t.gen_ms, 3),
            "predicted_per_token_ms": round(g_tok, 3), "predicted_per_second": round(g_sec, 3)}


class GenerationScheduler:
    """Runs generations for one model on its own thread; at most `slots` at once, `max_queue` more waiting."""

    def __init__(self, make_generator: Callable[[int], Any], slots: int, max_queue: int, metrics: ServerMetrics,
                 model_name: str) -> None:
        """`make_generator(i)` builds slot i's Generator (slot 0 loads the model, the others share it)."""
        self.generators = [make_generator(i) for i in range(slots)]
        self.tokenizer = self.generators[0].tokenizer
        self.n_ctx = self.generators[0].n_ctx
        self.max_queue = max_queue
        self.metrics = metrics
        self.model_name = model_name
        self._waiting: collections.deque[_Job] = collections.deque()
        self._free = list(range(slots))
        self._active: list[_Job] = []
        self._wake = threading.Condition()
        self._stopping = False
        metrics.queue_depth.set_function(lambda: len(self._waiting), model=model_name)
        metrics.slots_busy.set_function(lambda: len(self._active), model=model_name)
        self._thread = threading.Thread(target=self._run, name=f"embedkit-generate-{model_name}", daemon=True)
        self._thread.start()

    # -- callers ---------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> GenerationHandle:
        """Queue a generation (call from the event loop); QueueFull when no slot and no queue place is free."""
        handle = GenerationHandle(asyncio.get_running_loop())
        with self._wake:
            busy = len(self._active) + len(self._waiting)
            if busy >= len(self.generators) + self.max_queue:
                self.metrics.rejected.inc(model=self.model_name)
                raise QueueFull()
            self._waiting.append(_Job(request, handle, time.perf_counter()))
            self._wake.notify()
        return handle

    def close(self) -> None:
        """Stop the thread (running generations end as cancelled)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # -- the thread ------------------------------------------------------------------------------
    def _pick_slot(self, prompt: list[int]) -> int:
        """The free slot whose cached tokens share the longest prefix with `prompt` (chat turns reuse it)."""
        def shared(i: int) -> int:
            n = 0
            for a, b in zip(self.generators[i].cached, prompt, strict=False):
                if a != b:
                    break
                n += 1
            return n

        best = max(self._free, key=shared)
        self._free.remove(best)
        return best

    def _admit(self) -> None:
        while self._free and self._waiting:
            job = self._waiting.popleft()
            if job.handle.cancelled:
                self.metrics.generations.inc(model=self.model_name, outcome="cancelled")
                continue
            job.slot = self._pick_slot(job.request.prompt_ids)
            gen, req = self.generators[job.slot], job.request
            try:
                sampler = (RecordingSampler(req.sampler, gen.tokenizer, req.top_logprobs)
                           if req.top_logprobs is not None else Sampler(req.sampler))
                job.sampler = sampler
                job.run = gen.start(req.prompt_ids, n_predict=req.max_tokens, sampler=sampler, stop=req.stop,
                                    ignore_eos=req.ignore_eos)
                job.it = iter(job.run)
            except Exception as e:  # noqa: BLE001 - reported to the caller
                self._end(job, error=e)
                continue
            self.metrics.tokens_in.inc(len(req.prompt_ids), model=self.model_name)
            self._active.append(job)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._active:
                    self._wake.wait()
                if self._stopping:
                    for job in list(self._active) + list(self._waiting):
                        job.handle.cancel()
                        self._end(job, outcome="cancelled")
                    return
                self._admit()
            for job in list(self._active):
                self._step(job)

    def _step(self, job: _Job) -> None:
        if job.handle.cancelled:
            self._end(job, outcome="cancelled")
            return
        try:
            piece = next(job.it)
        except StopIteration:
            self._end(job, outcome="completed")
            return
        except Exception as e:  # noqa: BLE001 - reported to the caller
            self._end(job, error=e)
            return
        if job.reported_tokens == 0:
            self.metrics.time_to_first_token.observe(time.perf_counter() - job.submitted, model=self.model_name)
        job.handle.post(GenerationEvent(text=piece, logprobs=self._new_tokens(job)))

    def _new_tokens(self, job: _Job) -> list[TokenLogprob]:
        """Count tokens produced since the last event, and return their log-probabilities (if recorded)."""
        n = len(job.run.tokens)
        self.metrics.tokens_out.inc(n - job.reported_tokens, model=self.model_name)
        job.reported_tokens = n
        if not isinstance(job.sampler, RecordingSampler):
            return []
        new = job.sampler.records[job.reported_logprobs : n]
        job.reported_logprobs = max(job.reported_logprobs, n)
        return new

    def _end(self, job: _Job, outcome: str = "error", error: BaseException | None = None) -> None:
        if job in self._active:
            self._active.remove(job)
        if job.it is not None and outcome == "cancelled":
            job.it.close()
        if job.slot >= 0:
            self._free.append(job.slot)
        self.metrics.generations.inc(model=self.model_name, outcome=outcome)
        if error is not None:
            job.handle.post(GenerationEvent(error=error))
            return
        if outcome == "cancelled":
            return
        res = job.run.result
        job.handle.post(GenerationEvent(
            logprobs=self._new_tokens(job), done=True, finish_reason=_finish_reason(res.stop_reason),
            prompt_tokens=len(job.request.prompt_ids), completion_tokens=len(res.tokens),
            timings=timings_json(res.timings)))
