"""Logical CUDA devices for a model split across GPUs (see split.py): one backend per device, the switch
between physical GPUs, and the hand-off of activations from one device's backend to the next.

Every logical device gets its own `DeviceCUDABackend` (weights, KV caches, stream, step recorder and CUDA
graphs of its own), also when two logical devices share one physical GPU. A forward runs the devices one
after the other on one thread; a backend makes its GPU current where a forward enters it from outside its
own run of ops (uploads, caches, its first op of a forward, the hand-off into it, copies back), so no op
inside a device's run pays for the check. `hand_off` copies the hidden state between two devices on the
receiving device's stream: a device-to-device copy on one GPU, a peer copy between GPUs with peer access,
else None (the placement then goes through the host). The copy is one op of the receiver's step, so it is
part of the receiver's decode graph; its key names the source buffer, so a replay whose source moved
leaves the recording (see cuda_steps) rather than reading a stale buffer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from embedkit.backend.base import Array, Backend
from embedkit.backend.cuda import CUDABackend
from embedkit.backend.split import DEVICES_ENV, parse_devices

_ACTIVE: list[int | None] = [None]  # the physical GPU current on the forward's thread
_BACKENDS: dict[tuple[int, int, bool, int], DeviceCUDABackend] = {}
_PEER: dict[tuple[int, int], bool] = {}


def physical_count() -> int:
    """How many physical CUDA GPUs numba sees (1 under the simulator)."""
    from numba import cuda

    return len(cuda.gpus)


def logical_devices() -> list[int]:
    """The physical GPU of each logical device: EMBEDKIT_CUDA_DEVICES (e.g. 0,0), else every GPU once."""
    return parse_devices(os.environ.get(DEVICES_ENV), physical_count())


def _free_bytes(physical: int) -> float:
    from numba import cuda

    try:
        with cuda.gpus[physical]:
            return float(cuda.current_context().get_memory_info().free)
    except Exception:
        return float("nan")


def free_memory_shares(physical: Sequence[int]) -> list[float]:
    """Each logical device's share of the default split: its GPU's free memory divided equally between the
    logical devices on that GPU (equal shares where the free memory is unknown, as under the simulator)."""
    free = {p: _free_bytes(p) for p in set(physical)}
    if not all(np.isfinite(v) and v > 0 for v in free.values()):
        return [1.0] * len(physical)
    return [free[p] / list(physical).count(p) for p in physical]


def make_current(physical: int) -> None:
    """Make `physical`'s primary context current on this thread (for numba and CuPy)."""
    if _ACTIVE[0] == physical:
        return
    from numba import cuda
    from numba.cuda import config

    if not config.ENABLE_CUDASIM and physical_count() > 1:
        from numba.cuda.cudadrv.driver import driver

        driver.pop_active_context()
        cuda.gpus[physical].get_primary_context().push()
        try:
            import cupy

            cupy.cuda.runtime.setDevice(physical)
        except ImportError:
            pass
    _ACTIVE[0] = physical


class DeviceCUDABackend(CUDABackend):
    """The CUDA backend of logical device `logical`, on physical GPU `physical` (see the module docstring)."""

    def __init__(self, logical: int, physical: int, graphs: bool = False, stage: int = 0) -> None:
        super().__init__(physical, graphs)
        _ACTIVE[0] = physical  # the constructor selected it
        self.logical = logical
        self.physical = physical
        self.stage = stage  # > 0: a later run of the forward on this device (split.separate_stages)
        self.graphs_asked = graphs

    def enter(self) -> None:
        """Make this device's GPU current (nothing to do while it already is)."""
        if _ACTIVE[0] != self.physical:
            make_current(self.physical)

    # the entry points a forward reaches from outside this device's own run of ops
    def weight(self, t):
        self.enter()
        return super().weight(t)

    def kv_cache(self, n_ctx, n_kv_heads, head_dim):
        self.enter()
        return super().kv_cache(n_ctx, n_kv_heads, head_dim)

    def kv_cache_slots(self, n_slots, n_ctx, n_kv_heads, head_dim):
        self.enter()
        return super().kv_cache_slots(n_slots, n_ctx, n_kv_heads, head_dim)

    def get_rows(self, w, ids):
        self.enter()
        return super().get_rows(w, ids)

    def asarray(self, x):
        self.enter()
        return super().asarray(x)

    def to_host(self, x):
        self.enter()
        return super().to_host(x)

    def flush(self) -> None:
        self.enter()
        super().flush()

    def synchronize(self) -> None:
        self.enter()
        super().synchronize()

    def host_matmuls(self, x, ws):
        self.enter()
        return super().host_matmuls(x, ws)

    def __repr__(self) -> str:
        return f"DeviceCUDABackend(logical={self.logical}, physical={self.physical}, stage={self.stage})"


