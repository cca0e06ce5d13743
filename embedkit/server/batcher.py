"""The embeddings collector: one worker thread per embedding model takes the requests queued when it is free (up
to a token budget; optionally waiting a short window for more), runs their texts through shared forward passes of
`Embedder.embed_tokens`, and hands each caller exactly its own rows."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from embedkit.server.metrics import ServerMetrics

_STOP = object()


@dataclass
class _Job:
    seqs: list[list[int]]
    alone: bool
    future: Future = field(default_factory=Future)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.seqs)


class EmbeddingBatcher:
    """Batches embedding work of many callers into the forwards of one `Embedder`, on one thread.

    window_ms: how long the first request of a batch waits for others (0: not at all, a batch is what was
    queued when the worker got to it); batch_tokens: a batch closes at this
    many tokens (a single larger request still runs, alone); batch_size: texts per forward pass.
    """

    def __init__(self, embedder, model_name: str, metrics: ServerMetrics, window_ms: float = 0.0,
                 batch_tokens: int = 8192, batch_size: int = 32) -> None:
        self.embedder = embedder
        self.model_name = model_name
        self.metrics = metrics
        self.window = window_ms / 1000.0
        self.batch_tokens = batch_tokens
        self.batch_size = batch_size
        self._queue: queue.Queue = queue.Queue()
        metrics.queue_depth.set_function(self._queue.qsize, model=model_name)
        self._thread = threading.Thread(target=self._run, name=f"embedkit-embed-{model_name}", daemon=True)
        self._thread.start()

    # -- callers ---------------------------------------------------------------------------------
    def submit(self, seqs: Sequence[Sequence[int]], alone: bool = False) -> Future:
        """Queue token sequences; the future gives their vectors [len(seqs), dim]. `alone`: run them in their
        own forwards (a search query then gets the very vector `embedkit search` computes)."""
        job = _Job([list(s) for s in seqs], alone)
        self._queue.put(job)
        return job.future

    async def embed(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Vectors of `seqs`, awaited without blocking the event loop."""
        fut = self.submit(seqs)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.cancel()  # the client went away: drop the work if it has not started
            raise

    def embed_texts(self, texts: Sequence[str], batch_size: int = 32, progress=None) -> np.ndarray:
        """Blocking `Embedder.embed` through this thread (for search and indexing, which run in worker threads)."""
        seqs = [self.embedder.tokenize(t) for t in texts]
        vecs = self.submit(seqs, alone=True).result()
        if progress is not None:
            progress(len(texts))
        return vecs

    def close(self) -> None:
        """Stop the worker after the queued work."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    # -- the worker ------------------------------------------------------------------------------
    def _collect(self, first: _Job) -> tuple[list[_Job], object | None]:
        """The batch that starts with `first`, and the item that did not fit (for the next round).

        Everything already queued joins (up to the token budget) without waiting: under load, the requests
        that arrived while the previous forward ran are the next batch, and an idle server runs a lone request
        at once. A positive window additionally waits that long after `first` for more.
        """
        batch, tokens = [first], first.tokens
        if first.alone:
            return batch, None
        deadline = time.monotonic() + self.window
        while tokens < self.batch_tokens:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP or item.alone or tokens + item.tokens > self.batch_tokens:
                return batch, item
            batch.append(item)
            tokens += item.tokens
        return batch, None

    def _run(self) -> None:
        carry = None
        while True:
            item = carry if carry is not None else self._queue.get()
            carry = None
            if item is _STOP:
                return
            batch, carry = self._collect(item)
            self._forward([j for j in batch if j.future.set_running_or_notify_cancel()])

    def _forward(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        seqs = [s for j in jobs for s in j.seqs]
        before = self.embedder.stats.batches
        try:
            vecs = self.embedder.embed_tokens(seqs, batch_size=self.batch_size)
        except Exception as e:  # noqa: BLE001 - every caller of the batch gets the error
            for j in jobs:
                j.future.set_exception(e)
            return
        m, name = self.metrics, self.model_name
        m.embed_forwards.inc(self.embedder.stats.batches - before, model=name)
        m.embed_batch_texts.observe(len(seqs), model=name)
        m.embed_batch_requests.observe(len(jobs), model=name)
        m.tokens_in.inc(sum(len(s) for s in seqs), model=name)
        start = 0
        for j in jobs:
            j.future.set_result(vecs[start : start + len(j.seqs)].copy())
            start += len(j.seqs)
