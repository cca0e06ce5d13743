"""The CUDA backend: weights, activations and KV caches in VRAM, kernels from `embedkit.kernels.cuda`.

Arrays are numba device arrays (float32, C order). The backend is put together from one part per job:
- `cuda_steps.StepRecorder` (`self.steps`): every op goes through it; it runs ops at once or records a
  step as a CUDA graph and replays it (decode steps, `graphs=True`, used when a whole model sits on this
  backend), and holds what ops share within a step (int8 blocks and float16 copies of activations, the
  fusions of a recording);
- `cuda_weights`: uploads (Q4_0/Q8_0 repacked for the dp4a kernels, other types in their GGUF bytes),
  float16 copies for GEMMs, a CPU layer's prompt matmuls run here (partial offload);
- `cuda_linear`: `get_rows`, matvecs for up to `MATVEC_MAX_ROWS` rows, cuBLAS GEMMs above;
- `cuda_elementwise`: elementwise ops, activations, GLUs, norms;
- `cuda_attention`: RoPE, the KV cache, attention;
- `cuda_batch`: rows of several sequences in one forward (continuous batching).
This module holds the device setup, data movement and which steps are recorded.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np

from embedkit.backend.base import Array, Backend
from embedkit.backend.cuda_attention import CUDAAttention
from embedkit.backend.cuda_batch import CUDASeqOps
from embedkit.backend.cuda_elementwise import CUDAElementwise
from embedkit.backend.cuda_linear import MATVEC_MAX_ROWS, CUDALinear
from embedkit.backend.cuda_steps import GraphStats, StepRecorder, device_address
from embedkit.backend.cuda_weights import OFFLOAD_MIN_TOKENS, CUDAWeights, bytes_per_token
from embedkit.errors import DeviceError

# graphs: steps of 2..MATVEC_MAX_ROWS rows (several sequences decoding together) are recorded too, one
# graph per row count (else only one-token steps are; eager steps cost ~50 us of host time per op)
BATCH_GRAPHS = True


def _records_step(n_rows: int) -> bool:
    """Whether a step of `n_rows` rows is recorded as a CUDA graph (when graphs are on)."""
    return n_rows == 1 or (BATCH_GRAPHS and n_rows <= MATVEC_MAX_ROWS)


class CUDABackend(CUDASeqOps, CUDAAttention, CUDAElementwise, CUDALinear, CUDAWeights, Backend):
    """Backend on one CUDA device through numba-cuda (and CuPy for cuBLAS and the memory pool)."""

    name = "cuda"

    def __init__(self, device: int = 0, graphs: bool = False) -> None:
        try:
            from numba import cuda
            from numba.cuda import config
        except ImportError as e:
            raise DeviceError("CUDA backend needs numba-cuda: pip install 'embedkit[cuda]'") from e
        if not cuda.is_available():
            raise DeviceError("no usable CUDA GPU (numba.cuda.is_available() is False)")
        self._cuda = cuda
        self._sim = bool(config.ENABLE_CUDASIM)
        if self._sim:
            self._DeviceNDArray = lambda shape, strides, dtype, stream, gpu_data=None: cuda.device_array(
                shape, dtype, stream=stream
            )
        else:
            from numba.cuda.cudadrv.devicearray import DeviceNDArray

            self._DeviceNDArray = DeviceNDArray
        config.CUDA_LOW_OCCUPANCY_WARNINGS = 0  # decode kernels run small grids on purpose
        from embedkit.kernels.cuda import (
            attention,
            attention_prefill,
            elementwise,
            gemm,
            norms,
            quant_fast,
            quant_generic,
            quant_kmatvec,
            quant_legacy,
            rope,
            softmax,
        )

        # the kernel modules, looked up once (a function-level import costs ~1 us per op)
        self._k = SimpleNamespace(
            attention=attention,
            attention_prefill=attention_prefill,
            elementwise=elementwise,
            gemm=gemm,
            norms=norms,
            quant_fast=quant_fast,
            quant_generic=quant_generic,
            rope=rope,
            softmax=softmax,
        )
        # layouts whose decode matvec takes int8 activation blocks (dp4a), and the launcher of each
        self.int8_matvecs = {layout: quant_kmatvec.matvec_q8 for layout in quant_kmatvec.INT8_KMATVECS}
        self.int8_matvecs.update({layout: quant_legacy.matvec_q8 for layout in quant_legacy.LAYOUTS})
        self._cp = None
        if not self._sim:
            from embedkit.kernels.cuda.memory import install_cupy_pool

            if install_cupy_pool():
                import cupy

                self._cp = cupy
        cuda.select_device(device)
        self._emm = None
        if not self._sim and self._cp is not None:
            from embedkit.kernels.cuda.memory import attach_cupy_pool

            ctx = cuda.current_context()
            attach_cupy_pool(ctx)  # the context may predate install_cupy_pool (see memory.py)
            self._emm = ctx.memory_manager
        if self._cp is not None:
            self._cp_stream = self._cp.cuda.Stream(non_blocking=False)
            self._cp_stream.use()
            self.stream = cuda.external_stream(self._cp_stream.ptr)
        else:
            self._cp_stream = None
            self.stream = cuda.stream()
        self.steps = StepRecorder(cuda, self.stream, self._cp, self._cp_stream, graphs, _records_step)
        self.stats = self.steps.stats
        name = getattr(cuda.get_current_device(), "name", "CUDA simulator")
        self.device_name = name.decode() if isinstance(name, bytes) else str(name)
        self._dummy_f32 = cuda.device_array((1, 1), dtype=np.float32)
        self._dummy_i32 = cuda.device_array((1, 1), dtype=np.int32)
        self._pinned = None  # host buffer for to_host
        self._thread = threading.get_ident()  # the thread of the last forward (see begin_forward)

    @property
    def graphs(self) -> bool:
        """Whether decode steps are recorded and replayed as CUDA graphs (off after a failed capture)."""
        return self.steps.enabled

    def flush(self) -> None:
        """Finish the current step: launch the recorded/replayed graph (eager work is queued already)."""
        self.steps.flush()

    def synchronize(self) -> None:
        """Finish the step and wait for the device."""
        self.steps.flush()
        self.stream.synchronize()

    # -- data movement -------------------------------------------------------------------
    def asarray(self, x: np.ndarray) -> Array:
        """Host array -> device float32 (or int32)."""
        x = np.asarray(x)
        x = x.astype(np.int32) if x.dtype.kind in "iu" else x.astype(np.float32, copy=False)
        return self.steps.input(x)

    def to_host(self, x: Array) -> np.ndarray:
        """Finish the step and copy to the host."""
        if isinstance(x, np.ndarray):
            return x
        self.steps.flush()
        if self._cp is None or not x.is_c_contiguous() or x.nbytes == 0:
            out = x.copy_to_host(stream=self.stream)
            self.stream.synchronize()
            return out
        if self._pinned is None or self._pinned.nbytes < x.nbytes:
            self._pinned = self._cuda.pinned_array(max(x.nbytes, 1 << 20), dtype=np.uint8)
        self._cp.cuda.runtime.memcpyAsync(self._pinned.ctypes.data, device_address(x), x.nbytes, 2, self._cp_stream.ptr)
        self._cp_stream.synchronize()
        return self._pinned[: x.nbytes].view(x.dtype).reshape(x.shape).copy()

    def take(self, x: Array) -> Array:
        """A host array, uploaded (a per-step input of a recorded decode graph)."""
        return self.asarray(x)

    def begin_forward(self, state, n_rows: int) -> None:
        """The step's first key names the state whose caches it writes (see `StepRecorder.begin`). A forward
        from another thread than the last (a `BatchGenerator`'s scheduler) first makes the device's context
        current there: kernels launched through `launch.fast` skip numba's dispatcher, which would."""
        thread = threading.get_ident()
        if thread != self._thread:
            if not self._sim:
                self._cuda.current_context()
            self._thread = thread
        self.steps.begin(state, n_rows)

    def for_encoder(self) -> Backend:
        """Encoders run on `cuda_encoder.CUDAEncoderBackend` (tensor-core GEMMs, fused attention)."""
        from embedkit.backend.cuda_encoder import encoder_backend

        return encoder_backend()

    def _empty(self, shape, dtype=np.float32):
        # DeviceNDArray directly: cuda.device_array's context check and argument normalisation
        # cost more than the allocation itself (C-order strides computed here)
        shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        strides, step = [], dtype.itemsize
        for s in reversed(shape):
            strides.append(step)
            step *= s
        if self._emm is not None and step:  # straight to the memory manager (CuPy's pool)
            return self._DeviceNDArray(
                shape, tuple(reversed(strides)), dtype, self.stream, gpu_data=self._emm.memalloc(step)
            )
        return self._DeviceNDArray(shape, tuple(reversed(strides)), dtype, self.stream)

    def view(self, x: Array, shape: tuple[int, ...]) -> Array:
        """Reshape without copying."""
        shape = tuple(int(s) for s in shape)
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1]))
            shape = tuple(x.size // known if s == -1 else s for s in shape)
        return self.steps.op(("view", x.shape, shape), x.shape[0], lambda: (x.reshape(shape), None))

    def rows(self, x: Array, start: int, stop: int) -> Array:
        """Rows start:stop (a contiguous view)."""
        return self.steps.op(("rows", x.shape, start, stop), stop - start, lambda: (x[start:stop], None))

    def split_cols(self, x: Array, sizes: list[int]) -> list[Array]:
        """Contiguous copies of column blocks of [n, sum(sizes)]."""
        copy_cols = self._k.elementwise.copy_cols
        n = x.shape[0]
        outs, c0 = [], 0
        for size in sizes:

            def build(c=c0, size=size):
                out = self._empty((n, size))
                return out, lambda s: copy_cols(x, c, out, s)

            outs.append(self.steps.op(("split_cols", x.shape, c0, size), n, build))
            c0 += size
        return outs


_BACKENDS: dict[tuple[int, bool], CUDABackend] = {}


def cuda_backend(device: int = 0, graphs: bool = False) -> CUDABackend:
    """The process-wide CUDA backend for `device` (one per graphs setting), created on first use."""
    key = (device, bool(graphs))
    be = _BACKENDS.get(key)
    if be is None:
        be = _BACKENDS[key] = CUDABackend(device, graphs)
    return be


__all__ = [
    "CUDABackend",
    "GraphStats",
    "MATVEC_MAX_ROWS",
    "OFFLOAD_MIN_TOKENS",
    "bytes_per_token",
    "cuda_backend",
]
