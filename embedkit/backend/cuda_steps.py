"""The CUDA backend's step recorder: every op of a step goes through `StepRecorder.op`.

A step is the ops between two `flush()` calls (a forward ends with one at its first `to_host`). Steps
the backend asks to record (`records(n_rows)`: one-token decode steps, see cuda.py) are recorded (ops
deferred, then captured on the backend's stream as a CUDA graph at the flush); later steps with the same
sequence of ops replay it. While replaying, each op only checks its key against the recording and gets
the recorded output array back; the per-step inputs (`input`, `pos`: a token's ids, its position) are
device buffers refreshed before the launch, and the graph is launched as soon as the last of them is
known, so the GPU runs while the rest of the model's Python replays. A step that departs from the
recording runs the recorded prefix eagerly (recomputing anything an early launch did) and continues
eagerly; the next step records afresh. The early launch runs ops whose keys are not checked yet, so only
a step whose first key names the state whose KV caches it writes (`begin`, from `Backend.begin_forward`)
launches early: a graph recorded for one state must never run in another state's step, whose positions
may lie past the end of the recorded state's caches. Per-step inputs are staged in pinned host memory and
copied by the graph's own memcpy nodes. Steps not recorded run every op at once (eager).

What the ops share through the recorder, all reset at each step's start:
- memos of an activation's derived copies: its int8 blocks (`blocks_of`, written by the op that made it
  or by a quantize op) and its float16 copy (`f16_of`), so several matmuls of one input convert it once;
- fusions while recording: the last op's launch left open (`open_launch`, a matvec that a following
  residual add folds into), outputs marked with what made them (`mark`/`marked`: a RoPE, which the decode
  attention may take over), and ops whose captured launch differs from the eager one (`capture_next_as`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class GraphStats:
    """Counters of the graph machinery (for benchmarks)."""

    recorded: int = 0
    replayed: int = 0
    derailed: int = 0
    eager_steps: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class RecordedStep:
    """A recorded step: op keys, launch functions, outputs, and the captured graph."""

    keys: list
    fns: list
    outs: list
    inputs: list  # device buffers refreshed from the host before each launch, in op order
    guarded: bool = False  # its first op names the state it writes (`StepRecorder.begin`): may launch early
    extras: list = field(default_factory=list)  # per op: None, ("q", src, (xq, xd)) memo, or an input's stage
    capture: dict = field(default_factory=dict)  # op index -> what the captured graph runs instead (fusions)
    graph: Any = None
    launches: int = 0


def device_address(a) -> int:
    """Device address of a numba device array."""
    return a.__cuda_array_interface__["data"][0]


# what an op's `build()` returns: (out, launch) or (out, launch, (xq, xd)) when the launch also writes
# out's int8 blocks; launch(stream) runs the op, None for an op that launches nothing (a view)
Built = tuple


class StepRecorder:
    """Records, replays and captures the steps of one CUDA backend (see the module docstring).

    `cuda`: numba.cuda; `stream`: the backend's numba stream; `cp`, `cp_stream`: CuPy and its stream
    under `stream` (graphs need both; None: every step runs eagerly); `records(n_rows)`: whether a step
    whose first op has `n_rows` rows is recorded."""

    def __init__(self, cuda, stream, cp, cp_stream, enabled: bool, records: Callable[[int], bool]) -> None:
        self._cuda, self._stream, self._cp, self._cp_stream = cuda, stream, cp, cp_stream
        self.enabled = bool(enabled) and cp is not None
        self._records = records
        self.stats = GraphStats()
        self._mode = "idle"  # idle | eager | record | replay
        self._graph: RecordedStep | None = None
        self._graphs: dict[int, RecordedStep] = {}  # recorded steps by row count
        self._graph_rows = 1
        self._rec: RecordedStep | None = None
        self._cursor = 0
        self._dyn: list[tuple[Any, np.ndarray]] = []
        self._step_pos: int | None = None
        self._step_pos_buf = None
        self._xq_src = self._xq = None
        self._x16_src = self._x16 = None
        self._hit_extra = None
        self._open = None  # recording: the last op's launch, if left open for a fusion
        self._marks: dict[int, tuple] = {}  # recording: id(output) -> (output, op index, note)
        self._capture_next = None
        self._launched = False
        self._retired: RecordedStep | None = None  # a recording left mid-step: alive until the next step

    # -- what ops call ---------------------------------------------------------------------
    def op(self, key: tuple, n_rows: int, build: Callable[[], Built], keep_open: bool = False):
        """One op of the step: the recorded output when replaying and `key` matches the recording; else
        `build()` makes the output and its launch, which runs now (eager) or is recorded. `keep_open`:
        while recording, the launch stays open for a fusion by the next op (`open_launch`)."""
        hit = self._replayed(key, n_rows)
        if hit is not None:
            return hit
        built = build()
        blocks = built[2] if len(built) > 2 else None
        out = self._run(key, built[1], built[0], None if blocks is None else ("q", built[0], blocks))
        if keep_open and self._mode == "record":
            self._open = built[1]
        return out

    def input(self, host: np.ndarray, key_extra: tuple = ()):
        """A device copy of `host` that a replayed graph reads (refreshed before each launch)."""
        host = np.ascontiguousarray(host)
        key = ("input", host.shape, host.dtype.str, *key_extra)
        n_rows = host.shape[0] if host.ndim else 1  # token ids [n] count as n rows (a prompt is not a step)
        hit = self._replayed(key, n_rows)
        if hit is not None:
            self._dyn.append((self._hit_extra[1], host))
            if len(self._dyn) == len(self._graph.inputs) and self._graph.guarded:
                # every per-step input is known and the state is the recorded one: launch now, so the GPU
                # runs while the rest of the model's Python replays (a later departure from the recording
                # recomputes eagerly, writing the same caches at the same positions)
                self._push_inputs()
                self._graph.graph.launch(self._cp_stream)
                self._launched = True
            return hit
        buf = self._cuda.device_array(host.shape, dtype=host.dtype, stream=self._stream)
        if self._mode == "record":
            # pinned stage written by the host before each launch, copied by the graph itself
            stage = self._cuda.pinned_array(host.shape, dtype=host.dtype)
            self._rec.inputs.append(buf)
            self._dyn.append((stage, host))
            dst, src, nbytes = device_address(buf), stage.ctypes.data, host.nbytes
            memcpy = self._cp.cuda.runtime.memcpyAsync
            stream_ptr = self._cp_stream.ptr

            def fn(s, dst=dst, src=src, nbytes=nbytes):
                memcpy(dst, src, nbytes, 1, stream_ptr)  # 1: host to device

            return self._run(key, fn, buf, ("stage", stage))
        buf.copy_to_device(host, stream=self._stream)
        return buf

    def begin(self, state, n_rows: int) -> None:
        """A forward of `n_rows` rows over `state` (its KV caches) starts: the step's first key is the state's
        identity (the recording keeps `state` alive, so the identity is not reused), so a step replays a
        recording only for the same state, and such a recording may launch before all its keys are checked."""
        first = self._mode == "idle"
        self.op(("state", id(state)), n_rows, lambda: (state, None))
        if first and self._mode == "record":
            self._rec.guarded = True

    def pos(self, pos0: int):
        """Device int32 [1] holding pos0 (one per step, so graphs replay at any position)."""
        if self._step_pos_buf is not None and self._step_pos == pos0:
            return self._step_pos_buf
        buf = self.input(np.array([pos0], dtype=np.int32), ("pos",))
        self._step_pos, self._step_pos_buf = pos0, buf
        return buf

    @property
    def recording(self) -> bool:
        """Whether the current step is being recorded."""
        return self._mode == "record"

    # -- memos of the step -------------------------------------------------------------------
    def blocks_of(self, x):
        """(xq, xd), the int8 blocks of x if an op of this step wrote them, else None."""
        return self._xq if self._xq_src is x else None

    def keep_blocks(self, x, blocks) -> None:
        """Remember (xq, xd) as x's int8 blocks for the rest of the step."""
        self._xq_src, self._xq = x, blocks

    def f16_of(self, x):
        """x's float16 copy if an op of this step made it, else None."""
        return self._x16 if self._x16_src is x else None

    def keep_f16(self, x, x16) -> None:
        """Remember x16 as x's float16 copy for the rest of the step."""
        self._x16_src, self._x16 = x, x16

    # -- fusions while recording ----------------------------------------------------------------
    @property
    def open_launch(self):
        """The previous op's launch if it was left open (`op(..., keep_open=True)`) and nothing launched
        since; the caller may change it (it runs only at the flush)."""
        return self._open

    def mark(self, out, note) -> None:
        """While recording: note what made `out`, the output of the op just recorded."""
        if self._mode == "record":
            self._marks[id(out)] = (out, len(self._rec.fns) - 1, note)

    def marked(self, x) -> tuple[int, Any] | None:
        """(op index, note) of x if it was marked in this step, else None."""
        m = self._marks.get(id(x))
        return (m[1], m[2]) if m is not None and m[0] is x else None

    def capture_next_as(self, fn, drop: tuple[int, ...] = ()) -> None:
        """While recording: the captured graph runs `fn` in place of the next op's launch, and nothing in
        place of the ops `drop` (whose work `fn` does too; results unchanged)."""
        if self._mode == "record":
            self._capture_next = (fn, drop)

    # -- steps --------------------------------------------------------------------------------
    def flush(self) -> None:
        """Finish the current step: launch the recorded/replayed graph (eager work is queued already)."""
        mode = self._mode
        self._mode = "idle"
        if mode == "record":
            rec = self._rec
            self._rec = None
            self._push_inputs()
            fns = [rec.capture.get(i, fn) for i, fn in enumerate(rec.fns)]
            # run the step eagerly (this also compiles any kernel not yet compiled), then capture it
            for fn in fns:
                if fn is not None:
                    fn(self._stream)
            try:
                rec.graph = self.capture(fns)
            except Exception as e:  # capture unsupported here: stay eager from now on
                self.stats.extra["capture_error"] = repr(e)[:300]
                self.enabled = False
                return
            self._graph = self._graphs[self._graph_rows] = rec
            self.stats.recorded += 1
        elif mode == "replay":
            g = self._graph
            if self._cursor != len(g.keys):
                self._derail()
                return
            if not self._launched:
                self._push_inputs()
                g.graph.launch(self._cp_stream)
            g.launches += 1
            self.stats.replayed += 1

    def capture(self, fns: list):
        """A CUDA graph (CuPy's) of the launches `fns` on the backend's stream."""
        s = self._cp_stream
        self._stream.synchronize()
        mode = getattr(self._cp.cuda.runtime, "streamCaptureModeRelaxed", None)
        s.begin_capture() if mode is None else s.begin_capture(mode)
        try:
            for fn in fns:
                if fn is not None:
                    fn(self._stream)
        finally:
            graph = s.end_capture()
        return graph

    @property
    def graph(self) -> RecordedStep | None:
        """The recorded step the last replay or recording used (None if none)."""
        return self._graph

    def forget(self) -> None:
        """Drop every recorded step (a new model: recordings name weights by id(), which a freed model's
        may share)."""
        self._graphs.clear()
        self._graph = None

    # -- inside --------------------------------------------------------------------------------
    def _start(self, n_rows: int) -> None:
        self._step_pos = None
        self._step_pos_buf = None
        self._xq_src = self._xq = None
        self._x16_src = self._x16 = None
        self._open = None
        self._marks = {}
        self._capture_next = None
        self._dyn = []
        self._launched = False
        self._retired = None
        if self.enabled and self._records(n_rows):
            self._cursor = 0
            self._graph_rows = n_rows
            self._graph = self._graphs.get(n_rows)
            if self._graph is not None:
                self._mode = "replay"
            else:
                self._mode = "record"
                self._rec = RecordedStep([], [], [], [])
        else:
            self._mode = "eager"
            self.stats.eager_steps += 1

    def _replayed(self, key: tuple, n_rows: int):
        """The recorded output for `key` when replaying and it matches; None otherwise.

        A hit restores the op's memo (int8 blocks of its output) and leaves its extra in
        `_hit_extra` (an input's pinned stage)."""
        mode = self._mode
        if mode == "idle":
            self._start(n_rows)
            mode = self._mode
        if mode != "replay":
            return None
        g = self._graph
        c = self._cursor
        if c < len(g.keys) and g.keys[c] == key:
            self._cursor = c + 1
            extra = g.extras[c]
            if extra is not None and extra[0] == "q":
                self._xq_src, self._xq = extra[1], extra[2]
            self._hit_extra = extra
            return g.outs[c]
        self._derail()
        return None

    def _derail(self) -> None:
        """The step left the recording: compute the replayed prefix now, continue eagerly."""
        g = self._graph
        self._push_inputs()
        for fn in g.fns[: self._cursor]:
            if fn is not None:
                fn(self._stream)
        self.stats.derailed += 1
        self._mode = "eager"
        # record afresh at the next step of this many rows; the launches just queued (and an early launch of
        # the graph) still read its buffers and pinned stages: keep them until the next step
        self._retired = g
        self._graph = None
        self._graphs.pop(self._graph_rows, None)

    def _run(self, key: tuple, fn, out, extra=None):
        """Run `fn(stream)` now (eager) or record it (graph recording); returns `out`.

        `extra`: ("q", out, (xq, xd)) when the op also wrote its output's int8 blocks (restored as
        the memo on replay), or ("stage", pinned) for a per-step input."""
        if self._mode == "record":
            rec = self._rec
            if self._capture_next is not None:
                instead, drop = self._capture_next
                self._capture_next = None
                for i in drop:
                    rec.capture[i] = None
                rec.capture[len(rec.fns)] = instead
            rec.keys.append(key)
            rec.fns.append(fn)
            rec.outs.append(out)
            rec.extras.append(extra)
            if fn is not None:
                self._open = None
        elif fn is not None:
            fn(self._stream)
        if extra is not None and extra[0] == "q":
            self._xq_src, self._xq = extra[1], extra[2]
        return out

    def _push_inputs(self) -> None:
        for stage, host in self._dyn:
            stage[...] = host
        self._dyn = []
