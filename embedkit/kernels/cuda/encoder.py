"""Kernels of the GPU encoder path (BERT-style embeddings): GEMMs on tensor cores, fused attention,
bias + activation, and residual + LayerNorm, over activations in the GEMM's dtype.

Activations between the GEMMs live in one "low" dtype, float16 by default (float32 when the precision
is float32): a GEMM writes its product in that dtype with no bias, and the kernel that reads it next
adds the bias in float32 (the attention adds the Q/K/V biases as it loads them, the residual +
LayerNorm kernel adds the output projection's, `bias_act` the feed-forward's with its GELU). Every
kernel computes in float32; only loads and stores are in the low dtype.

`attention` is flash-style: no [t, t] score matrix ever reaches device memory. A block takes one
(sequence, head) and up to 128 queries, a thread per query holding its query and its output row in
registers; the keys and values go through shared memory `KEY_TILE` at a time, scored with an online
softmax (one exp per key; the running output is rescaled once per tile). Keys whose mask is 0 get no
weight, padded query rows come back as zeros, and key tiles past a sequence's last real token are
skipped, so a length-sorted batch of short texts costs what its tokens cost.
"""

from __future__ import annotations

import contextlib
import math
from functools import cache

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import f32_to_half_bits, half_bits_to_f32, warp_sum
from embedkit.kernels.cuda.launch import fast

KEY_TILE = 32  # keys per shared-memory tile in the attention
MAX_QUERY_BLOCK = 128  # queries (threads) per attention block
ATTENTION_HEAD_DIMS = (16, 32, 64)  # head widths with a compiled attention (registers: 2 x head_dim a thread)
NORM_WARPS = 4  # rows (one warp each) per block of the residual + LayerNorm kernel
ACT_NONE, ACT_GELU_ERF = 0, 1
THREADS = 256
THREADS4 = 128  # threads per block of the four-column bias + activation kernel
ROW_BLOCKS4 = 132 * 16  # its blocks in all (rows split over y): about 16 of 128 threads per H100 SM
VECTOR_BIAS_ACT = True  # float16 bias + activation four columns a thread (False: one, for comparison)
_LOW16 = np.uint64(0xFFFF)
_SHIFT16, _SHIFT32, _SHIFT48 = np.uint64(16), np.uint64(32), np.uint64(48)

_INV_SQRT2 = np.float32(0.7071067811865476)
_NEG_INF = np.float32(-np.inf)

_CUDA_R_32F = 0
_CUDA_R_16F = 2
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT = -1
_CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99
_OP_N, _OP_T = 0, 1
_ONE = np.array(1.0, dtype=np.float32)
_ZERO = np.array(0.0, dtype=np.float32)


def _sim() -> bool:
    from numba.cuda import config

    return bool(config.ENABLE_CUDASIM)


# -- GEMM ------------------------------------------------------------------------------------------


def gemm(x, w, y, stream=None) -> None:
    """y [n, rows] = x [n, k] @ w [rows, k]^T with float32 accumulation (cublasGemmEx) on the CuPy
    `stream` (None: CuPy's current stream).

    x and w are both float16 (tensor cores) or both float32 (no TF32: cuBLAS's default math);
    y is float16 or float32. Device arrays in C order. Under the simulator, numpy does the product.
    CuPy's cuBLAS wrappers point the handle at CuPy's *current* stream before each call (a
    `cublas.setStream` of ours would be overridden), so the call runs inside `with stream:`."""
    n, k = x.shape
    rows = w.shape[0]
    if _sim():
        prod = x.copy_to_host().astype(np.float32) @ w.copy_to_host().astype(np.float32).T
        y.copy_to_device(prod.astype(y.dtype))
        return
    import cupy
    from cupy_backends.cuda.libs import cublas

    types = {np.dtype(np.float16): _CUDA_R_16F, np.dtype(np.float32): _CUDA_R_32F}
    tx, ty = types[np.dtype(x.dtype)], types[np.dtype(y.dtype)]
    algo = _CUBLAS_GEMM_DEFAULT_TENSOR_OP if tx == _CUDA_R_16F else _CUBLAS_GEMM_DEFAULT
    handle = cupy.cuda.device.get_cublas_handle()
    with stream if stream is not None else contextlib.nullcontext():
        cublas.setStream(handle, cupy.cuda.get_current_stream().ptr)
        # column-major view: Y^T (rows x n) = W (k x rows)^T . X^T (k x n)
        cublas.gemmEx(
            handle, _OP_T, _OP_N, rows, n, k, _ONE.ctypes.data,
            w.__cuda_array_interface__["data"][0], tx, k,
            x.__cuda_array_interface__["data"][0], tx, k,
            _ZERO.ctypes.data, y.__cuda_array_interface__["data"][0], ty, rows,
            _CUBLAS_COMPUTE_32F, algo,
        )  # fmt: skip


