"""RMSNorm and LayerNorm over the last dimension: one block per row (ggml_rms_norm, ggml_norm)."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import q8_lane
from embedkit.kernels.cuda.launch import fast
from embedkit.kernels.cuda.reduce import block_sum

THREADS = 256


@cuda.jit
def rms_norm_kernel(x, w, has_w, eps, out):
    """out[r] = x[r] / sqrt(mean(x[r]^2) + eps) (* w)."""
    r = cuda.blockIdx.x
    scratch = cuda.shared.array(32, dtype=np.float32)
    n = x.shape[1]
    ss = np.float32(0.0)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        v = x[r, i]
        ss += v * v
    ss = block_sum(ss, scratch)
    inv = np.float32(1.0) / math.sqrt(ss / np.float32(n) + eps)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        v = x[r, i] * inv
        out[r, i] = v * w[i] if has_w else v


@cuda.jit
def layer_norm_kernel(x, w, b, has_w, has_b, eps, out):
    """out[r] = (x[r] - mean) / sqrt(var + eps) (* w) (+ b)."""
    r = cuda.blockIdx.x
    scratch = cuda.shared.array(32, dtype=np.float32)
    n = x.shape[1]
    s = np.float32(0.0)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        s += x[r, i]
    mean = block_sum(s, scratch) / np.float32(n)
    ss = np.float32(0.0)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        v = x[r, i] - mean
        ss += v * v
    inv = np.float32(1.0) / math.sqrt(block_sum(ss, scratch) / np.float32(n) + eps)
    for i in range(cuda.threadIdx.x, n, cuda.blockDim.x):
        v = (x[r, i] - mean) * inv
        if has_w:
            v *= w[i]
        if has_b:
            v += b[i]
        out[r, i] = v


def rms_norm(x, w, eps: float, out, stream=0) -> None:
    """x, out float32 [n, d] device; w float32 [d] or None."""
    wv = w if w is not None else x[0]
    fast(rms_norm_kernel)[x.shape[0], THREADS, stream](x, wv, w is not None, np.float32(eps), out)


def layer_norm(x, w, b, eps: float, out, stream=0) -> None:
    """x, out float32 [n, d] device; w, b float32 [d] or None."""
    fast(layer_norm_kernel)[x.shape[0], THREADS, stream](
        x,
        w if w is not None else x[0],
        b if b is not None else x[0],
        w is not None,
        b is not None,
        np.float32(eps),
        out,
    )


# -- RMSNorm fused with what the next matmul wants ------------------------------------------------
# One block per row, each thread keeps a few values in registers (one read of x). Besides
# the float32 output it can write the int8 blocks + scales the dp4a matvecs read (want_q, as
# `quant_fast.quantize_activations` computes them) and a float16 copy for the cuBLAS GEMMs (want16).

FUSED_MAX_THREADS = 1024  # threads per row (each keeps ceil(d / threads) values, rounded up to a power of 2)


@cache
def _fused_kernel(per: int):
    @cuda.jit
    def kern(x, w, has_w, eps, out, xq, xd, want_q, out16, want16):
        """out[r] = x[r] / sqrt(mean(x[r]^2) + eps) (* w); optionally int8 blocks and a float16 copy."""
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        bd = cuda.blockDim.x
        lane = tid % 32
        scratch = cuda.shared.array(32, dtype=np.float32)
        vals = cuda.local.array(per, dtype=np.float32)
        wv = cuda.local.array(per, dtype=np.float32)
        n = x.shape[1]
        ss = np.float32(0.0)
        # unconditional loads at clamped indices, so they issue together (a load under a branch
        # waits for the one before it: ~1 us each, which made a one-row norm take ~10 us)
        for k in range(per):
            i = tid + k * bd
            ic = min(i, n - 1)
            v = x[r, ic]
            wl = w[ic]  # w is a row of x when there is no weight: in bounds either way
            wv[k] = wl if has_w else np.float32(1.0)
            v = v if i < n else np.float32(0.0)
            vals[k] = v
            ss += v * v
        ss = block_sum(ss, scratch)
        inv = np.float32(1.0) / math.sqrt(ss / np.float32(n) + eps)
        for k in range(per):
            if k * bd < n:  # uniform over the block
                i = tid + k * bd
                valid = i < n
                v = vals[k] * inv * wv[k]
                if valid:
                    out[r, i] = v
                    if want16:
                        out16[r, i] = v
                else:
                    v = np.float32(0.0)
                if want_q:
                    q, dd = q8_lane(v)
                    if valid:
                        xq[r, i] = q
                        if lane == 0:
                            xd[r, i // 32] = dd

    return kern


FUSED_MAX_PER = 32


def rms_norm_fused_ok(d: int) -> bool:
    """Whether rows of length d fit the fused kernel."""
    return d <= FUSED_MAX_PER * FUSED_MAX_THREADS


# -- RMSNorm of a few rows over many blocks (decode) -------------------------------------------------
# A one-block norm of a 4096-wide row is a chain of latencies on one SM (~5 us on the H100). Here
# each block of SPLIT_THREADS threads sums the squares of the whole row itself (every block the same
# way, so all get the same scale; the row is in L2) and normalizes, quantizes and writes only its
# own SPLIT_THREADS elements: one element per thread.

SPLIT_THREADS = 256
SPLIT_MAX_ROWS = 8  # more rows than this: one block per row (prompts)


@cache
def _split_kernel(per: int):
    @cuda.jit
    def kern(x, w, has_w, eps, out, xq, xd, want_q):
        r = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        bd = cuda.blockDim.x
        scratch = cuda.shared.array(32, dtype=np.float32)
        n = x.shape[1]
        i = cuda.blockIdx.x * bd + tid
        ic = min(i, n - 1)
        own = x[r, ic]
        wl = w[ic]
        ss = np.float32(0.0)
        for k in range(per):  # clamped, unconditional loads: they issue together
            j = tid + k * bd
            v = x[r, min(j, n - 1)]
            ss += v * v if j < n else np.float32(0.0)
        ss = block_sum(ss, scratch)
        inv = np.float32(1.0) / math.sqrt(ss / np.float32(n) + eps)
        valid = i < n
        v = own * inv * (wl if has_w else np.float32(1.0))
        if not valid:
            v = np.float32(0.0)
        else:
            out[r, i] = v
        if want_q:
            q, dd = q8_lane(v)
            if valid:
                xq[r, i] = q
                if tid % 32 == 0:
                    xd[r, i // 32] = dd

    return kern


def _per_thread(d: int, threads: int) -> int:
    """Values of a d-wide row each of `threads` threads holds: ceil(d / threads) rounded up to a power
    of two (one compiled kernel per power)."""
    per = 1
    while per * threads < d:
        per *= 2
    return per


def rms_norm_fused(x, w, eps: float, out, xq=None, xd=None, out16=None, stream=0) -> None:
    """x, out float32 [n, d]; w float32 [d] or None; xq int8 [n, d] + xd float32 [n, d/32] (d % 32 == 0)
    to also quantize; out16 float16 [n, d] for a float16 copy."""
    n, d = x.shape
    if n <= SPLIT_MAX_ROWS and out16 is None and SPLIT_THREADS:
        want_q = xq is not None
        fast(_split_kernel(_per_thread(d, SPLIT_THREADS)))[(-(-d // SPLIT_THREADS), n), SPLIT_THREADS, stream](
            x, w if w is not None else x[0], w is not None, np.float32(eps), out,
            xq if want_q else out, xd if want_q else out, want_q,
        )  # fmt: skip
        return
    threads = min(FUSED_MAX_THREADS, -(-d // 32) * 32)
    want_q = xq is not None
    want16 = out16 is not None
    fast(_fused_kernel(_per_thread(d, threads)))[n, threads, stream](
        x,
        w if w is not None else x[0],
        w is not None,
        np.float32(eps),
        out,
        xq if want_q else out,
        xd if want_q else out,
        want_q,
        out16 if want16 else out,
        want16,
    )
