"""The CUDA backend: weights, activations and KV caches in VRAM, kernels from `embedkit.kernels.cuda`.

Arrays are numba device arrays (float32, C order). Weights are uploaded once: Q4_0 and Q8_0 are
repacked into aligned quants + float16 scales for the dp4a decode kernels, other types stay in their
GGUF bytes. Matmuls of up to `MATVEC_MAX_ROWS` rows run the quantized matvec kernels (decode);
larger batches dequantize the weight to float16 and call cuBLAS (prompt, embeddings).

Decode steps can run as CUDA graphs (`graphs=True`, used when a whole model sits on this backend):
a one-token step is recorded (ops deferred, then captured on the backend's stream at the first
`to_host`) and later steps with the same sequence of ops replay it. While replaying, each op only
checks its key against the recording and returns the recorded output array; the per-step inputs
(the token's embedding or ids, the position) are device buffers refreshed before the launch, and
the graph is launched as soon as the last of them is known, so the GPU runs while the rest of the
model's Python replays. A step that departs from the recording runs the recorded prefix eagerly
(recomputing anything an early launch did) and continues eagerly; the next step records afresh.
Per-step inputs are staged in pinned host memory and copied by the graph's own memcpy nodes.

Fusions (results unchanged, fewer kernels): RMSNorm, GLU and decode attention write the int8 blocks
of their output for the next dp4a matvec (or a float16 copy for the next GEMM); `matmuls` runs up to
three Q4_0/Q8_0 matvecs sharing an input in one launch; while recording a graph, `add(x, W @ h)`
right after that matvec is folded into it; the RoPE of q and k and the KV store of a one-token step
run inside the decode attention kernel (`FUSE_DECODE_ROPE`: the graph drops the two RoPE launches; the
roped q/k arrays are then never written, which holds because every architecture hands them only to the
attention). A step that leaves the recording recomputes its prefix with the unfused launches. Prompt
attention runs two cuBLAS batched GEMMs around a masked softmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from embedkit.backend.base import Array, Backend, KVCache, RopeStyle, Weight
from embedkit.backend.cuda_batch import CUDASeqOps
from embedkit.errors import DeviceError, UnsupportedQuantError
from embedkit.gguf import GGMLType

MATVEC_MAX_ROWS = 8  # up to this many tokens a matmul streams the quantized weight once per token
F16_CACHE_MAX_BYTES = 64 << 20  # keep a float16 copy of matrices up to this size for GEMMs
PROMPT_ATTENTION_BLAS = True  # prompts: cuBLAS batched GEMMs (else the tiled shared-memory kernel)
FUSE_DECODE_ROPE = True  # graphs: RoPE of q and k + KV store inside the decode attention kernel
# graphs: steps of 2..MATVEC_MAX_ROWS rows (several sequences decoding together) are recorded too, one
# graph per row count (else only one-token steps are). Off: not yet checked on a GPU
BATCH_GRAPHS = False
# partial offload: a CPU layer's matmul over at least this many tokens runs here, its weight crossing
# the bus for the call (llama.cpp's threshold for the same move)
OFFLOAD_MIN_TOKENS = 32

_GENERIC_TYPES = {"F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K"}
_FAST_TYPES = {"Q4_0", "Q8_0"}


@dataclass
class _Matrix:
    """A weight matrix in VRAM: `views` (a uint8, b float16, c float32) as `quant_elem` reads them."""

    layout: str
    fast: str | None
    views: tuple
    n_rows: int
    n_cols: int
    f16: Any = None


@dataclass
class _Graph:
    """A recorded decode step: op keys, launch functions, outputs, and the captured graph."""

    keys: list
    fns: list
    outs: list
    inputs: list  # device buffers refreshed from the host before each launch, in op order
    extras: list = field(default_factory=list)  # per op: None, ("q", src, (xq, xd)) memo, or an input's stage
    capture: dict = field(default_factory=dict)  # op index -> what the captured graph runs instead (fusions)
    graph: Any = None
    launches: int = 0


class _MatvecLaunch:
    """One dp4a matvec launch over 1-3 matrices sharing (xq, xd); mutable until it runs (fusions)."""

    __slots__ = ("fast", "mats", "xq", "xd", "res", "y2", "kernels")

    def __init__(self, kernels, fast: str, mats: list, xq, xd) -> None:
        self.kernels, self.fast, self.mats, self.xq, self.xd = kernels, fast, mats, xq, xd
        self.res = self.y2 = None

    def __call__(self, stream) -> None:
        self.kernels.matvec_multi(self.fast, self.mats, self.xq, self.xd, self.res, self.y2, stream)


@dataclass
class GraphStats:
    """Counters of the graph machinery (for benchmarks)."""

    recorded: int = 0
    replayed: int = 0
    derailed: int = 0
    eager_steps: int = 0
    extra: dict = field(default_factory=dict)


def _name(ggml_type: int) -> str:
    return GGMLType(int(ggml_type)).name


def _ptr(a) -> int:
    """Device address of a numba device array."""
    return a.__cuda_array_interface__["data"][0]


class CUDABackend(CUDASeqOps, Backend):
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
            elementwise,
            gemm,
            norms,
            pooling,
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
            elementwise=elementwise,
            gemm=gemm,
            norms=norms,
            pooling=pooling,
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
        self.graphs = bool(graphs) and self._cp is not None
        self.stats = GraphStats()
        name = getattr(cuda.get_current_device(), "name", "CUDA simulator")
        self.device_name = name.decode() if isinstance(name, bytes) else str(name)
        self._dummy_f32 = cuda.device_array((1, 1), dtype=np.float32)
        self._dummy_i32 = cuda.device_array((1, 1), dtype=np.int32)
        # step state
        self._mode = "idle"  # idle | eager | record | replay
        self._graph: _Graph | None = None
        self._graphs: dict[int, _Graph] = {}  # recorded steps by row count
        self._graph_rows = 1
        self._rec: _Graph | None = None
        self._cursor = 0
        self._dyn: list[tuple[Any, np.ndarray]] = []
        self._step_pos: int | None = None
        self._step_pos_buf = None
        self._xq_src = None
        self._xq = None
        self._x16_src = None
        self._x16 = None
        self._hit_extra = None
        self._open_mv: _MatvecLaunch | None = None  # recording: the last op, if a fusable matvec
        self._ropes: dict[int, tuple] = {}  # recording: id(roped output) -> (output, op index, input, params)
        self._pinned = None  # host buffer for to_host
        self._launched = False

    # -- step machinery ------------------------------------------------------------------
    def _start(self, n_rows: int) -> None:
        if self._mode != "idle":
            return
        self._step_pos = None
        self._step_pos_buf = None
        self._xq_src = self._xq = None
        self._x16_src = self._x16 = None
        self._open_mv = None
        self._ropes = {}
        self._dyn = []
        self._launched = False
        if self.graphs and (n_rows == 1 or (BATCH_GRAPHS and n_rows <= MATVEC_MAX_ROWS)):
            self._cursor = 0
            self._graph_rows = n_rows
            self._graph = self._graphs.get(n_rows)
            if self._graph is not None:
                self._mode = "replay"
            else:
                self._mode = "record"
                self._rec = _Graph([], [], [], [])
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
                fn(self.stream)
        self.stats.derailed += 1
        self._mode = "eager"
        self._graph = None  # record afresh at the next step of this many rows
        self._graphs.pop(self._graph_rows, None)

    def _op(self, key: tuple, fn, out, extra=None):
        """Run `fn(stream)` now (eager) or record it (graph recording); returns `out`.

        `extra`: ("q", out, (xq, xd)) when the op also wrote its output's int8 blocks (restored as
        the memo on replay), or ("stage", pinned) for a per-step input."""
        if self._mode == "record":
            rec = self._rec
            rec.keys.append(key)
            rec.fns.append(fn)
            rec.outs.append(out)
            rec.extras.append(extra)
            if fn is not None:
                self._open_mv = None
        elif fn is not None:
            fn(self.stream)
        if extra is not None and extra[0] == "q":
            self._xq_src, self._xq = extra[1], extra[2]
        return out

    def _input(self, host: np.ndarray, key_extra: tuple = ()):
        """A device copy of `host` that a replayed graph reads (refreshed before each launch)."""
        host = np.ascontiguousarray(host)
        key = ("input", host.shape, host.dtype.str, *key_extra)
        n_rows = host.shape[0] if host.ndim else 1  # token ids [n] count as n rows (a prompt is not a step)
        hit = self._replayed(key, n_rows)
        if hit is not None:
            self._dyn.append((self._hit_extra[1], host))
            if len(self._dyn) == len(self._graph.inputs):
                # every per-step input is known: launch now, so the GPU runs while the rest of the
                # model's Python replays (a later departure from the recording recomputes eagerly)
                self._push_inputs()
                self._graph.graph.launch(self._cp_stream)
                self._launched = True
            return hit
        buf = self._cuda.device_array(host.shape, dtype=host.dtype, stream=self.stream)
        if self._mode == "record":
            # pinned stage written by the host before each launch, copied by the graph itself
            stage = self._cuda.pinned_array(host.shape, dtype=host.dtype)
            self._rec.inputs.append(buf)
            self._dyn.append((stage, host))
            dst, src, nbytes = _ptr(buf), stage.ctypes.data, host.nbytes
            memcpy = self._cp.cuda.runtime.memcpyAsync
            stream_ptr = self._cp_stream.ptr

            def fn(s, dst=dst, src=src, nbytes=nbytes):
                memcpy(dst, src, nbytes, 1, stream_ptr)  # 1: host to device

            return self._op(key, fn, buf, ("stage", stage))
        buf.copy_to_device(host, stream=self.stream)
        return buf

    def _push_inputs(self) -> None:
        for stage, host in self._dyn:
            stage[...] = host
        self._dyn = []

    def _pos(self, pos0: int):
        """Device int32 [1] holding pos0 (one per step, so graphs replay at any position)."""
        if self._step_pos_buf is not None and self._step_pos == pos0:
            return self._step_pos_buf
        buf = self._input(np.array([pos0], dtype=np.int32), ("pos",))
        self._step_pos, self._step_pos_buf = pos0, buf
        return buf

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
                    fn(self.stream)
            try:
                rec.graph = self._capture(fns)
            except Exception as e:  # capture unsupported here: stay eager from now on
                self.stats.extra["capture_error"] = repr(e)[:300]
                self.graphs = False
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

    def _capture(self, fns):
        s = self._cp_stream
        self.stream.synchronize()
        mode = getattr(self._cp.cuda.runtime, "streamCaptureModeRelaxed", None)
        s.begin_capture() if mode is None else s.begin_capture(mode)
        try:
            for fn in fns:
                if fn is not None:
                    fn(self.stream)
        finally:
            graph = s.end_capture()
        return graph

    def synchronize(self) -> None:
        """Finish the step and wait for the device."""
        self.flush()
        self.stream.synchronize()

    # -- data movement -------------------------------------------------------------------
    def weight(self, t) -> Weight:
        """Upload a GGUF TensorInfo once: vectors as float32, matrices quantized (Q4_0/Q8_0 repacked)."""
        from embedkit import kernels

        # a new model: recorded steps name weights by id(), which a freed model's may share
        self._graphs.clear()
        self._graph = None
        cuda = self._cuda
        shape = tuple(int(s) for s in t.np_shape)
        gtype = int(t.ggml_type)
        name = _name(gtype)
        if len(shape) == 1:
            data = (
                t.data.view(np.float32)
                if gtype == GGMLType.F32
                else kernels.dequantize(t.data, gtype, (1, shape[0])).reshape(shape[0])
            )
            dev = cuda.to_device(np.ascontiguousarray(data, dtype=np.float32), stream=self.stream)
            return Weight(t.name, int(GGMLType.F32), shape, dev)
        if len(shape) > 2:
            shape = (int(np.prod(shape[:-1])), shape[-1])
        if name not in _GENERIC_TYPES:
            raise UnsupportedQuantError(f"{t.name}: ggml type {name} has no CUDA kernel")
        return Weight(t.name, gtype, shape, self.upload_matrix(np.asarray(t.data), name, *shape))

    def upload_matrix(self, raw: np.ndarray, type_name: str, n_rows: int, n_cols: int) -> _Matrix:
        """Upload raw GGUF bytes of a [n_rows, n_cols] matrix of `type_name` into a _Matrix."""
        quant_fast = self._k.quant_fast

        cuda = self._cuda
        raw = np.ascontiguousarray(raw).reshape(n_rows, -1)
        dev = cuda.to_device(raw, stream=self.stream)
        if type_name in _FAST_TYPES:
            qs, d = quant_fast.repack(dev, type_name, n_rows, n_cols, self.stream)
            self.stream.synchronize()
            del dev
            return _Matrix(type_name + "R", type_name, (qs, d, self._dummy_f32), n_rows, n_cols)
        row_bytes = raw.shape[1]
        c = dev.view(np.float32) if row_bytes % 4 == 0 else self._dummy_f32
        return _Matrix(type_name, None, (dev, dev.view(np.float16), c), n_rows, n_cols)

    def offload_takes(self, x: np.ndarray, w: Weight) -> bool:
        """Whether `host_matmul` should run x @ W.T for a CPU layer: a batch of OFFLOAD_MIN_TOKENS or
        more against a matrix of a type these kernels read."""
        return (
            x.ndim == 2
            and x.shape[0] >= OFFLOAD_MIN_TOKENS
            and len(w.shape) == 2
            and isinstance(w.data, np.ndarray)
            and _name(w.ggml_type) in _GENERIC_TYPES
        )

    def host_matmul(self, x: np.ndarray, w: Weight) -> np.ndarray:
        """x @ W.T for host x [n, k] and a CPU-resident W (its raw GGUF rows): W is uploaded for this call
        only, dequantized to float16 and multiplied by cuBLAS; the result comes back to the host. A
        prompt batch does far more arithmetic per weight byte than the CPU does in the time the bus
        takes to carry the bytes."""
        return self.host_matmuls(x, [w])[0]

    def host_matmuls(self, x: np.ndarray, ws: list[Weight]) -> list[np.ndarray]:
        """`host_matmul` for several CPU-resident weights sharing the input x, which goes up once."""
        xd = self.asarray(x)
        ys = []
        for w in ws:
            n_rows, n_cols = w.shape
            m = self.upload_matrix(w.data, _name(w.ggml_type), n_rows, n_cols)
            ys.append(self.to_host(self.matmul(xd, Weight(w.name, w.ggml_type, w.shape, m))))
            del m  # the upload goes back to the pool before the next one
        self.stats.extra["host_matmuls"] = self.stats.extra.get("host_matmuls", 0) + len(ws)
        return ys

    def asarray(self, x: np.ndarray) -> Array:
        """Host array -> device float32 (or int32)."""
        x = np.asarray(x)
        x = x.astype(np.int32) if x.dtype.kind in "iu" else x.astype(np.float32, copy=False)
        return self._input(x)

    def to_host(self, x: Array) -> np.ndarray:
        """Finish the step and copy to the host."""
        if isinstance(x, np.ndarray):
            return x
        self.flush()
        if self._cp is None or not x.is_c_contiguous() or x.nbytes == 0:
            out = x.copy_to_host(stream=self.stream)
            self.stream.synchronize()
            return out
        if self._pinned is None or self._pinned.nbytes < x.nbytes:
            self._pinned = self._cuda.pinned_array(max(x.nbytes, 1 << 20), dtype=np.uint8)
        self._cp.cuda.runtime.memcpyAsync(self._pinned.ctypes.data, _ptr(x), x.nbytes, 2, self._cp_stream.ptr)
        self._cp_stream.synchronize()
        return self._pinned[: x.nbytes].view(x.dtype).reshape(x.shape).copy()

    def take(self, x: Array) -> Array:
        """A host array, uploaded (a per-step input of a recorded decode graph)."""
        return self.asarray(x)

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
        key = ("view", x.shape, shape)
        hit = self._replayed(key, x.shape[0])
        if hit is not None:
            return hit
        return self._op(key, None, x.reshape(shape))

    def rows(self, x: Array, start: int, stop: int) -> Array:
        """Rows start:stop (a contiguous view)."""
        key = ("rows", x.shape, start, stop)
        hit = self._replayed(key, stop - start)
        if hit is not None:
            return hit
        return self._op(key, None, x[start:stop])

    def split_cols(self, x: Array, sizes: list[int]) -> list[Array]:
        """Contiguous copies of column blocks of [n, sum(sizes)]."""
        elementwise = self._k.elementwise

        n = x.shape[0]
        outs, c0 = [], 0
        for s in sizes:
            key = ("split_cols", x.shape, c0, s)
            hit = self._replayed(key, n)
            if hit is not None:
                outs.append(hit)
            else:
                out = self._empty((n, s))
                outs.append(self._op(key, lambda st, c=c0, o=out: elementwise.copy_cols(x, c, o, st), out))
            c0 += s
        return outs

    # -- linear algebra ------------------------------------------------------------------
    def get_rows(self, w: Weight, ids: np.ndarray) -> Array:
        """Dequantize rows `ids` of a matrix into [n, n_cols] float32."""
        quant_generic = self._k.quant_generic

        m: _Matrix = w.data
        ids_dev = self._input(np.asarray(ids, dtype=np.int32).reshape(-1), ("ids",))
        n = ids_dev.shape[0]
        key = ("get_rows", id(w), n)
        hit = self._replayed(key, n)
        if hit is not None:
            return hit
        out = self._empty((n, m.n_cols))
        return self._op(key, lambda s: quant_generic.dequantize_rows(m.layout, m.views, ids_dev, out, s), out)

    def _quantized(self, x):
        """int8 blocks of x for the dp4a kernels, shared by matmuls of the same input."""
        if self._xq_src is x:
            return self._xq
        quant_fast = self._k.quant_fast
        key = ("quantize", x.shape)
        hit = self._replayed(key, x.shape[0])
        if hit is None:
            xq, xd = quant_fast.activation_buffers(x.shape[0], x.shape[1], self.stream)
            hit = self._op(key, lambda s: quant_fast.quantize_activations(x, xq, xd, s), (xq, xd))
        self._xq_src, self._xq = x, hit
        return hit

    def _fast_ok(self, x, ws: list[Weight]) -> bool:
        """Whether the dp4a matvec takes x @ W.T for every W (a few rows, Q4_0/Q8_0 of one type)."""
        m0: _Matrix = ws[0].data
        return (
            x.ndim == 2
            and x.shape[0] <= MATVEC_MAX_ROWS
            and m0.fast is not None
            and m0.n_cols % 32 == 0
            and all(w.data.fast == m0.fast and w.data.n_cols == m0.n_cols for w in ws)
        )

    def matmul(self, x: Array, w: Weight, bias: Weight | None = None) -> Array:
        """[n, n_in] @ W.T (+ bias): quantized matvec for small n, float16 cuBLAS GEMM otherwise."""
        m: _Matrix = w.data
        if x.ndim != 2:
            x = self.view(x, (x.size // m.n_cols, m.n_cols))
        if self._fast_ok(x, [w]):
            return self._matvec_fast(x, [w], [bias])[0]
        n = x.shape[0]
        b = bias.data if bias is not None else None
        if n > MATVEC_MAX_ROWS and self._cp is not None:
            return self._gemm(x, m, b)
        launch = self.int8_matvecs.get(m.layout)
        if launch is not None:
            return self._int8_matvec(x, w, b, launch)
        quant_generic = self._k.quant_generic
        key = ("matvec", id(w), n, bias is not None)
        hit = self._replayed(key, n)
        if hit is not None:
            return hit
        y = self._empty((n, m.n_rows))
        return self._op(key, lambda s: quant_generic.matvec(m.layout, m.views, x, b, y, s), y)

    def _int8_matvec(self, x, w: Weight, b, launch):
        """A decode matvec on int8 activation blocks (dp4a), the blocks shared with other matmuls of x."""
        m: _Matrix = w.data
        xq, xd = self._quantized(x)
        n = x.shape[0]
        key = ("int8_matvec", id(w), n, b is not None)
        hit = self._replayed(key, n)
        if hit is not None:
            return hit
        y = self._empty((n, m.n_rows))
        return self._op(key, lambda s: launch(m.layout, m.views, xq, xd, b, y, s), y)

    def matmuls(self, x: Array, ws: list[Weight], biases: list[Weight | None] | None = None) -> list[Array]:
        """Several x @ W.T (+ b) with one input: up to three Q4_0/Q8_0 matvecs in one launch."""
        biases = list(biases or [None] * len(ws))
        if (
            len(ws) <= 3
            and self._fast_ok(x, ws)
            and (all(b is None for b in biases) or all(b is not None for b in biases))
        ):
            return self._matvec_fast(x, ws, biases)
        return super().matmuls(x, ws, biases)

    def _matvec_fast(self, x, ws: list[Weight], biases: list) -> list:
        """One dp4a launch for 1-3 repacked matrices; a single one stays open for a residual fusion."""
        xq, xd = self._quantized(x)
        n = x.shape[0]
        key = ("matvec_fast", tuple(id(w) for w in ws), n, biases[0] is not None)
        hit = self._replayed(key, n)
        if hit is not None:
            return hit
        ys = [self._empty((n, w.data.n_rows)) for w in ws]
        mats = [
            (w.data.views[0], w.data.views[1], b.data if b is not None else None, y)
            for w, b, y in zip(ws, biases, ys, strict=True)
        ]
        launch = _MatvecLaunch(self._k.quant_fast, ws[0].data.fast, mats, xq, xd)
        out = self._op(key, launch, ys)
        if self._mode == "record" and len(ws) == 1:
            self._open_mv = launch
        return out

    def _f16_weight(self, m: _Matrix, stream):
        """Float16 copy of W (cached for small matrices, else a fresh pool buffer)."""
        if m.f16 is not None:
            return m.f16
        w16 = self._empty((m.n_rows, m.n_cols), np.float16)
        if m.fast is not None:
            self._k.quant_fast.dequantize_f16(m.fast, m.views[0], m.views[1], w16, stream)
        else:
            self._k.quant_generic.dequantize_all(m.layout, m.views, w16, stream)
        if m.n_rows * m.n_cols * 2 <= F16_CACHE_MAX_BYTES:
            m.f16 = w16
        return w16

    def _f16_input(self, x):
        """Float16 copy of x for the GEMMs (from the op that made x, or converted once)."""
        if self._x16_src is x:
            return self._x16
        elementwise = self._k.elementwise
        x16 = self._empty(x.shape, np.float16)
        self._op(
            ("to_f16", x.shape),
            lambda s: elementwise.unary(x.reshape(x.size), x16.reshape(x16.size), elementwise.SCALE, 1.0, s),
            x16,
        )
        self._x16_src, self._x16 = x, x16
        return x16

    def _gemm(self, x, m: _Matrix, b):
        elementwise, gemm = self._k.elementwise, self._k.gemm
        n = x.shape[0]
        key = ("gemm", id(m), n)
        hit = self._replayed(key, n)
        if hit is not None:
            return hit
        x16 = self._f16_input(x)
        y = self._empty((n, m.n_rows))

        def fn(s):
            w16 = self._f16_weight(m, s)
            gemm.gemm_f16(x16, w16, y, self._cp_stream.ptr)
            if b is not None:
                yf = y.reshape(y.size)
                elementwise.binary(yf, b, yf, elementwise.ADD, s)

        return self._op(key, fn, y)

    def _want(self, x) -> tuple[bool, bool]:
        """(int8 blocks, float16 copy): what the next matmul of x [n, d] will read."""
        if x.ndim != 2:
            return False, False
        n, d = x.shape
        if n <= MATVEC_MAX_ROWS:
            return d % 32 == 0, False
        return False, self._cp is not None

    # -- elementwise ---------------------------------------------------------------------
    def _binary(self, a, b, op: int, name: str):
        bv = b.data if isinstance(b, Weight) else b
        key = (name, a.shape, bv.shape, id(b) if isinstance(b, Weight) else None)
        hit = self._replayed(key, a.shape[0])
        if hit is not None:
            return hit
        out = self._empty(a.shape)
        mv = self._open_mv
        if mv is not None and op == self._k.elementwise.ADD and bv.shape == a.shape and not isinstance(b, Weight):
            y = mv.mats[0][3]
            other = a if bv is y else (bv if a is y else None)
            if other is not None and mv.res is None:
                mv.res, mv.y2 = other, out  # the matvec also writes y + other
                return self._op(key, None, out)
        elementwise = self._k.elementwise
        return self._op(
            key,
            lambda s: elementwise.binary(a.reshape(a.size), bv.reshape(bv.size), out.reshape(out.size), op, s),
            out,
        )

    def add(self, a: Array, b: Array) -> Array:
        """a + b (b: same shape, or a vector/Weight broadcast over rows)."""
        elementwise = self._k.elementwise

        return self._binary(a, b, elementwise.ADD, "add")

    def mul(self, a: Array, b: Array) -> Array:
        """a * b (b: same shape, or a vector/Weight broadcast over rows)."""
        elementwise = self._k.elementwise

        return self._binary(a, b, elementwise.MUL, "mul")

    def _unary(self, x, op: int, s_: float, name: str):
        elementwise = self._k.elementwise

        key = (name, x.shape, s_)
        hit = self._replayed(key, x.shape[0])
        if hit is not None:
            return hit
        out = self._empty(x.shape)
        return self._op(key, lambda s: elementwise.unary(x.reshape(x.size), out.reshape(out.size), op, s_, s), out)

    def scale(self, a: Array, s: float) -> Array:
        """a * s."""
        elementwise = self._k.elementwise

        return self._unary(a, elementwise.SCALE, float(s), "scale")

    def silu(self, x: Array) -> Array:
        """x * sigmoid(x)."""
        elementwise = self._k.elementwise

        return self._unary(x, elementwise.SILU, 1.0, "silu")

    def gelu(self, x: Array) -> Array:
        """Tanh-approximated GELU (ggml_gelu)."""
        elementwise = self._k.elementwise

        return self._unary(x, elementwise.GELU, 1.0, "gelu")

    def gelu_erf(self, x: Array) -> Array:
        """Exact GELU."""
        elementwise = self._k.elementwise

        return self._unary(x, elementwise.GELU_ERF, 1.0, "gelu_erf")

    def _glu(self, gate, up, op: int, name: str):
        key = (name, gate.shape)
        hit = self._replayed(key, gate.shape[0])
        if hit is not None:
            return hit
        elementwise = self._k.elementwise
        out = self._empty(gate.shape)
        want_q, want16 = self._want(gate)
        size = out.size
        if want_q:
            xq, xd = self._k.quant_fast.activation_buffers(gate.shape[0], gate.shape[1], self.stream)
            fn = lambda s: elementwise.glu_fused(  # noqa: E731
                gate.reshape(size), up.reshape(size), out.reshape(size), op,
                xq.view(np.int8).reshape(size), xd.reshape(xd.size), None, s,
            )  # fmt: skip
            return self._op(key, fn, out, ("q", out, (xq, xd)))
        if want16:
            o16 = self._empty(gate.shape, np.float16)
            fn = lambda s: elementwise.glu_fused(  # noqa: E731
                gate.reshape(size), up.reshape(size), out.reshape(size), op, None, None, o16.reshape(size), s
            )
            out = self._op(key, fn, out)
            self._x16_src, self._x16 = out, o16
            return out
        return self._op(
            key,
            lambda s: elementwise.glu(gate.reshape(size), up.reshape(size), out.reshape(size), op, s),
            out,
        )

    def swiglu(self, gate: Array, up: Array) -> Array:
        """silu(gate) * up."""
        elementwise = self._k.elementwise

        return self._glu(gate, up, elementwise.SWIGLU, "swiglu")

    def geglu(self, gate: Array, up: Array) -> Array:
        """gelu_tanh(gate) * up."""
        elementwise = self._k.elementwise

        return self._glu(gate, up, elementwise.GEGLU, "geglu")

    def softmax(self, x: Array) -> Array:
        """Softmax over the last dimension."""
        softmax = self._k.softmax

        key = ("softmax", x.shape)
        hit = self._replayed(key, x.shape[0])
        if hit is not None:
            return hit
        out = self._empty(x.shape)
        d = x.shape[x.ndim - 1]
        return self._op(
            key, lambda s: softmax.softmax(x.reshape(x.size // d, d), out.reshape(out.size // d, d), s), out
        )

    # -- normalization -------------------------------------------------------------------
    def rms_norm(self, x: Array, w: Weight | None, eps: float) -> Array:
        """RMSNorm over the last dimension (any leading shape); a matmul input also gets its int8
        blocks (a few rows) or float16 copy (a batch) in the same kernel."""
        key = ("rms_norm", x.shape, id(w), eps)
        hit = self._replayed(key, x.shape[0])
        if hit is not None:
            return hit
        norms = self._k.norms
        out = self._empty(x.shape)
        d = x.shape[x.ndim - 1]
        wv = w.data if w is not None else None
        want_q, want16 = self._want(x)
        if (want_q or want16) and norms.rms_norm_fused_ok(d):
            if want_q:
                xq, xd = self._k.quant_fast.activation_buffers(x.shape[0], d, self.stream)
                fn = lambda s: norms.rms_norm_fused(x, wv, eps, out, xq.view(np.int8), xd, None, s)  # noqa: E731
                return self._op(key, fn, out, ("q", out, (xq, xd)))
            o16 = self._empty(x.shape, np.float16)
            out = self._op(key, lambda s: norms.rms_norm_fused(x, wv, eps, out, None, None, o16, s), out)
            self._x16_src, self._x16 = out, o16
            return out
        return self._op(
            key, lambda s: norms.rms_norm(x.reshape(x.size // d, d), wv, eps, out.reshape(out.size // d, d), s), out
        )

    def layer_norm(self, x: Array, w: Weight | None, b: Weight | None, eps: float) -> Array:
        """LayerNorm over the last dimension (any leading shape)."""
        norms = self._k.norms

        key = ("layer_norm", x.shape, id(w), id(b), eps)
        hit = self._replayed(key, x.shape[0])
        if hit is not None:
            return hit
        out = self._empty(x.shape)
        d = x.shape[x.ndim - 1]
        wv = w.data if w is not None else None
        bv = b.data if b is not None else None
        return self._op(
            key,
            lambda s: norms.layer_norm(x.reshape(x.size // d, d), wv, bv, eps, out.reshape(out.size // d, d), s),
            out,
        )

    # -- positions and attention ---------------------------------------------------------
    def rope(
        self,
        x: Array,
        positions: np.ndarray,
        n_rot: int,
        base: float,
        style: RopeStyle,
        freq_scale: float = 1.0,
    ) -> Array:
        """Rotary embedding of [n, heads, hd]; consecutive positions go through the step's pos buffer."""
        rope = self._k.rope

        positions = np.asarray(positions, dtype=np.int32).reshape(-1)
        n = x.shape[0]
        p0 = int(positions[0])
        # 2..MATVEC_MAX_ROWS rows always read their positions from an array: a batch of several sequences'
        # decode rows may happen to be consecutive, and a recorded step must not depend on that
        consecutive = n == 1 or (
            n > MATVEC_MAX_ROWS and bool(np.all(positions == np.arange(p0, p0 + n, dtype=np.int32)))
        )
        pos_buf = self._pos(p0)
        pos_arr = None if consecutive else self._input(positions, ("positions",))
        key = ("rope", x.shape, n_rot, base, style, freq_scale, consecutive)
        hit = self._replayed(key, n)
        if hit is not None:
            return hit
        out = self._empty(x.shape)
        neox = style == "neox"
        out = self._op(key, lambda s: rope.rope(x, pos_arr, pos_buf, n_rot, base, freq_scale, neox, out, s), out)
        if self._mode == "record" and n == 1:
            self._ropes[id(out)] = (out, len(self._rec.fns) - 1, x, (n_rot, base, freq_scale, neox))
        return out

    def kv_cache(self, n_ctx: int, n_kv_heads: int, head_dim: int) -> KVCache:
        """Float32 keys and values in VRAM, laid out [n_ctx, n_kv_heads, head_dim] (position-major)."""
        k = self._empty((n_ctx, n_kv_heads, head_dim))
        v = self._empty((n_ctx, n_kv_heads, head_dim))
        return KVCache(n_ctx, n_kv_heads, head_dim, k, v, "cuda")

    def attention(
        self,
        q: Array,
        cache: KVCache,
        k_new: Array,
        v_new: Array,
        pos0: int,
        scale: float,
        causal: bool = True,
        window: int | None = None,
        softcap: float | None = None,
    ) -> Array:
        """Store k_new/v_new in the VRAM cache at pos0.., then attend (see Backend.attention)."""
        attention = self._k.attention
        n, heads, hd = q.shape
        pos_buf = self._pos(pos0)
        key = ("attention", q.shape, id(cache), scale, causal, window, softcap)
        hit = self._replayed(key, n)
        if hit is not None:
            return hit
        out = self._empty((n, heads * hd))
        win = int(window) if window else 0
        cap = float(softcap) if softcap else 0.0
        extra = o16 = None
        if not (attention.decode_ok(hd) and attention.prefill_ok(hd)):
            attend = lambda s: attention.attention_cache(  # noqa: E731
                q, cache.k, cache.v, pos_buf, causal, win, scale, cap, self._dummy_i32, out, s
            )
        elif n == 1:
            xq, xd = self._k.quant_fast.activation_buffers(n, heads * hd, self.stream)
            extra = ("q", out, (xq, xd))
            attend = lambda s: attention.attention_decode(  # noqa: E731
                q, cache.k, cache.v, pos_buf, causal, win, scale, cap, out, xq.view(np.int8), xd, s
            )
        elif PROMPT_ATTENTION_BLAS and n > MATVEC_MAX_ROWS and self._cp is not None and attention.blas_ok(
            n, heads, pos0 + n
        ):
            attend = lambda s: attention.attention_blas(  # noqa: E731
                q, cache.k, cache.v, pos0, pos_buf, causal, win, scale, cap, out, self._empty, s, self._cp_stream.ptr
            )
        else:
            o16 = self._empty((n, heads * hd), np.float16) if n > MATVEC_MAX_ROWS and self._cp else None
            attend = lambda s: attention.attention_prefill(  # noqa: E731
                q, cache.k, cache.v, pos_buf, causal, win, scale, cap, out, o16, s
            )

        def fn(s):
            attention.kv_store(k_new, v_new, cache.k, cache.v, pos_buf, s)
            attend(s)

        rq, rk = self._ropes.get(id(q)), self._ropes.get(id(k_new))
        fuse = (
            FUSE_DECODE_ROPE and n == 1 and extra is not None and rq is not None and rk is not None
            and rq[0] is q and rk[0] is k_new and rq[3] == rk[3]
        )  # fmt: skip
        out = self._op(key, fn, out, extra)
        if fuse:
            # the graph runs this instead of rope(q), rope(k) and fn (same results)
            xq, xd = extra[2]
            n_rot, base, freq_scale, neox = rq[3]
            rec = self._rec
            rec.capture[rq[1]] = rec.capture[rk[1]] = None
            rec.capture[len(rec.fns) - 1] = lambda s: attention.attention_decode(
                rq[2], cache.k, cache.v, pos_buf, causal, win, scale, cap, out, xq.view(np.int8), xd, s,
                rope=(rk[2], v_new, n_rot, base, freq_scale, neox),
            )  # fmt: skip
        if o16 is not None:
            self._x16_src, self._x16 = out, o16
        return out

    def attention_batch(self, q: Array, k: Array, v: Array, mask: np.ndarray, scale: float) -> Array:
        """Padded bidirectional attention: [b, t, heads, hd] -> [b, t, heads * hd]."""
        attention = self._k.attention

        b, t, heads, hd = q.shape
        mask_dev = self._input(np.asarray(mask, dtype=np.int32).reshape(b, t), ("mask",))
        key = ("attention_batch", q.shape, scale)
        hit = self._replayed(key, b * t)
        if hit is not None:
            return hit
        out = self._empty((b * t, heads * hd))
        fn = lambda s: attention.attention_batch(q, k, v, mask_dev, scale, out, s)  # noqa: E731
        return self._op(key, fn, out.reshape(b, t, heads * hd))

    def pool(self, x: Array, mask: np.ndarray, mode: str) -> Array:
        """Pool hidden states [b, t, d] over tokens: "mean" (masked), "cls" (first), "last" (last real)."""
        pooling = self._k.pooling

        b, t, d = x.shape
        mask_dev = self._input(np.asarray(mask, dtype=np.int32).reshape(b, t), ("mask",))
        key = ("pool", x.shape, mode)
        hit = self._replayed(key, b)
        if hit is not None:
            return hit
        out = self._empty((b, d))
        code = pooling.POOLING_MODES[mode]
        return self._op(key, lambda s: pooling.pool(x, mask_dev, code, out, s), out)


_BACKENDS: dict[tuple[int, bool], CUDABackend] = {}


def cuda_backend(device: int = 0, graphs: bool = False) -> CUDABackend:
    """The process-wide CUDA backend for `device` (one per graphs setting), created on first use."""
    key = (device, bool(graphs))
    be = _BACKENDS.get(key)
    if be is None:
        be = _BACKENDS[key] = CUDABackend(device, graphs)
    return be


def bytes_per_token(m: _Matrix) -> int:
    """Bytes a matvec reads from this matrix (quants + scales), for bandwidth-floor arithmetic: each
    device buffer once (a layout's uint8/float16/float32 views of one upload share their memory)."""
    buffers = {v.__cuda_array_interface__["data"][0]: v.nbytes for v in m.views if v.size > 1}
    return int(sum(buffers.values()))


__all__ = ["CUDABackend", "GraphStats", "MATVEC_MAX_ROWS", "bytes_per_token", "cuda_backend"]
