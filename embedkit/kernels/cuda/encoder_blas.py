"""Encoder attention on tensor cores: two batched cuBLAS GEMMs around a masked softmax.

For a padded batch of b sequences of T tokens with the fused projections qkv [b*T, 3*d] (float16, biases
added in place first), every (head, sequence) pair is one matrix product of a batched GEMM:
S = scale * Q K^T into a float16 score buffer [heads, b, T, T], a softmax over each score row (keys whose
mask is 0 get no weight; a padded query row gets all-zero weights, so its output is zero as in the flash
kernel), then O = P V straight into the output columns of the head. The GEMMs run on the tensor cores,
which the flash kernel of `encoder.attention` (float32 FMAs through shared memory) cannot use; the score
buffer costs 2 * heads * b * T^2 bytes of traffic each way, small next to those FMAs for T up to a few
hundred (`blas_ok` caps it).

cuBLAS takes the (head, sequence) matrices through device arrays of pointers (`gemmBatchedEx`), written
by one small kernel per call from the buffers' base addresses.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import warp_max, warp_sum
from embedkit.kernels.cuda.launch import fast

MAX_SCORE_BYTES = 1 << 30  # score buffer limit (float16 [heads, b, T, T]); larger batches use the flash kernel
MAX_TOKENS = 1024  # longest sequence the softmax kernel's registers hold (32 lanes x 32)
SOFTMAX_WARPS = 4

_CUDA_R_16F = 2
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99
_OP_N, _OP_T = 0, 1
_ZERO = np.array(0.0, dtype=np.float32)
_ONE = np.array(1.0, dtype=np.float32)
_NEG_INF = np.float32(-np.inf)


def blas_ok(b: int, t: int, n_head: int, dtype) -> bool:
    """Whether `attention` takes this batch (float16 activations, score buffer within its limit)."""
    return np.dtype(dtype) == np.float16 and t <= MAX_TOKENS and 2 * n_head * b * t * t <= MAX_SCORE_BYTES


@cuda.jit
def _pointers_kernel(qkv, s_buf, out, b, t, n_head, hd, d, ptrs):
    """ptrs [6, heads*b] (int64): per pair i = h*b + s, the addresses of K, Q, S (first GEMM) and V, S, O."""
    i = cuda.grid(1)
    if i >= n_head * b:
        return
    h = i // b
    s = i % b
    row = np.int64(s) * t
    e = np.int64(2)  # bytes per float16
    ptrs[0, i] = qkv + (row * 3 * d + d + h * hd) * e
    ptrs[1, i] = qkv + (row * 3 * d + h * hd) * e
    ptrs[2, i] = s_buf + np.int64(i) * t * t * e
    ptrs[3, i] = qkv + (row * 3 * d + 2 * d + h * hd) * e
    ptrs[4, i] = ptrs[2, i]
    ptrs[5, i] = out + (row * d + h * hd) * e


@cache
def _softmax_kernel(per: int):
    @cuda.jit
    def kern(s_buf, mask, b, out_rows):
        """Each score row (a warp per row) -> softmax over the keys with mask 1, in place (float16);
        rows of padded queries -> zeros."""
        n_rows = out_rows
        warp = (cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x) // 32
        lane = cuda.threadIdx.x % 32
        t = mask.shape[1]
        r = min(warp, n_rows - 1)  # every lane of every warp takes part in the reductions
        pair = r // t
        q = r % t
        seq = pair % b
        base = np.int64(r) * t
        vals = cuda.local.array(per, dtype=np.float32)
        m = _NEG_INF
        for k in range(per):
            j = lane + 32 * k
            v = _NEG_INF
            if j < t and mask[seq, j] != 0:
                v = np.float32(s_buf[base + j])
            vals[k] = v
            m = max(m, v)
        m = warp_max(m)
        tot = np.float32(0.0)
        for k in range(per):
            p = math.exp(vals[k] - m) if vals[k] > _NEG_INF else np.float32(0.0)
            vals[k] = p
            tot += p
        tot = warp_sum(tot)
        inv = np.float32(1.0) / tot if tot > 0 and mask[seq, q] != 0 else np.float32(0.0)
        if warp < n_rows:
            for k in range(per):
                j = lane + 32 * k
                if j < t:
                    s_buf[base + j] = vals[k] * inv

    return kern


def _batched(cublas, handle, transa, transb, m, n, k, alpha, a_ptrs, lda, b_ptrs, ldb, c_ptrs, ldc, count) -> None:
    cublas.gemmBatchedEx(
        handle, transa, transb, m, n, k, alpha.ctypes.data,
        a_ptrs, _CUDA_R_16F, lda, b_ptrs, _CUDA_R_16F, ldb,
        _ZERO.ctypes.data, c_ptrs, _CUDA_R_16F, ldc, count,
        _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT_TENSOR_OP,
    )  # fmt: skip


class _SimBlas:
    """Under numba's simulator: `gemmBatchedEx` in numpy over host copies of the device buffers, reading
    the pointer arrays as offsets from the buffers' base addresses (so the pointer kernel, the leading
    dimensions and the transposes are all checked on the CPU)."""

    def __init__(self, buffers) -> None:
        self.buffers = buffers  # [(base address, device array)], C contiguous float16
        self.host = [a.copy_to_host().reshape(-1) for _, a in buffers]

    def _find(self, ptr: int):
        for i, (base, a) in enumerate(self.buffers):
            if base <= ptr < base + a.nbytes:
                return i, (ptr - base) // 2
        raise ValueError(f"pointer {ptr:#x} outside every buffer")

    def gemm_batched(self, ptrs, transa, transb, m, n, k, alpha, a_row, lda, b_row, ldb, c_row, ldc) -> None:
        for pa, pb, pc in zip(ptrs[a_row], ptrs[b_row], ptrs[c_row], strict=True):
            mats = []
            for p, ld, trans, rows, cols in ((pa, lda, transa, m, k), (pb, ldb, transb, k, n)):
                i, off = self._find(int(p))
                sr, sc = (rows, cols) if not trans else (cols, rows)  # stored column-major (sr x sc)
                idx = off + np.arange(sr)[:, None] + ld * np.arange(sc)[None, :]
                stored = self.host[i][idx].astype(np.float32)
                mats.append(stored.T if trans else stored)
            prod = float(alpha) * (mats[0] @ mats[1])  # m x n, column-major into C
            i, off = self._find(int(pc))
            idx = off + np.arange(m)[:, None] + ldc * np.arange(n)[None, :]
            self.host[i][idx] = prod.astype(np.float16)

    def store(self, index: int) -> None:
        a = self.buffers[index][1]
        a.copy_to_device(self.host[index].reshape(a.shape))


def _sim() -> bool:
    from numba.cuda import config

    return bool(config.ENABLE_CUDASIM)


def attention(qkv, mask, n_head: int, scale: float, out, empty, stream, cp_stream) -> None:
    """out [b*T, d] (float16) = attention of qkv [b*T, 3*d] (float16, biases already added) over mask int32
    [b, T]; `empty(shape, dtype)` allocates device scratch, `stream` is the numba stream and `cp_stream`
    the CuPy stream of the same queue (cuBLAS runs there; None under the simulator, where numpy does)."""
    b, t = mask.shape
    d = out.shape[1]
    hd = d // n_head
    pairs = n_head * b
    s_buf = empty((pairs * t * t,), np.float16)
    ptrs = empty((6, pairs), np.int64)

    def addr(a) -> int:
        try:
            return a.__cuda_array_interface__["data"][0]
        except AttributeError:  # the simulator's arrays wrap host memory
            return a._ary.ctypes.data

    fast(_pointers_kernel)[max(1, math.ceil(pairs / 128)), 128, stream](
        np.int64(addr(qkv)), np.int64(addr(s_buf)), np.int64(addr(out)), np.int64(b), np.int64(t),
        np.int64(n_head), np.int64(hd), np.int64(d), ptrs,
    )  # fmt: skip
    alpha = np.array(scale, dtype=np.float32)
    n_rows = pairs * t
    per = max(1, math.ceil(t / 32))
    softmax = fast(_softmax_kernel(per))[max(1, math.ceil(n_rows / SOFTMAX_WARPS)), SOFTMAX_WARPS * 32, stream]
    if cp_stream is None and _sim():
        host_ptrs = ptrs.copy_to_host()
        sim = _SimBlas([(addr(qkv), qkv), (addr(s_buf), s_buf), (addr(out), out)])
        sim.gemm_batched(host_ptrs, _OP_T, _OP_N, t, t, hd, alpha, 0, 3 * d, 1, 3 * d, 2, t)
        sim.store(1)
        softmax(s_buf, mask, np.int64(b), np.int64(n_rows))
        sim.host[1] = s_buf.copy_to_host().reshape(-1)
        sim.gemm_batched(host_ptrs, _OP_N, _OP_N, hd, t, t, _ONE, 3, 3 * d, 4, t, 5, d)
        sim.store(2)
        return
    import cupy
    from cupy_backends.cuda.libs import cublas

    row_ptr = [addr(ptrs) + i * pairs * 8 for i in range(6)]
    handle = cupy.cuda.device.get_cublas_handle()
    with cp_stream:
        # column-major: S^T (keys x queries) = K (hd x keys)^T . Q (hd x queries), scaled
        _batched(cublas, handle, _OP_T, _OP_N, t, t, hd, alpha, row_ptr[0], 3 * d, row_ptr[1], 3 * d, row_ptr[2], t,
                 pairs)  # fmt: skip
    softmax(s_buf, mask, np.int64(b), np.int64(n_rows))
    with cp_stream:
        # O^T (hd x queries) = V^T (hd x keys) . P^T (keys x queries), into the head's columns of out
        _batched(cublas, handle, _OP_N, _OP_N, hd, t, t, _ONE, row_ptr[3], 3 * d, row_ptr[4], t, row_ptr[5], d, pairs)
