"""Encoder attention on tensor cores: two batched cuBLAS GEMMs over every (sequence, head) around one softmax.

For float16 activations (the encoder's default precision) and right-padded batches (sequence `s` has its
`lengths[s]` tokens first). The fused projections qkv [b*T, 3*d] (Q | K | V, heads inside each) are read in
place *without their biases*, which are folded in exactly instead of costing a pass over qkv:
- K's bias adds q_i . b_k to every score of query i, the same for every key: the softmax cancels it;
- Q's bias adds b_q . k_j to every score of key j: `key_bias` [n_head, b*T] float32 holds
  scale * x_j . (W_k,h^T b_q,h) per head h and token j, one small GEMM of the layer input x against
  `key_bias_weights` (the constant b_q . b_k cancels as well);
- V's bias adds b_v to the output row of every real query (its probabilities sum to 1): the softmax writes
  b_v into that row of `out` (zeros for padded queries) and the second GEMM adds onto it (beta = 1).

Pairs (sequence, head) are numbered p = seq * n_head + h. The first GEMM writes the scores
S_p = scale * Q_p K_p^T in `SCORE_DTYPE` (float32 accumulation) to a scratch [pairs, T, Tp] (Tp = T rounded up
to 8, so every row starts 16-byte aligned); the softmax kernel (a warp per row) adds the key offsets, masks
keys past the sequence's length and writes the probabilities P in float16 to a second scratch of that shape
(padded query rows all 0); the second GEMM writes O_p = P_p V_p straight into head h's columns of
out [b*T, d]. Sequences go through in chunks whose scores and probabilities fit `SCORE_CHUNK_BYTES` (at least
`MIN_CHUNK_SEQUENCES` a chunk), so they can stay in L2 between the three steps.

`mode` "batched" (default) makes each GEMM one cublasGemmBatchedEx over every pair of a chunk (device arrays
of pointers filled by a kernel; CuPy does not wrap that call, so it goes through ctypes into the libcublas
CuPy links); "strided" makes them one cublasGemmStridedBatchedEx per head (CuPy's wrapper). Under the CUDA
simulator numpy does both GEMMs from the same pointers, so the layout is checked without a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from functools import cache

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import warp_max, warp_sum
from embedkit.kernels.cuda.launch import fast

_CUDA_R_32F = 0
_CUDA_R_16F = 2
_TYPES = {np.dtype(np.float16): _CUDA_R_16F, np.dtype(np.float32): _CUDA_R_32F}
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99
_OP_N, _OP_T = 0, 1
_ONE = np.array(1.0, dtype=np.float32)
_ZERO = np.array(0.0, dtype=np.float32)
ROWS_PER_BLOCK = 4  # softmax: one warp per score row
MAX_T = 512  # longest padded sequence the softmax holds in registers (16 scores a lane)
SCORE_CHUNK_BYTES = 16 << 20  # scores of one chunk of sequences (H100 L2: 50 MB)
MIN_CHUNK_SEQUENCES = 32  # but never fewer sequences a chunk than this (long texts: launches, not L2, bound)
MAX_SCORE_BYTES = 1 << 30  # scratch bound (a single sequence's scores above it: the fused kernel)
MODES = ("batched", "strided")
# the scores' dtype: float32 keeps MiniLM's large logits (|s| ~ 60) exact enough for cosine >= 0.9999 to float32;
# float16 halves their traffic (probabilities are float16 either way)
SCORE_DTYPE = np.float32


def padded_t(t: int) -> int:
    """The row stride of the score scratch: t rounded up to 8."""
    return 8 * math.ceil(t / 8)


def gemm_ok(b: int, t: int, n_head: int) -> bool:
    """Whether this batch shape runs here: t within MAX_T and one sequence's scores within MAX_SCORE_BYTES."""
    return 1 <= t <= MAX_T and b >= 1 and n_head * t * padded_t(t) * 2 <= MAX_SCORE_BYTES


def key_bias_weights(wk: np.ndarray, bq: np.ndarray, n_head: int, scale: float) -> np.ndarray:
    """U [n_head, d] float16 with U[h] = scale * W_k,h^T b_q,h (W_k [d, d] as stored, rows = outputs;
    b_q [d]): x_j . U[h] is the score offset of token j as a key of head h (see the module docstring)."""
    d = wk.shape[0]
    hd = d // n_head
    w = np.asarray(wk, np.float64).reshape(n_head, hd, wk.shape[1])
    u = np.einsum("hr,hrc->hc", np.asarray(bq, np.float64).reshape(n_head, hd), w) * scale
    return u.astype(np.float16)