# -- bias + activation -----------------------------------------------------------------------------


@cuda.jit
def bias_act_kernel(x, bias, has_bias, act, out):
    """out[r, c] = act(x[r, c] + bias[c]) on [n, f] arrays (any float dtypes); rows grid-strided over y
    (2-D indexing: no 64-bit division per element)."""
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if c >= x.shape[1]:
        return
    bc = np.float32(bias[c]) if has_bias else np.float32(0.0)
    for r in range(cuda.blockIdx.y, x.shape[0], cuda.gridDim.y):
        v = np.float32(x[r, c]) + bc
        if act == ACT_GELU_ERF:
            v = np.float32(0.5) * v * (np.float32(1.0) + math.erf(v * _INV_SQRT2))
        out[r, c] = v


@cuda.jit(device=True, inline=True)
def _act4(w, b0, b1, b2, b3, act):
    """act(h + b) of the four float16 packed in the uint64 `w` (lowest bits first), packed back the same way."""
    v0 = half_bits_to_f32(w & _LOW16) + b0
    v1 = half_bits_to_f32((w >> _SHIFT16) & _LOW16) + b1
    v2 = half_bits_to_f32((w >> _SHIFT32) & _LOW16) + b2
    v3 = half_bits_to_f32((w >> _SHIFT48) & _LOW16) + b3
    if act == ACT_GELU_ERF:
        v0 = np.float32(0.5) * v0 * (np.float32(1.0) + math.erf(v0 * _INV_SQRT2))
        v1 = np.float32(0.5) * v1 * (np.float32(1.0) + math.erf(v1 * _INV_SQRT2))
        v2 = np.float32(0.5) * v2 * (np.float32(1.0) + math.erf(v2 * _INV_SQRT2))
        v3 = np.float32(0.5) * v3 * (np.float32(1.0) + math.erf(v3 * _INV_SQRT2))
    return (
        np.uint64(f32_to_half_bits(v0))
        | (np.uint64(f32_to_half_bits(v1)) << _SHIFT16)
        | (np.uint64(f32_to_half_bits(v2)) << _SHIFT32)
        | (np.uint64(f32_to_half_bits(v3)) << _SHIFT48)
    )


@cuda.jit
def bias_act4_kernel(x4, bias, has_bias, act, out4):
    """`bias_act_kernel` on float16 [n, f] seen as uint64 [n, f / 4]: a thread takes four columns (one 8-byte
    load and store per row), rows grid-strided over y."""
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if c >= x4.shape[1]:
        return
    b0 = np.float32(bias[4 * c]) if has_bias else np.float32(0.0)
    b1 = np.float32(bias[4 * c + 1]) if has_bias else np.float32(0.0)
    b2 = np.float32(bias[4 * c + 2]) if has_bias else np.float32(0.0)
    b3 = np.float32(bias[4 * c + 3]) if has_bias else np.float32(0.0)
    for r in range(cuda.blockIdx.y, x4.shape[0], cuda.gridDim.y):
        out4[r, c] = _act4(x4[r, c], b0, b1, b2, b3, act)


def _packs4(x, out) -> bool:
    """Whether `bias_act` can take four float16 a thread: both float16, C order, columns a multiple of 4."""
    f16 = np.dtype(np.float16)
    return (
        x.dtype == f16 and out.dtype == f16 and x.shape[1] % 4 == 0
        and x.is_c_contiguous() and out.is_c_contiguous()
    )  # fmt: skip