def device_backends(physical: Sequence[int], graphs: bool = True) -> list[DeviceCUDABackend]:
    """One backend per logical device (process-wide, created on first use): logical device i runs on
    physical GPU physical[i]."""
    return [_backend(logical, int(p), bool(graphs), 0) for logical, p in enumerate(physical)]


def stage_backend(be: Backend, stage: int) -> DeviceCUDABackend | None:
    """Another backend of `be`'s logical device for a later run of the forward there (stage >= 1), or None
    when `be` is no device backend (see split.separate_stages)."""
    if not isinstance(be, DeviceCUDABackend):
        return None
    return _backend(be.logical, be.physical, be.graphs_asked, stage)


def _backend(logical: int, physical: int, graphs: bool, stage: int) -> DeviceCUDABackend:
    key = (logical, physical, graphs, stage)
    be = _BACKENDS.get(key)
    if be is None:
        be = _BACKENDS[key] = DeviceCUDABackend(logical, physical, graphs, stage)
    return be


def _physical(be: CUDABackend) -> int:
    return getattr(be, "physical", 0)


def peer_access(src: CUDABackend, dst: CUDABackend) -> bool:
    """Whether `dst` can copy `src`'s arrays device to device: the same GPU, or peer access between two
    (enabled on first use)."""
    a, b = _physical(src), _physical(dst)
    if a == b:
        return True
    ok = _PEER.get((a, b))
    if ok is None:
        ok = _PEER[(a, b)] = _enable_peer(a, b)
    return ok


def _enable_peer(src: int, dst: int) -> bool:
    from numba import cuda

    try:
        ctx = cuda.gpus[dst].get_primary_context()
        if not ctx.can_access_peer(src):
            return False
        with cuda.gpus[dst]:
            try:
                ctx.enable_peer_access(cuda.gpus[src].get_primary_context().handle)
            except Exception as e:  # already enabled is fine
                if "ALREADY" not in str(e).upper():
                    raise
        return True
    except Exception:
        return False
    finally:
        _ACTIVE[0] = None  # the context stack may have changed: check again at the next entry


def _address(a) -> int:
    iface = getattr(a, "__cuda_array_interface__", None)
    return iface["data"][0] if iface is not None else id(a)


def hand_off(x: Array, src: Backend, dst: Backend) -> Array | None:
    """x, computed on device backend `src`, as an array of device backend `dst` (a device-to-device copy,
    see the module docstring); None when the two cannot copy directly (the caller goes through the host)."""
    if not (isinstance(src, CUDABackend) and isinstance(dst, CUDABackend)) or not peer_access(src, dst):
        return None
    src.flush()
    src.stream.synchronize()  # the copy reads what src's step wrote
    if isinstance(dst, DeviceCUDABackend):
        dst.enter()
    shape, dtype = tuple(x.shape), np.dtype(x.dtype)
    key = ("hand_off", shape, dtype.str, _address(x))

    def build():
        out = dst._empty(shape, dtype)
        return out, _copier(x, out, src, dst)

    return dst.steps.op(key, shape[0] if shape else 1, build)


def _copier(x, out, src: CUDABackend, dst: CUDABackend):
    """The launch of the copy x -> out on dst's stream (a memcpy node when captured into dst's graph)."""
    cp = dst._cp
    if cp is None or x.nbytes == 0:
        return lambda s: out.copy_to_device(x, stream=s)
    dst_ptr, src_ptr, nbytes, stream_ptr = _address(out), _address(x), x.nbytes, dst._cp_stream.ptr
    a, b = _physical(src), _physical(dst)
    if a == b:
        memcpy = cp.cuda.runtime.memcpyAsync

        def fn(s):
            memcpy(dst_ptr, src_ptr, nbytes, 3, stream_ptr)  # 3: device to device

        return fn
    memcpy_peer = cp.cuda.runtime.memcpyPeerAsync

    def fn_peer(s):
        memcpy_peer(dst_ptr, b, src_ptr, a, nbytes, stream_ptr)

    return fn_peer
