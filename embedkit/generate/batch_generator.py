"""Continuous batching: many prompts generated at once, each step one forward over all live sequences.

    gen = BatchGenerator("model.gguf", n_ctx=4096, n_parallel=4)
    h = gen.submit("Once upon a time", n_predict=64, sampler=SamplerParams(temp=0), stop=["\\n\\n"])
    for ev in h:                      # TokenEvent(token, text) as they are produced
        print(ev.text, end="", flush=True)
    r = h.result()                    # SequenceResult(text, tokens, finish_reason, timings, ...)
    gen.close()

API (all of it thread-safe unless said otherwise):

- ``BatchGenerator(model, n_ctx=None, n_parallel=4, n_batch=512, n_threads=None, placement=None,
  background=True, reuse_prefixes=False)``: ``model`` a GGUF path or open `GGUFFile`. ``n_ctx`` is the total
  KV cache, split evenly into ``n_parallel`` slots as llama-server does (``n_ctx_slot = n_ctx // n_parallel``
  positions per sequence; default: ``n_parallel`` x the model's context capped at 4096 / n_parallel, i.e. 4096 in all).
  ``n_batch``: most tokens in one forward (decode rows first, then prompt chunks fill the rest).
  ``reuse_prefixes``: llama-server's prompt cache (see Scheduling).
  ``BatchGenerator.from_parts(file, model, tokenizer, ...)`` wraps an already loaded model.
- ``submit(prompt, n_predict=128, sampler=None, stop=(), ignore_eos=False, return_logits=False,
  listener=None, reuse_prefix=True) -> SequenceHandle``: ``prompt`` text (tokenized with BOS as the model
  asks) or token ids; ``sampler`` a `SamplerParams` (default llama.cpp's) or a `Sampler`; raises
  GenerationError at once for an empty prompt, one longer than a slot, or bad token ids. Never blocks on the
  model. ``listener``, if given,
  is called on the scheduler thread with each `TokenEvent` as it is produced and then once with the
  `SequenceResult` when the sequence finishes (for push-style consumers such as a server's event loop;
  it must be quick and must not raise, and must not call back into the generator). ``reuse_prefix=False``
  processes the whole prompt even when a slot's cache holds its start.
- ``on_step``: None, or a callable run after each forward with (rows, sequences) of that forward.
- ``n_running`` / ``n_waiting``: sequences holding a slot / waiting for one.
- ``SequenceHandle``: iterate it for `TokenEvent(token, text)`; ``cancel()``; ``result(timeout=None)``
  waits and returns `SequenceResult(text, tokens, finish_reason, timings, prompt_tokens, error, logits)`;
  ``done``; ``id`` (submission order). finish_reason: "eog", "length", "stop", "context" (the slot is
  full), "cancelled" or "error" (the forward raised; ``error`` holds the message and iterating raises
  GenerationError). ``timings.prompt_ms`` runs from the first prompt chunk to the first sampled token,
  ``gen_ms`` from there to the end; both include the time shared with the other sequences of each step;
  ``timings.prompt_tokens`` counts the prompt tokens processed (a reused prefix is not counted).
- ``tokenize(text)``, ``chat_prompt(messages)``, ``chat_template``: as `Generator`'s.
- ``close()`` (or ``with BatchGenerator(...) as gen``): cancel everything and stop the thread.

Threads: with ``background=True`` (the default) a daemon scheduler thread runs the steps; ``submit``,
``cancel`` and handles may be used from any threads. With ``background=False`` nothing runs until the
caller drives it: ``step()`` runs one forward, ``run()`` steps until every submitted sequence finished,
and iterating a handle (or calling ``result()``) steps as needed; drive it from one thread only.

Scheduling (llama-server's): sequences wait FIFO for a free slot; each step takes one decode row per
sequence that is generating, then fills the rest of the ``n_batch`` token budget with prompt chunks of
sequences still reading their prompt (in admission order), and runs them all in one `forward_batch`:
every weight is read once per step for all rows. Only rows that end a prompt or decode get logits.
With ``reuse_prefixes`` a finished sequence's tokens stay in its slot's cache (as the one-sequence
`Generator` keeps its own): a new sequence takes the free slot whose cached tokens share the longest
prefix with its prompt (else the least recently used one) and processes only the rest of the prompt
(at least its last token), so a chat's next turn or a repeated prompt starts at once.
Each sequence samples with its own `Sampler` (seed, penalties over its own history) and stop strings;
greedy output is the same as running the prompt alone (logits agree to float32 rounding; the
llama.cpp-exact CPU arithmetic may differ in low bits across batch shapes, as llama.cpp's does).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from embedkit.errors import GenerationError
from embedkit.generate.batch_sequence import (
    CANCELLED,
    ERROR,
    BatchSequence,
    SequenceHandle,
    SequenceResult,
    TokenEvent,
)
from embedkit.generate.generator import (
    MAX_CTX,
    PromptMethods,
    _kv_bytes,
    _out_of_memory,
    default_ctx,
    load_generative,
)
from embedkit.generate.sampler import Sampler, SamplerParams
from embedkit.generate.stops import StopReason
from embedkit.gguf import GGUFFile
from embedkit.kernels.cpu.matmul import MAX_MULTIROW_TOKENS
from embedkit.kernels.cpu.row_blocks import single_thread_blas

__all__ = ["BatchGenerator", "SequenceHandle", "SequenceResult", "TokenEvent"]

# Steps of more rows than the small-batch kernel takes multiply dequantized tiles with BLAS. OpenBLAS's own threads
# then spin beside the kernel threads; held to one thread, a 111-row step of three SmolLM2 prompts took 1.2-3.0 s
# instead of 15.8-20.5 s (3.9-4.4 s of CPU against 0.5-0.7 s) on the shared 2-core VM at load ~30, with 1 and 2
# kernel threads alike. Smaller steps never reach BLAS, and the switch costs ~0.2 ms, so they skip it. The hold is
# row_blocks' counted one, shared with the packed encoder's forwards that run beside it in a server.
BLAS_STEP_ROWS = MAX_MULTIROW_TOKENS


class BatchGenerator(PromptMethods):
    """A loaded model serving up to ``n_parallel`` sequences at once (see the module docstring)."""

    def __init__(
        self,
        model: str | os.PathLike[str] | GGUFFile,
        n_ctx: int | None = None,
        n_parallel: int = 4,
        n_batch: int = 512,
        n_threads: int | None = None,
        placement: Any = None,
        background: bool = True,
        reuse_prefixes: bool = False,
    ) -> None:
        """Load ``model`` and allocate ``n_parallel`` KV cache slots (see the module docstring)."""
        t0 = time.perf_counter()
        f, m, tok = load_generative(model, n_threads, placement)
        self._setup(f, m, tok, n_ctx, n_parallel, n_batch, background, n_threads, reuse_prefixes)
        self.load_ms = 1000.0 * (time.perf_counter() - t0)

    @classmethod
    def from_parts(
        cls,
        file: GGUFFile | None,
        model: Any,
        tokenizer: Any,
        n_ctx: int | None = None,
        n_parallel: int = 4,
        n_batch: int = 512,
        background: bool = True,
        n_threads: int | None = None,
        reuse_prefixes: bool = False,
    ) -> BatchGenerator:
        """A batch generator over an already loaded model and tokenizer (``file`` gives the chat template)."""
        self = cls.__new__(cls)
        self.load_ms = 0.0
        self._setup(file, model, tokenizer, n_ctx, n_parallel, n_batch, background, n_threads, reuse_prefixes)
        return self

    def _setup(
        self,
        file: GGUFFile | None,
        model: Any,
        tokenizer: Any,
        n_ctx: int | None,
        n_parallel: int,
        n_batch: int,
        background: bool,
        n_threads: int | None,
        reuse_prefixes: bool = False,
    ) -> None:
        if n_parallel < 1:
            raise GenerationError(f"parallel sequences must be >= 1, got {n_parallel}")
        if n_batch < 1:
            raise GenerationError(f"batch size must be >= 1, got {n_batch}")
        if n_ctx is not None and not 1 <= n_ctx <= MAX_CTX:
            raise GenerationError(f"context size must be in [1, {MAX_CTX}], got {n_ctx}")
        self.file, self.model, self.tokenizer = file, model, tokenizer
        self.n_parallel, self.n_batch, self.background = int(n_parallel), int(n_batch), bool(background)
        self.n_ctx = int(n_ctx) if n_ctx else default_ctx(model.params.n_ctx_train)
        self.n_ctx_slot = self.n_ctx // self.n_parallel
        if self.n_ctx_slot < 1:
            raise GenerationError(f"a context of {self.n_ctx} tokens cannot be split into {n_parallel} slots")
        try:
            self.state = model.new_slot_state(self.n_ctx_slot, self.n_parallel)
        except Exception as e:
            if not _out_of_memory(e):
                raise
            gib = _kv_bytes(model.params, self.n_ctx_slot * self.n_parallel) / 2**30
            raise GenerationError(
                f"{n_parallel} slots of {self.n_ctx_slot} tokens need {gib:.1f} GiB of KV cache, more than can be "
                "allocated; lower -c or --parallel"
            ) from None
        self._n_threads = n_threads
        self._lock = threading.Condition()
        self._waiting: deque[BatchSequence] = deque()
        self._active: list[BatchSequence] = []  # admission order
        self._free = list(range(self.n_parallel))
        self.reuse_prefixes = bool(reuse_prefixes)
        self._slot_tokens: list[list[int]] = [[] for _ in range(self.n_parallel)]  # cached tokens, positions 0..
        self._slot_freed = [0] * self.n_parallel  # when each slot was last released (a counter: least recent first)
        self._n_released = 0
        self._next_id = 0
        self._closed = False
        self._step_lock = threading.Lock()
        self.steps = 0  # forwards run so far
        self.on_step: Callable[[int, int], None] | None = None
        self._thread: threading.Thread | None = None

    # -- submitting ----------------------------------------------------------------------
    def submit(
        self,
        prompt: str | Sequence[int],
        n_predict: int = 128,
        sampler: SamplerParams | Sampler | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        return_logits: bool = False,
        listener: Callable[[TokenEvent | SequenceResult], None] | None = None,
        reuse_prefix: bool = True,
    ) -> SequenceHandle:
        """Queue a prompt; returns its handle at once (see the module docstring). Thread-safe."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise GenerationError("the prompt is empty (no tokens)")
        if len(ids) > self.n_ctx_slot:
            raise GenerationError(
                f"the prompt has {len(ids)} tokens but a slot holds {self.n_ctx_slot} "
                f"(-c {self.n_ctx} / --parallel {self.n_parallel}); raise -c/--ctx-size"
            )
        n_vocab = self.model.params.n_vocab
        bad = [t for t in ids if not 0 <= t < n_vocab]
        if bad:
            raise GenerationError(f"prompt token id {bad[0]} is outside the vocabulary ({n_vocab})")
        if not isinstance(sampler, Sampler):
            sampler = Sampler(sampler)
        with self._lock:
            if self._closed:
                raise GenerationError("the batch generator is closed")
            seq = BatchSequence(
                self, self._next_id, ids, int(n_predict), sampler, list(stop), ignore_eos, return_logits, listener
            )
            seq.may_reuse = reuse_prefix
            self._next_id += 1
            if n_predict == 0:
                seq.finish(StopReason.LENGTH)
            else:
                self._waiting.append(seq)
                self._lock.notify_all()
            if self.background and self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="embedkit-batch", daemon=True)
                self._thread.start()
        return SequenceHandle(seq)

    @property
    def n_running(self) -> int:
        """Sequences holding a slot (reading their prompt or generating)."""
        with self._lock:
            return len(self._active)

    @property
    def n_waiting(self) -> int:
        """Sequences waiting for a free slot."""
        with self._lock:
            return len(self._waiting)

    def _cancel(self, seq: BatchSequence) -> None:
        with self._lock:
            seq.cancel_requested = True
            self._lock.notify_all()

    # -- running -------------------------------------------------------------------------
    def _loop(self) -> None:
        if self._n_threads is not None:
            from embedkit.kernels import set_num_threads

            set_num_threads(self._n_threads)
        while True:
            with self._lock:
                while not self._closed and not self._waiting and not self._active:
                    self._lock.wait()
                if self._closed:
                    return
            try:
                self.step()
            except Exception as e:  # a bug outside the forward: fail everything rather than hang the handles
                self._fail_all(f"{type(e).__name__}: {e}")

    def _fail_all(self, msg: str) -> None:
        with self._lock:
            for seq in [*self._waiting, *self._active]:
                seq.finish(ERROR, msg)
            self._waiting.clear()
            self._release_finished_locked()

    def drive(self, seq: BatchSequence) -> None:
        """One step on behalf of a caller waiting for `seq` (``background=False``)."""
        if not self.step() and not seq.finished.is_set():
            raise GenerationError(f"sequence {seq.id} cannot progress: the generator has nothing to run")

    def run(self) -> None:
        """Step until every submitted sequence has finished (``background=False``)."""
        while self.step():
            pass

    def step(self) -> bool:
        """Admit, cancel, then run one forward over every live sequence; False when there was nothing to do."""
        with self._step_lock:
            with self._lock:
                self._retire_cancelled()
                while self._waiting and self._free:
                    seq = self._waiting.popleft()
                    self._admit(seq)
                    self._active.append(seq)
                active = list(self._active)
            if not active:
                return False
            parts, ids, out_rows, owners = self._compose(active)
            if parts:
                self._forward(parts, ids, out_rows, owners)
            self._release_finished()
            return True

    def _admit(self, seq: BatchSequence) -> None:
        """Give `seq` a free slot (lock held): with prefix reuse, the one whose cached tokens share the longest
        prefix with its prompt (ties and misses: the least recently released), starting after that prefix."""
        if not self.reuse_prefixes:
            seq.slot = self._free.pop(0)
            return
        best, best_key = self._free[0], (-1, 0)
        for slot in self._free:
            cached, n = self._slot_tokens[slot], 0
            if seq.may_reuse:
                for a, b in zip(cached, seq.prompt_ids, strict=False):
                    if a != b:
                        break
                    n += 1
            key = (n, -self._slot_freed[slot])
            if key > best_key:
                best, best_key = slot, key
        self._free.remove(best)
        seq.slot = best
        seq.reuse_cached(min(best_key[0], len(seq.prompt_ids) - 1))  # the last prompt token runs for its logits

    def _retire_cancelled(self) -> None:
        """Finish cancelled sequences (lock held)."""
        for seq in [s for s in self._waiting if s.cancel_requested]:
            self._waiting.remove(seq)
            seq.finish(CANCELLED)
        for seq in self._active:
            if seq.cancel_requested:
                seq.finish(CANCELLED)
        self._release_finished_locked()

    def _compose(self, active: list[BatchSequence]) -> tuple[list, list[int], list[int], list[BatchSequence]]:
        """This step's rows: one decode row per generating sequence, then prompt chunks up to n_batch."""
        parts: list[tuple[int, int, int]] = []
        ids: list[int] = []
        out_rows: list[int] = []
        owners: list[BatchSequence] = []
        for seq in active:
            if seq.pending is not None:
                parts.append((seq.slot, seq.n_past, 1))
                out_rows.append(len(ids))
                owners.append(seq)
                ids.append(seq.pending)
        budget = self.n_batch - len(ids)
        for seq in active:
            if budget <= 0:
                break
            left = seq.prompt_left
            if seq.pending is not None or left == 0 or seq.finish_reason is not None:
                continue
            n = min(left, budget)
            seq.started()
            parts.append((seq.slot, seq.n_past, n))
            ids.extend(seq.prompt_ids[seq.n_past : seq.n_past + n])
            if n == left:
                out_rows.append(len(ids) - 1)
                owners.append(seq)
            budget -= n
        return parts, ids, out_rows, owners

    def _forward(
        self, parts: list[tuple[int, int, int]], ids: list[int], out_rows: list[int], owners: list[BatchSequence]
    ) -> None:
        """Run the step's forward and hand each output row to its sequence."""
        from embedkit.models.batch import SeqBatch

        batch = SeqBatch.of(parts)
        try:
            with single_thread_blas() if len(ids) > BLAS_STEP_ROWS else contextlib.nullcontext():
                logits = self.model.forward_batch(
                    np.asarray(ids, dtype=np.int32), self.state, batch, out_rows if out_rows else [batch.n_rows - 1]
                )
        except Exception as e:  # the step's sequences fail; the others (and the thread) go on
            msg = f"{type(e).__name__}: {e}"
            slots = {p[0] for p in parts}
            for seq in list(self._active):
                if seq.slot in slots:
                    seq.finish(ERROR, msg)
            return
        self.steps += 1
        if self.on_step is not None:
            self.on_step(len(ids), len(parts))
        by_slot = {seq.slot: seq for seq in self._active}
        for slot, _, n in parts:
            by_slot[slot].n_past += n
        for row, seq in enumerate(owners):
            seq.pending = None
            seq.accept(logits[row], self.n_ctx_slot)

    def _release_finished(self) -> None:
        with self._lock:
            self._release_finished_locked()

    def _release_finished_locked(self) -> None:
        done = [s for s in self._active if s.finish_reason is not None]
        for seq in done:
            self._active.remove(seq)
            self._free.append(seq.slot)
            # what the slot's cache now holds (a failed forward may have left it half written: forget it)
            self._slot_tokens[seq.slot] = [] if seq.finish_reason == ERROR else seq.history[: seq.n_past]
            self._n_released += 1
            self._slot_freed[seq.slot] = self._n_released
        self._free.sort()

    # -- shutting down -------------------------------------------------------------------
    def close(self) -> None:
        """Cancel every queued and running sequence and stop the scheduler thread."""
        with self._lock:
            self._closed = True
            for seq in [*self._waiting, *self._active]:
                seq.cancel_requested = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._step_lock, self._lock:
            self._retire_cancelled()
            self._waiting.clear()

    def __enter__(self) -> BatchGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