def bias_act(x, bias, act: int, out, stream=0, kernel4=None) -> None:
    """out [n, f] = act(x [n, f] + bias [f]) (bias None: none); act ACT_NONE or ACT_GELU_ERF.

    float16 in and out with f % 4 == 0 (the encoder's feed-forward): four columns a thread (`bias_act4_kernel`,
    or `kernel4`, a variant with its parameters and grid kept for comparison in benchmarks/kernels/);
    otherwise one a thread. Either may run in place (out is x)."""
    n, f = x.shape
    if VECTOR_BIAS_ACT and _packs4(x, out):
        cols = f // 4
        col_blocks = max(1, math.ceil(cols / THREADS4))
        rows = max(1, min(n, ROW_BLOCKS4 // col_blocks))
        b = bias if bias is not None else x.reshape(n * f)  # never read
        kern = kernel4 or bias_act4_kernel
        fast(kern)[(col_blocks, rows), THREADS4, stream](
            x.view(np.uint64), b, bias is not None, np.int32(act), out.view(np.uint64)
        )
        return
    col_blocks = max(1, math.ceil(f / THREADS))
    rows = max(1, min(n, max(1, 132 * 32 // col_blocks) * 4))
    b = bias if bias is not None else x.reshape(n * f)
    fast(bias_act_kernel)[(col_blocks, rows), THREADS, stream](x, b, bias is not None, np.int32(act), out)


# -- residual + LayerNorm --------------------------------------------------------------------------


@cache
def _add_norm_kernel(per: int):
    @cuda.jit
    def kern(a, bias, has_bias, res, has_res, w, b, eps, out, has_out, out_lo):
        """out_lo[r] = LayerNorm(a[r] + bias + res[r]) * w + b (res in any float dtype), also written to out
        if has_out; a warp per row."""
        n, d = a.shape
        row = (cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x) // 32
        lane = cuda.threadIdx.x % 32
        r = min(row, n - 1)  # every thread takes part in the reductions (no early return)
        vals = cuda.local.array(per, dtype=np.float32)
        s = np.float32(0.0)
        for k in range(per):
            i = lane + 32 * k
            ic = min(i, d - 1)
            v = np.float32(a[r, ic])
            if has_bias:
                v += bias[ic]
            if has_res:
                v += np.float32(res[r, ic])
            v = v if i < d else np.float32(0.0)
            vals[k] = v
            s += v
        mean = warp_sum(s) / np.float32(d)
        ss = np.float32(0.0)
        for k in range(per):
            dv = vals[k] - mean if lane + 32 * k < d else np.float32(0.0)
            ss += dv * dv
        inv = np.float32(1.0) / math.sqrt(warp_sum(ss) / np.float32(d) + eps)
        if row < n:
            for k in range(per):
                i = lane + 32 * k
                if i < d:
                    y = (vals[k] - mean) * inv * w[i] + b[i]
                    if has_out:
                        out[r, i] = y
                    out_lo[r, i] = y

    return kern


def add_norm(a, bias, res, w, b, eps: float, out, out_lo, stream=0) -> None:
    """out, out_lo [n, d] = LayerNorm(a + bias + res) * w + b (bias / res / out may be None; res float32 or
    the low dtype)."""
    n, d = a.shape
    per = max(1, math.ceil(d / 32))
    threads = NORM_WARPS * 32
    fast(_add_norm_kernel(per))[max(1, math.ceil(n / NORM_WARPS)), threads, stream](
        a, bias if bias is not None else w, bias is not None, res if res is not None else a, res is not None,
        w, b, np.float32(eps), out if out is not None else out_lo, out is not None, out_lo,
    )  # fmt: skip


# -- fused attention -------------------------------------------------------------------------------


@cache
def _attention_kernel(hd: int):
    @cuda.jit
    def kern(qkv, bias, mask, n_head, scale, out):
        """qkv [b*T, 3*d] (Q | K | V, heads inside each), bias float32 [3*d], mask int32 [b, T]
        -> out [b*T, d]: softmax(q k^T * scale over unmasked keys) v per (sequence, head)."""
        seq = cuda.blockIdx.x
        h = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        bq = cuda.blockDim.x
        T = mask.shape[1]
        d = n_head * hd
        ks = cuda.shared.array((KEY_TILE, hd), dtype=np.float32)
        vs = cuda.shared.array((KEY_TILE, hd), dtype=np.float32)
        ms = cuda.shared.array(KEY_TILE, dtype=np.int32)
        kend = cuda.shared.array(1, dtype=np.int32)
        if tid == 0:
            kend[0] = 0
        cuda.syncthreads()
        for j in range(tid, T, bq):
            if mask[seq, j] != 0:
                cuda.atomic.max(kend, 0, j + 1)
        cuda.syncthreads()
        n_keys = kend[0]
        t = cuda.blockIdx.z * bq + tid
        tc = min(t, T - 1)
        active = t < T and mask[seq, tc] != 0
        row0 = seq * T
        qo = h * hd
        q = cuda.local.array(hd, dtype=np.float32)
        acc = cuda.local.array(hd, dtype=np.float32)
        sc = cuda.local.array(KEY_TILE, dtype=np.float32)
        for c in range(hd):
            q[c] = (np.float32(qkv[row0 + tc, qo + c]) + bias[qo + c]) * scale
            acc[c] = np.float32(0.0)
        m = _NEG_INF
        l = np.float32(0.0)
        for j0 in range(0, n_keys, KEY_TILE):
            for e in range(tid, KEY_TILE * hd, bq):
                jj = e // hd
                c = e % hd
                j = min(j0 + jj, T - 1)
                ks[jj, c] = np.float32(qkv[row0 + j, d + qo + c]) + bias[d + qo + c]
                vs[jj, c] = np.float32(qkv[row0 + j, 2 * d + qo + c]) + bias[2 * d + qo + c]
            for jj in range(tid, KEY_TILE, bq):
                j = j0 + jj
                ms[jj] = mask[seq, j] if j < n_keys else 0
            cuda.syncthreads()
            if active:
                tmax = _NEG_INF
                for jj in range(KEY_TILE):
                    s = _NEG_INF
                    if ms[jj] != 0:
                        s = np.float32(0.0)
                        for c in range(hd):
                            s += q[c] * ks[jj, c]
                    sc[jj] = s
                    tmax = max(tmax, s)
                if tmax > _NEG_INF:
                    m_new = max(m, tmax)
                    corr = math.exp(m - m_new)
                    l *= corr
                    for c in range(hd):
                        acc[c] *= corr
                    for jj in range(KEY_TILE):
                        if ms[jj] != 0:
                            p = math.exp(sc[jj] - m_new)
                            l += p
                            for c in range(hd):
                                acc[c] += p * vs[jj, c]
                    m = m_new
            cuda.syncthreads()
        if t < T:
            inv = np.float32(1.0) / l if active and l > 0 else np.float32(0.0)
            for c in range(hd):
                out[row0 + t, qo + c] = acc[c] * inv

    return kern


def attention_ok(head_dim: int) -> bool:
    """Whether `attention` has a kernel for this head width."""
    return head_dim in ATTENTION_HEAD_DIMS


def attention(qkv, bias, mask, n_head: int, scale: float, out, stream=0) -> None:
    """out [b*t, d] = bidirectional attention of the fused projections qkv [b*t, 3*d] (+ bias float32
    [3*d]) over mask int32 [b, t] (1 = token); padded query rows come back as zeros."""
    b, t = mask.shape
    d = out.shape[1]
    hd = d // n_head
    if not attention_ok(hd):
        raise ValueError(f"attention: head_dim {hd} has no kernel (have {ATTENTION_HEAD_DIMS})")
    bq = min(MAX_QUERY_BLOCK, max(32, 32 * math.ceil(t / 32)))
    grid = (b, n_head, math.ceil(t / bq))
    fast(_attention_kernel(hd))[grid, bq, stream](qkv, bias, mask, np.int32(n_head), np.float32(scale), out)
