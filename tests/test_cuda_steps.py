"""The CUDA step recorder's replay rules, on the host (no GPU): a recorded step is never run against another
state's KV caches.

The recorder (embedkit/backend/cuda_steps.py) launches a replayed CUDA graph as soon as the step's per-step
inputs are known, before the rest of the step's op keys are checked. A graph recorded for one state's caches
that launched in a step over another state wrote that step's positions into the recorded (possibly smaller)
caches: on the GPU, writes past their end into whatever memory followed (issue 19's garbage logits). Here the
device is a stand-in that keeps the semantics the recorder relies on: work issued while a stream captures
is recorded into the graph, not run; a graph launch runs the recorded work; memcpys move bytes.
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np

from embedkit.backend.cuda_steps import StepRecorder


class Device:
    """Runs work at once, or records it into the graph being captured."""

    def __init__(self) -> None:
        self.capturing: list | None = None
        self.launches = 0

    def run(self, work) -> None:
        if self.capturing is not None:
            self.capturing.append(work)
        else:
            work()


class HostArray(np.ndarray):
    """A numpy array standing for a device array (its address through the CUDA array interface)."""

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"data": (self.ctypes.data, False), "shape": self.shape, "typestr": self.dtype.str, "version": 3}

    def copy_to_device(self, host, stream=None) -> None:
        self[...] = host


class Graph:
    def __init__(self, device: Device, work: list) -> None:
        self.device, self.work = device, work

    def launch(self, stream) -> None:
        self.device.launches += 1
        for w in self.work:
            w()


class Stream:
    """The CuPy stream the recorder captures on."""

    ptr = 1

    def __init__(self, device: Device) -> None:
        self.device = device

    def begin_capture(self, mode=None) -> None:
        self.device.capturing = []

    def end_capture(self) -> Graph:
        work, self.device.capturing = self.device.capturing, None
        return Graph(self.device, work)

    def synchronize(self) -> None:
        pass


def _recorder() -> tuple[StepRecorder, Device]:
    device = Device()

    def empty(shape, dtype=np.float32, stream=None):
        return np.zeros(shape, dtype=dtype).view(HostArray)

    def memcpy(dst, src, nbytes, kind, stream_ptr):
        device.run(lambda: ctypes.memmove(dst, src, nbytes))

    cuda = SimpleNamespace(device_array=empty, pinned_array=empty)
    runtime = SimpleNamespace(memcpyAsync=memcpy, streamCaptureModeRelaxed=0)
    cp = SimpleNamespace(cuda=SimpleNamespace(runtime=runtime))
    stream = Stream(device)
    return StepRecorder(cuda, stream, cp, stream, True, lambda n_rows: n_rows == 1), device


class State:
    """One sequence's 'KV cache': a token id per position."""

    def __init__(self, n_ctx: int) -> None:
        self.cache = np.full(n_ctx, -1, dtype=np.int32)


def _decode_step(rec: StepRecorder, device: Device, state: State, token: int, pos: int, guard: bool = True) -> int:
    """One decode step: the token's id stored at its position of the state's cache, then a reduction that reads
    the cache (the step's output, handed to the host)."""
    if guard:
        rec.begin(state, 1)
    ids = rec.input(np.array([token], dtype=np.int32), ("ids",))
    p = rec.pos(pos)
    cache = state.cache

    def build():
        out = np.zeros(1, dtype=np.int64).view(HostArray)

        def store_and_sum():
            cache[p[0]] = ids[0]
            out[0] = int(cache[: p[0] + 1].sum())

        return out, lambda s: device.run(store_and_sum)

    out = rec.op(("store", id(cache)), 1, build)
    rec.flush()
    return int(out[0])


def test_replay_for_the_recorded_state_launches_early_and_writes_its_cache():
    rec, device = _recorder()
    a = State(4)
    assert _decode_step(rec, device, a, 5, 0) == 5  # recorded
    assert _decode_step(rec, device, a, 6, 1) == 11  # replayed
    assert rec.stats.recorded == 1 and rec.stats.replayed == 1 and device.launches == 1
    assert a.cache.tolist() == [5, 6, -1, -1]


def test_a_step_over_another_state_never_runs_the_recorded_graph():
    rec, device = _recorder()
    small, big = State(4), State(8)
    _decode_step(rec, device, small, 5, 0)
    _decode_step(rec, device, small, 6, 1)
    launches = device.launches
    # position 6 lies past the end of the recorded state's cache: the graph must not run
    assert _decode_step(rec, device, big, 7, 6) == 7 - 6  # cells 0..5 unset (-1), 6 holds 7
    assert device.launches == launches
    assert small.cache.tolist() == [5, 6, -1, -1]
    assert big.cache[6] == 7
    assert rec.stats.derailed == 1
    # the next step over `big` records for it and then replays
    _decode_step(rec, device, big, 8, 7)
    _decode_step(rec, device, big, 9, 7)
    assert big.cache[7] == 9 and small.cache.tolist() == [5, 6, -1, -1]


def test_an_unguarded_recording_launches_only_once_every_key_matched():
    rec, device = _recorder()
    small, big = State(4), State(8)
    _decode_step(rec, device, small, 5, 0, guard=False)
    _decode_step(rec, device, small, 6, 1, guard=False)
    assert device.launches == 1  # replayed (at the flush)
    _decode_step(rec, device, big, 7, 6, guard=False)  # departs at the store: eager, graph never launched
    assert device.launches == 1
    assert small.cache.tolist() == [5, 6, -1, -1] and big.cache[6] == 7
