"""The CUDA backend encoders run on: tensor-core GEMMs and fused kernels over low-precision activations.

`CUDABackend.for_encoder()` hands encoders (BERT) this backend. It keeps the CUDA backend's weights,
stream and memory pool and runs the encoder's hot ops its own way (`embedkit.kernels.cuda.encoder`):

- every matmul is one cuBLAS GEMM in the precision below, weights converted once at first use (Q, K
  and V concatenated into one matrix, so a layer's three projections are one GEMM);
- the product stays on the GPU in the low dtype with its bias not yet added (`_Act`); the next kernel
  adds the bias: the fused attention (Q/K/V), the residual + LayerNorm (output projections), the GELU;
- float16 attention runs flash-style on tensor cores (`encoder_flash`: CUDA C compiled by NVRTC through
  CuPy, scores kept in registers, the Q/K/V biases added as tiles are loaded, any mask); float32, the
  simulator, or head widths it does not take use the Numba flash-style kernel over each (sequence, head)
  (`encoder.attention`, CUDA cores). `ATTENTION_GEMM` switches float16 right-padded batches to the older
  cuBLAS route instead (`encoder_attention`: batched GEMMs around a softmax kernel, measured slower);
- LayerNorm writes the residual stream in the low dtype only, which the next GEMM and the next residual add read
  (`RESIDUAL_LOW`; float32 made from it only where an op or the host needs it);
- `pooled` pools on the GPU, so only [batch, dim] crosses the bus.
No op waits for the host until `to_host` / `pooled`.

Precision (`EMBEDKIT_GPU_PRECISION`): `float16` (default) rounds weights, the activations between
GEMMs and the residual stream to float16 and accumulates in float32 (cosine to the CPU's float32 vectors >= 0.9999 on
MiniLM-shaped models); `float32` keeps everything in float32 (cuBLAS SGEMM, no TF32), slower.
Any other op (decoders never get here) runs on the wrapped CUDA backend in float32.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedkit.backend.base import Array, Backend, Weight
from embedkit.errors import InputError

PRECISIONS = {"float16": np.float16, "float32": np.float32}
# True: the residual stream between LayerNorms stays in the low dtype alone (as torch's float16 model keeps it;
# half the LayerNorm's bytes); False: LayerNorm also writes a float32 copy that the next residual add reads
RESIDUAL_LOW = True
# True: float16 attention through the tensor-core flash kernel (`encoder_flash`) where CuPy can compile it
FLASH_ATTENTION = True
# True: float16 attention through cuBLAS GEMMs where the batch allows (else the flash-style CUDA-core kernel).
# Off: on an H100 at 256 x 128 MiniLM-shaped tokens the GEMM path took 0.71-1.57 ms a layer (by chunk size)
# against the fused kernel's 0.63 ms (benchmarks/profile_encoder_stages.py, benchmarks/bench_gpu.py)
ATTENTION_GEMM = False
# how those GEMMs are issued: "batched" (one cublasGemmBatchedEx each) or "strided" (one call per head)
ATTENTION_MODE = "batched"


def gpu_precision() -> str:
    """The encoder precision on the GPU from EMBEDKIT_GPU_PRECISION (float16 unless set to float32)."""
    value = os.environ.get("EMBEDKIT_GPU_PRECISION", "float16").strip().lower() or "float16"
    if value not in PRECISIONS:
        raise InputError(f"EMBEDKIT_GPU_PRECISION={value!r}: expected float16 or float32")
    return value


@dataclass
class _Act:
    """An activation [n, d] on the GPU: `lo` in the GEMM dtype (maybe still missing `bias`, a float32
    device vector) and/or `f32` with the bias in; each made from the other when first needed."""

    lo: Any = None
    bias: Any = None
    f32: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        a = self.lo if self.lo is not None else self.f32
        return tuple(a.shape)


class CUDAEncoderBackend(Backend):
    """Encoder ops on a `CUDABackend` (see the module docstring); other ops go to that backend."""

    name = "cuda"

    def __init__(self, base, precision: str | None = None) -> None:
        from embedkit.kernels.cuda import elementwise, encoder, pooling, quant_fast, quant_generic

        self.base = base
        self.precision = precision or gpu_precision()
        self.lo_dtype = np.dtype(PRECISIONS[self.precision])
        self._k = encoder
        self._elementwise, self._pooling = elementwise, pooling
        self._quant_fast, self._quant_generic = quant_fast, quant_generic
        self._mask_host = None
        self._mask_dev = None
        self._lengths_host = None
        self._lengths_dev = None
        self._scratch_bufs: dict = {}
        self._gemm_failed = False  # the attention GEMMs failed once: the fused kernel from then on
        self._flash_failed = False  # the tensor-core flash kernel failed once (NVRTC): the fused kernel
        self.attention_path = ""  # the path the last self_attention took (tests and benchmarks read it)

    @property
    def device_name(self) -> str:
        """The GPU's name."""
        return self.base.device_name

    @property
    def stream(self):
        """The wrapped backend's stream (every launch goes there, in order)."""
        return self.base.stream

    def _cp_stream(self):
        """The CuPy stream behind `stream` (cuBLAS runs there), None under the simulator."""
        return self.base._cp_stream

    # -- conversions ---------------------------------------------------------------------
    def _empty(self, shape, dtype=np.float32):
        return self.base._empty(shape, dtype)

    def _f32(self, x):
        """x as a float32 device array with its bias added (plain device arrays pass through)."""
        if not isinstance(x, _Act):
            return x
        if x.f32 is None:
            x.f32 = self._empty(x.lo.shape)
            self._k.bias_act(x.lo, x.bias, self._k.ACT_NONE, x.f32, self.stream)
        return x.f32

    def _lo(self, x):
        """x in the GEMM dtype with its bias added (converted once and kept on the _Act)."""
        if isinstance(x, _Act):
            if x.lo is not None and x.bias is None:
                return x.lo
            if x.lo is not None:
                out = self._empty(x.lo.shape, self.lo_dtype)
                self._k.bias_act(x.lo, x.bias, self._k.ACT_NONE, out, self.stream)
                x.lo, x.bias = out, None
                return out
            src = x.f32
        else:
            src = x
        if src.ndim != 2:
            d = src.shape[src.ndim - 1]
            src = src.reshape(src.size // d, d)
        if src.dtype == self.lo_dtype:
            return src
        out = self._empty(src.shape, self.lo_dtype)
        self._elementwise.unary(src.reshape(src.size), out.reshape(out.size), self._elementwise.SCALE, 1.0, self.stream)
        if isinstance(x, _Act):
            x.lo = out
        return out

    def _cached(self, ws: list[Weight], kind: str, make):
        """A conversion of the weights `ws`, kept on the first one's device data (freed with the model)."""
        holder = ws[0].data
        cache = getattr(holder, "encoder_cache", None)
        if cache is None:
            cache = {}
            setattr(holder, "encoder_cache", cache)  # noqa: B010 (a dataclass of cuda.py without this field)
        key = (kind, self.precision, *(id(w) for w in ws[1:]))
        got = cache.get(key)
        if got is None or any(a is not b for a, b in zip(got[0], ws[1:], strict=True)):
            got = cache[key] = (list(ws[1:]), make(ws))
        return got[1]

    def _matrix(self, ws: list[Weight]):
        """The weights' matrices stacked by rows, in the GEMM dtype (converted once, cached)."""
        return self._cached(ws, "w", self._convert)

    def _convert(self, ws: list[Weight]):
        rows = sum(w.data.n_rows for w in ws)
        n_cols = ws[0].data.n_cols
        out = self._empty((rows, n_cols), self.lo_dtype)
        r0 = 0
        for w in ws:
            m = w.data
            part = out[r0 : r0 + m.n_rows]
            if m.fast is not None:  # repacked Q4_0/Q8_0: float16 dequantization, then the dtype
                w16 = self._empty((m.n_rows, m.n_cols), np.float16)
                self._quant_fast.dequantize_f16(m.fast, m.views[0], m.views[1], w16, self.stream)
                self._elementwise.unary(w16.reshape(w16.size), part.reshape(part.size),
                                        self._elementwise.SCALE, 1.0, self.stream)  # fmt: skip
            else:
                self._quant_generic.dequantize_all(m.layout, m.views, part, self.stream)
            r0 += m.n_rows
        return out

    def _vector(self, bs: list[Weight]):
        """Bias vectors concatenated (float32 device), cached."""

        def concat(bs):
            out = self._empty((sum(b.data.shape[0] for b in bs),))
            c0 = 0
            for b in bs:
                n = b.data.shape[0]
                out[c0 : c0 + n].copy_to_device(b.data, stream=self.stream)
                c0 += n
            return out

        return self._cached(bs, "b", concat)

    def _mask(self, mask: np.ndarray):
        """int32 device copy of the [b, t] mask (uploaded once per batch: the layers share it)."""
        host = (np.asarray(mask) != 0).astype(np.int32)
        if self._mask_host is None or not np.array_equal(self._mask_host, host):
            dev = self._empty(host.shape, np.int32)
            dev.copy_to_device(host, stream=self.stream)
            self._mask_host, self._mask_dev = host, dev
        return self._mask_dev

    def _lengths(self, mask: np.ndarray):
        """int32 device lengths of a right-padded [b, t] mask (uploaded once per batch), None if the mask
        has holes (a 0 before a 1)."""
        m = np.asarray(mask) != 0
        lengths = m.sum(axis=1).astype(np.int32)
        if not np.array_equal(m, np.arange(m.shape[1])[None, :] < lengths[:, None]):
            return None
        if self._lengths_host is None or not np.array_equal(self._lengths_host, lengths):
            dev = self._empty(lengths.shape, np.int32)
            dev.copy_to_device(lengths, stream=self.stream)
            self._lengths_host, self._lengths_dev = lengths, dev
        return self._lengths_dev

    def _scratch(self, shape, dtype):
        """A device array reused across calls (the latest one per dtype and rank): work areas that every
        layer fills before reading, in stream order."""
        key = (np.dtype(dtype).str, len(shape))
        a = self._scratch_bufs.get(key)
        if a is None or tuple(a.shape) != tuple(shape):
            a = self._scratch_bufs[key] = self._empty(shape, dtype)
        return a

    # -- data movement -------------------------------------------------------------------
    def weight(self, t: Any) -> Weight:
        """Upload a GGUF tensor once (the CUDA backend's layout; converted for GEMMs at first use)."""
        return self.base.weight(t)

    def asarray(self, x: np.ndarray) -> Array:
        """Host array -> device float32 (or int32)."""
        return self.base.asarray(x)

    def to_host(self, x: Array) -> np.ndarray:
        """Float32 host copy (waits for the GPU)."""
        return self.base.to_host(self._f32(x))

    def take(self, x: np.ndarray) -> Array:
        """A host array from another backend, uploaded."""
        return self.base.take(x)

    def view(self, x: Array, shape: tuple[int, ...]) -> Array:
        """Reshape (of the float32 form)."""
        return self.base.view(self._f32(x), shape)

    def rows(self, x: Array, start: int, stop: int) -> Array:
        """Rows start:stop."""
        return self.base.rows(self._f32(x), start, stop)

    def split_cols(self, x: Array, sizes: list[int]) -> list[Array]:
        """Column blocks of x."""
        return self.base.split_cols(self._f32(x), sizes)

    # -- linear algebra ------------------------------------------------------------------
    def get_rows(self, w: Weight, ids: np.ndarray) -> Array:
        """Embedding lookup (float32)."""
        return self.base.get_rows(w, ids)

    def matmul(self, x: Array, w: Weight, bias: Weight | None = None) -> Array:
        """x @ W.T as one GEMM in the low dtype; the bias rides along on the result for the next kernel."""
        xl = self._lo(x)
        if xl.ndim != 2:
            xl = xl.reshape(xl.size // w.data.n_cols, w.data.n_cols)
        y = self._empty((xl.shape[0], w.data.n_rows), self.lo_dtype)
        self._k.gemm(xl, self._matrix([w]), y, self._cp_stream())
        return _Act(lo=y, bias=bias.data if bias is not None else None)

    # -- elementwise (float32 on the CUDA backend, except the fused GELU) ------------------
    def add(self, a: Array, b: Array) -> Array:
        """a + b."""
        return self.base.add(self._f32(a), b if isinstance(b, Weight) else self._f32(b))

    def mul(self, a: Array, b: Array) -> Array:
        """a * b."""
        return self.base.mul(self._f32(a), b if isinstance(b, Weight) else self._f32(b))

    def scale(self, a: Array, s: float) -> Array:
        """a * s."""
        return self.base.scale(self._f32(a), s)

    def gelu(self, x: Array) -> Array:
        """Tanh GELU."""
        return self.base.gelu(self._f32(x))

    def gelu_erf(self, x: Array) -> Array:
        """Exact GELU; on a GEMM's product, bias + GELU in one pass, written in the low dtype."""
        if isinstance(x, _Act) and x.lo is not None:
            out = self._empty(x.lo.shape, self.lo_dtype)
            self._k.bias_act(x.lo, x.bias, self._k.ACT_GELU_ERF, out, self.stream)
            return _Act(lo=out)
        return self.base.gelu_erf(self._f32(x))

    def softmax(self, x: Array) -> Array:
        """Softmax over the last dimension."""
        return self.base.softmax(self._f32(x))

    # -- normalization -------------------------------------------------------------------
    def layer_norm(self, x: Array, w: Weight | None, b: Weight | None, eps: float) -> Array:
        """LayerNorm of [n, d] into the low dtype (and float32 unless RESIDUAL_LOW)."""
        return self.add_layer_norm(x, None, w, b, eps)

    def add_layer_norm(self, a: Array, residual: Array | None, w: Weight | None, b: Weight | None, eps: float):
        """LayerNorm(a + residual) * w + b in one kernel (a's pending bias added on the way)."""
        if w is None or b is None or (not isinstance(a, _Act) and a.ndim != 2):
            x = a if residual is None else self.add(a, residual)
            return self.base.layer_norm(self._f32(x), w, b, eps)
        if isinstance(a, _Act) and a.lo is not None:
            src, bias = a.lo, a.bias
        else:
            src, bias = self._f32(a), None
        n, d = src.shape
        res = None
        if residual is not None:
            low = isinstance(residual, _Act) and residual.lo is not None and residual.bias is None
            res = residual.lo if low and RESIDUAL_LOW and tuple(residual.lo.shape) == (n, d) else self._f32(residual)
        out = None if RESIDUAL_LOW else self._empty((n, d))
        out_lo = self._empty((n, d), self.lo_dtype)
        self._k.add_norm(src, bias, res, w.data, b.data, eps, out, out_lo, self.stream)
        return _Act(lo=out_lo, f32=out)

    # -- attention and pooling -----------------------------------------------------------
    def self_attention(self, x, wq, bq, wk, bk, wv, bv, mask: np.ndarray, n_head: int, scale: float) -> Array:
        """Q/K/V as one GEMM, then attention on cuBLAS GEMMs (float16, right-padded mask: `_attention_gemm`)
        or the fused kernel (biases added as Q/K/V are loaded); `attention_path` says which ran."""
        b, t = np.shape(mask)
        d = wq.data.n_rows
        if not (self._k.attention_ok(d // n_head) and wk.data.n_rows == d and wv.data.n_rows == d):
            return super().self_attention(x, wq, bq, wk, bk, wv, bv, mask, n_head, scale)
        xl = self._lo(x)
        qkv = self._empty((b * t, 3 * d), self.lo_dtype)
        w_qkv = self._matrix([wq, wk, wv])
        self._k.gemm(xl, w_qkv, qkv, self._cp_stream())
        out = self._empty((b * t, d), self.lo_dtype)
        bias = self._vector([bq, bk, bv])
        lengths = self._lengths(mask) if self._attention_on_gemms(b, t, n_head, (bq, bk, bv)) else None
        if lengths is not None and self._attention_gemm(xl, qkv, w_qkv, wq, wk, bq, bias, lengths, n_head, scale, out):
            return _Act(lo=out)
        if self._flash_on(d, n_head) and self._attention_flash(qkv, bias, mask, n_head, scale, out):
            return _Act(lo=out)
        self._k.attention(qkv, bias, self._mask(mask), n_head, scale, out, self.stream)
        self.attention_path = "fused"
        return _Act(lo=out)

    def _flash_on(self, d: int, n_head: int) -> bool:
        """Whether this layer's attention may take the tensor-core flash kernel (float16 on a real GPU with
        CuPy, a head width it has, no earlier failure)."""
        if not (FLASH_ATTENTION and self.lo_dtype == np.float16 and self.base._cp is not None and not self.base._sim):
            return False
        from embedkit.kernels.cuda.encoder_flash import flash_ok

        return not self._flash_failed and flash_ok(d // n_head, d)

    def _attention_flash(self, qkv, bias, mask, n_head: int, scale: float, out) -> bool:
        """The tensor-core flash kernel into `out`; False (and a warning, once) if it cannot be compiled or
        launched, after which this backend keeps to the Numba kernel."""
        from embedkit.kernels.cuda.encoder_flash import flash_attention

        try:
            flash_attention(qkv, bias, self._mask(mask), n_head, scale, out, self._cp_stream())
        except Exception as e:  # NVRTC or launch error: the Numba kernel from now on
            warnings.warn(f"GPU encoder: tensor-core attention failed ({e}); using the fused kernel", stacklevel=2)
            self._flash_failed = True
            return False
        self.attention_path = "flash"
        return True

    def _attention_on_gemms(self, b: int, t: int, n_head: int, biases) -> bool:
        """Whether this batch's attention may run on cuBLAS GEMMs (float16, cuBLAS there or the simulator,
        Q/K/V biases present, the shape fits; the mask is checked next)."""
        if not (ATTENTION_GEMM and self.lo_dtype == np.float16 and (self.base._cp is not None or self.base._sim)):
            return False
        if any(x is None for x in biases) or self._gemm_failed:
            return False
        from embedkit.kernels.cuda.encoder_attention import gemm_ok

        return gemm_ok(b, t, n_head)

    def _attention_gemm(self, xl, qkv, w_qkv, wq, wk, bq, bias, lengths, n_head: int, scale: float, out) -> bool:
        """Attention on cuBLAS GEMMs into `out` (`encoder_attention`); False (and a warning, once) if the
        GEMMs fail, after which this backend keeps to the fused kernel."""
        from embedkit.kernels.cuda import encoder_attention as ea

        mode = ATTENTION_MODE if ATTENTION_MODE != "batched" or ea.batched_available() else "strided"
        d = out.shape[1]
        try:
            u = self._key_bias_weights(w_qkv, wq, wk, bq, n_head, scale)
            key_bias = self._empty((n_head, xl.shape[0]))  # (the scratch's float32 [., .] holds the scores)
            self._k.gemm(u, xl, key_bias, self._cp_stream())  # key_bias[h, j] = U[h] . x_j
            ea.attention_gemm(qkv, key_bias, bias[2 * d : 3 * d], lengths, n_head, scale, out, self._scratch,
                              self.stream, self._cp_stream(), mode=mode)  # fmt: skip
        except Exception as e:  # a cuBLAS or launch error: the fused kernel from now on
            warnings.warn(f"GPU encoder: attention on cuBLAS GEMMs failed ({e}); using the fused kernel", stacklevel=2)
            self._gemm_failed = True
            return False
        self.attention_path = f"gemm-{mode}"
        return True

    def _key_bias_weights(self, w_qkv, wq: Weight, wk: Weight, bq: Weight, n_head: int, scale: float):
        """`encoder_attention.key_bias_weights` of this layer on the device (float16 [n_head, d]), made once
        from W_k's rows of the stacked GEMM matrix `w_qkv` and b_q (cached on the weights)."""
        from embedkit.kernels.cuda.encoder_attention import key_bias_weights

        def make(ws):
            d = wk.data.n_rows
            w_k = w_qkv[d : 2 * d].copy_to_host(stream=self.stream)
            b_q = bq.data.copy_to_host(stream=self.stream)
            self.stream.synchronize()
            dev = self._empty((n_head, w_k.shape[1]), np.float16)
            dev.copy_to_device(key_bias_weights(w_k, b_q, n_head, scale), stream=self.stream)
            return dev

        return self._cached([wq, wk, bq], f"key_bias:{n_head}:{scale!r}", make)

    def attention_batch(self, q: Array, k: Array, v: Array, mask: np.ndarray, scale: float) -> Array:
        """Padded bidirectional attention in float32 (the CUDA backend's kernel)."""
        q, k, v = (self.base.view(self._f32(a), a.shape) if isinstance(a, _Act) else a for a in (q, k, v))
        return self.base.attention_batch(q, k, v, mask, scale)

    def pooled(self, x: Array, mask: np.ndarray, method: str) -> np.ndarray:
        """Pool [b*t, d] hidden states per sequence on the GPU; host float32 [b, d]."""
        from embedkit.kernels.pooling import POOLINGS

        if method not in POOLINGS:
            raise InputError(f"pooling {method!r}: expected one of {', '.join(POOLINGS)}")
        m = np.asarray(mask)
        if np.any(m.sum(axis=1) < 1):
            raise InputError("pooling: every text needs at least one token")
        b, t = m.shape
        h = self._f32(x)
        d = h.shape[h.ndim - 1]
        out = self._empty((b, d))
        mode = self._pooling.POOLING_MODES.get(method, self._pooling.CLS)  # "none": the first token
        self._pooling.pool(h.reshape(b, t, d), self._mask(mask), mode, out, self.stream)
        return self.base.to_host(out)


_ENCODERS: dict[tuple[int, str], CUDAEncoderBackend] = {}


def encoder_backend(device: int = 0) -> Backend:
    """The process-wide encoder backend of `device` for the precision EMBEDKIT_GPU_PRECISION asks for.

    It wraps the CUDA backend without decode graphs (an encoder batch is never a decode step)."""
    from embedkit.backend.cuda import cuda_backend

    precision = gpu_precision()
    key = (device, precision)
    be = _ENCODERS.get(key)
    if be is None:
        base = cuda_backend(device, graphs=False)
        if base._cp is None and not base._sim:  # no cuBLAS: the CUDA backend's own path
            return base
        be = _ENCODERS[key] = CUDAEncoderBackend(base, precision)
    return be