@cuda.jit
def pointers_kernel(ptrs, qkv0, s0, s_item, p0, out0, n_head, t, d, tp, chunk_pairs):
    """ptrs int64 [6, pairs] = byte addresses of K, Q, S, V, O, P of pair p = seq * n_head + h (S, of s_item
    bytes an element, and P in scratches of chunk_pairs pairs, reused by every chunk)."""
    p = cuda.grid(1)
    if p < ptrs.shape[1]:
        seq = p // n_head
        h = p - seq * n_head
        hd = d // n_head
        q = qkv0 + 2 * (seq * t * 3 * d + h * hd)
        ptrs[0, p] = q + 2 * d
        ptrs[1, p] = q
        ptrs[2, p] = s0 + s_item * (p % chunk_pairs) * t * tp
        ptrs[3, p] = q + 4 * d
        ptrs[4, p] = out0 + 2 * (seq * t * d + h * hd)
        ptrs[5, p] = p0 + 2 * (p % chunk_pairs) * t * tp


@cache
def _softmax_kernel(per: int):
    @cuda.jit
    def kern(s, p, t, pair0, n_head, lengths, key_bias, v_bias, out):
        """Row r of p [pairs * t, Tp] float16 = the probabilities of row r of the scores s [pairs * t, Tp]
        (query i = r % t of pair pair0 + r // t) over keys j < lengths[seq] after adding key_bias[h, seq * t + j]
        (0 past the length, all 0 for a padded query); b_v's head slice (0 for a padded query) goes into that
        query's out row."""
        lane = cuda.threadIdx.x % 32
        row = cuda.blockIdx.x * (cuda.blockDim.x // 32) + cuda.threadIdx.x // 32
        rows = s.shape[0]
        r = min(row, rows - 1)  # every lane takes part in the warp reductions
        pair = pair0 + r // t
        i = r - (r // t) * t
        seq = pair // n_head
        h = pair - seq * n_head
        n_keys = lengths[seq]
        live = row < rows and i < n_keys
        tok0 = seq * t
        vals = cuda.local.array(per, dtype=np.float32)
        m = np.float32(-np.inf)
        for k in range(per):
            j = lane + 32 * k
            v = np.float32(-np.inf)
            if j < n_keys:
                v = np.float32(s[r, j]) + key_bias[h, tok0 + j]
            vals[k] = v
            m = max(m, v)
        m = warp_max(m)
        total = np.float32(0.0)
        for k in range(per):
            e = np.float32(0.0)
            if lane + 32 * k < n_keys:
                e = math.exp(vals[k] - m)
            vals[k] = e
            total += e
        total = warp_sum(total)
        inv = np.float32(1.0) / total if live and total > 0 else np.float32(0.0)
        if row < rows:
            for k in range(per):
                j = lane + 32 * k
                if j < t:
                    p[r, j] = vals[k] * inv
            hd = out.shape[1] // n_head
            for c in range(lane, hd, 32):
                out[tok0 + i, h * hd + c] = v_bias[h * hd + c] if live else np.float32(0.0)

    return kern


def _sim() -> bool:
    from numba.cuda import config

    return bool(config.ENABLE_CUDASIM)


def _addr(a) -> int:
    """Device address of array `a` (under the simulator: of the numpy array standing in for it)."""
    if _sim():
        return int(a._ary.ctypes.data)
    return int(a.__cuda_array_interface__["data"][0])


# -- cuBLAS ------------------------------------------------------------------------------------------------


@cache
def _gemm_batched_ex():
    """cublasGemmBatchedEx by ctypes, looked up through CuPy's cuBLAS extension module: dlsym on its handle
    searches the libraries it links (libcublas.so.N), so this is the very library CuPy's handle belongs to
    (not another copy a second package, such as torch, may have loaded)."""
    from cupy_backends.cuda.libs import cublas

    fn = ctypes.CDLL(cublas.__file__).cublasGemmBatchedEx
    p, i = ctypes.c_void_p, ctypes.c_int
    fn.argtypes = [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i, i]
    fn.restype = ctypes.c_int
    return fn


@cache
def batched_available() -> bool:
    """Whether the "batched" mode can call cublasGemmBatchedEx (always under the simulator)."""
    if _sim():
        return True
    try:
        import cupy

        cupy.cuda.device.get_cublas_handle()  # loads libcublas
        _gemm_batched_ex()
        return True
    except Exception:
        return False


def _sim_matrix(addr: int, rows: int, cols: int, ld: int, dtype=np.float16) -> np.ndarray:
    """A writable numpy view of the column-major matrix rows x cols (leading dimension ld) at addr."""
    item = np.dtype(dtype).itemsize
    span = ld * (cols - 1) + rows
    flat = np.frombuffer((ctypes.c_char * (span * item)).from_address(addr), dtype=dtype)
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (item, item * ld))


def _sim_gemms(ta, tb, m, n, k, alpha, a_ptrs, lda, b_ptrs, ldb, beta, c_ptrs, ldc, c_dtype) -> None:
    """numpy's cuBLAS GEMMs (float16 A and B, C of c_dtype, float32 arithmetic) at the given addresses."""
    for pa, pb, pc in zip(a_ptrs, b_ptrs, c_ptrs, strict=True):
        a = _sim_matrix(int(pa), *((k, m) if ta == _OP_T else (m, k)), lda).astype(np.float32)
        b = _sim_matrix(int(pb), *((n, k) if tb == _OP_T else (k, n)), ldb).astype(np.float32)
        c = _sim_matrix(int(pc), m, n, ldc, c_dtype)
        prod = np.float32(alpha) * ((a.T if ta == _OP_T else a) @ (b.T if tb == _OP_T else b))
        if beta != 0:
            prod += np.float32(beta) * c.astype(np.float32)
        c[...] = prod.astype(c_dtype)


class _Cublas:
    """The two kinds of batched GEMM on one CuPy stream (None: CuPy's current one), or numpy's under the
    simulator; A and B float16, C float16 or float32 (c_dtype), float32 accumulation, alpha and beta host float32."""

    def __init__(self, cp_stream) -> None:
        self.sim = _sim()
        self.stream = cp_stream
        if not self.sim:
            import cupy
            from cupy_backends.cuda.libs import cublas

            self.cublas = cublas
            self.cupy = cupy
            self.handle = cupy.cuda.device.get_cublas_handle()

    def _on_stream(self):
        return self.stream if self.stream is not None else contextlib.nullcontext()

    def pointers(self, ta, tb, m, n, k, alpha, a_arr, lda, b_arr, ldb, beta, c_arr, ldc, c_dtype, count, ptrs):
        """One GEMM per pair from device pointer arrays: rows a_arr, b_arr, c_arr of `ptrs` [6, pairs] from
        column `count[0]`, `count[1]` of them."""
        first, num = count
        if self.sim:
            host = ptrs.copy_to_host()
            sl = slice(first, first + num)
            _sim_gemms(ta, tb, m, n, k, alpha, host[a_arr, sl], lda, host[b_arr, sl], ldb, beta, host[c_arr, sl], ldc,
                       c_dtype)  # fmt: skip
            return
        base, row = _addr(ptrs), 8 * ptrs.shape[1]
        al, be = np.array(alpha, np.float32), np.array(beta, np.float32)
        with self._on_stream():
            self.cublas.setStream(self.handle, self.cupy.cuda.get_current_stream().ptr)
            status = _gemm_batched_ex()(
                self.handle, ta, tb, m, n, k, al.ctypes.data,
                base + a_arr * row + 8 * first, _CUDA_R_16F, lda,
                base + b_arr * row + 8 * first, _CUDA_R_16F, ldb,
                be.ctypes.data, base + c_arr * row + 8 * first, _TYPES[np.dtype(c_dtype)], ldc,
                num, _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )  # fmt: skip
        if status != 0:
            raise RuntimeError(f"cublasGemmBatchedEx failed with status {status}")

    def strided(self, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, c_dtype, num) -> None:
        """One GEMM per batch entry i from a + 2*i*sa, b + 2*i*sb, c + item*i*sc (strides in elements)."""
        if self.sim:
            idx = np.arange(num)
            item = np.dtype(c_dtype).itemsize
            _sim_gemms(ta, tb, m, n, k, alpha, a + 2 * sa * idx, lda, b + 2 * sb * idx, ldb, beta,
                       c + item * sc * idx, ldc, c_dtype)  # fmt: skip
            return
        al, be = np.array(alpha, np.float32), np.array(beta, np.float32)
        with self._on_stream():
            self.cublas.setStream(self.handle, self.cupy.cuda.get_current_stream().ptr)
            self.cublas.gemmStridedBatchedEx(
                self.handle, ta, tb, m, n, k, al.ctypes.data, a, _CUDA_R_16F, lda, sa, b, _CUDA_R_16F, ldb, sb,
                be.ctypes.data, c, _TYPES[np.dtype(c_dtype)], ldc, sc, num, _CUBLAS_COMPUTE_32F,
                _CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )  # fmt: skip


# -- attention -------------------------------------------------------------------------------------------


def chunk_sequences(b: int, t: int, n_head: int) -> int:
    """Sequences per chunk: as many as keep the chunk's scores and probabilities within SCORE_CHUNK_BYTES, at
    least MIN_CHUNK_SEQUENCES (and 1), at most b."""
    fit = SCORE_CHUNK_BYTES // (n_head * t * padded_t(t) * (2 + np.dtype(SCORE_DTYPE).itemsize))
    return max(1, min(b, max(fit, MIN_CHUNK_SEQUENCES)))


def attention_gemm(qkv, key_bias, v_bias, lengths, n_head: int, scale: float, out, empty, stream, cp_stream,
                   mode: str = "batched") -> None:  # fmt: skip
    """out [b*T, d] float16 = bidirectional attention of qkv [b*T, 3*d] float16 (no biases in) over
    right-padded sequences of `lengths` int32 [b] (device), with the biases folded as the module docstring
    says: key_bias float32 [n_head, b*T] (device), v_bias float32 [d] (device). Padded query rows come out 0.
    `empty(shape, dtype)` allocates scratch; numba launches go to `stream`, cuBLAS to the CuPy `cp_stream`
    (the same CUDA stream, so everything stays in order)."""
    if mode not in MODES:
        raise ValueError(f"attention_gemm: mode {mode!r}: expected one of {', '.join(MODES)}")
    b = lengths.shape[0]
    t = qkv.shape[0] // b
    d = out.shape[1]
    hd = d // n_head
    tp = padded_t(t)
    if not gemm_ok(b, t, n_head):
        raise ValueError(f"attention_gemm: {b} sequences of {t} tokens do not fit (T <= {MAX_T})")
    per = 1 << max(0, math.ceil(math.log2(math.ceil(t / 32))))
    chunk = chunk_sequences(b, t, n_head)
    chunk_pairs = chunk * n_head
    sd = np.dtype(SCORE_DTYPE)
    si = sd.itemsize
    s = empty((chunk_pairs * t, tp), sd)  # scores
    pr = empty((chunk_pairs * t, tp), np.float16)  # probabilities
    blas = _Cublas(cp_stream)
    base, s0, p0, o0, ld = _addr(qkv), _addr(s), _addr(pr), _addr(out), 3 * d
    ptrs = None
    if mode == "batched":
        ptrs = empty((6, b * n_head), np.int64)
        fast(pointers_kernel)[math.ceil(b * n_head / 128), 128, stream](
            ptrs, np.int64(base), np.int64(s0), np.int64(si), np.int64(p0), np.int64(o0), np.int64(n_head),
            np.int64(t), np.int64(d), np.int64(tp), np.int64(chunk_pairs),
        )  # fmt: skip
    softmax = fast(_softmax_kernel(per))
    alpha = np.float32(scale)
    for seq0 in range(0, b, chunk):
        nb = min(chunk, b - seq0)
        pairs, pair0 = nb * n_head, seq0 * n_head
        # S_p^T (keys x queries, column-major, ld Tp) = K_p (hd x T)^T . Q_p (hd x T)
        if ptrs is not None:
            blas.pointers(_OP_T, _OP_N, t, t, hd, alpha, 0, ld, 1, ld, 0.0, 2, tp, sd, (pair0, pairs), ptrs)
        else:
            for h in range(n_head):
                q = base + 2 * (seq0 * t * ld + h * hd)
                blas.strided(_OP_T, _OP_N, t, t, hd, alpha, q + 2 * d, ld, t * ld, q, ld, t * ld, 0.0,
                             s0 + si * h * t * tp, tp, n_head * t * tp, sd, nb)  # fmt: skip
        blocks = math.ceil(pairs * t / ROWS_PER_BLOCK)
        softmax[blocks, ROWS_PER_BLOCK * 32, stream](
            s[: pairs * t], pr[: pairs * t], np.int64(t), np.int64(pair0), np.int64(n_head), lengths, key_bias,
            v_bias, out,
        )  # fmt: skip
        # O_p^T (hd x queries) = V_p (hd x keys) . P_p^T (keys x queries), added onto b_v in out
        if ptrs is not None:
            blas.pointers(_OP_N, _OP_N, hd, t, t, 1.0, 3, ld, 5, tp, 1.0, 4, d, np.float16, (pair0, pairs), ptrs)
        else:
            for h in range(n_head):
                v = base + 2 * (seq0 * t * ld + 2 * d + h * hd)
                blas.strided(_OP_N, _OP_N, hd, t, t, 1.0, v, ld, t * ld, p0 + 2 * h * t * tp, tp, n_head * t * tp,
                             1.0, o0 + 2 * (seq0 * t * d + h * hd), d, t * d, np.float16, nb)  # fmt: skip
