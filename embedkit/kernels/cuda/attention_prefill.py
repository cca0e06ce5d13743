"""Prompt attention over a KV cache in device memory: query tiles against key/value tiles in shared memory.

A block takes BQ queries of one head and walks the keys BK at a time: the key and value tiles go through
shared memory (rows padded by one float so the column reads hit distinct banks), scores are kept per row
with an online softmax. Thread t owns query row t // 8, score columns t % 8 + 8i and output dimensions
t % 8 + 8j. Tiles past the diagonal (causal) or before the window are skipped. Grouped-query attention,
causal masks, sliding windows and softcaps follow `attention` (the decode and batch kernels).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.launch import fast

_PREFILL_CONFIGS = ((128, 32, 16), (256, 16, 8))  # (max head_dim, BQ, BK)


@cache
def _prefill_kernel(hdp: int, bq: int, bk: int):
    threads = bq * 8
    nc = bk // 8
    nd = hdp // 8
    hdp1 = hdp + 1
    bk1 = bk + 1

    @cuda.jit
    def kern(q, kc, vc, pos_buf, causal, window, scale, softcap, out, out16, want16):
        """q [n, heads, hd]; kc, vc [n_ctx, kv_heads, hd]; out [n, heads*hd] (and float16 copy)."""
        qt0 = (cuda.gridDim.x - 1 - cuda.blockIdx.x) * bq  # the longest (causal) tiles start first
        h = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        r = tid // 8
        c8 = tid % 8
        n = q.shape[0]
        hd = q.shape[2]
        kvh = h // (q.shape[1] // kc.shape[1])
        pos0 = pos_buf[0]
        qs = cuda.shared.array((bq, hdp1), dtype=np.float32)
        ks = cuda.shared.array((bk, hdp1), dtype=np.float32)
        vs = cuda.shared.array((bk, hdp), dtype=np.float32)
        ss = cuda.shared.array((bq, bk1), dtype=np.float32)
        for e in range(tid, bq * hd, threads):
            rr = e // hd
            dd = e % hd
            tq = qt0 + rr
            qs[rr, dd] = q[tq, h, dd] * scale if tq < n else np.float32(0.0)
        acc = cuda.local.array(nd, dtype=np.float32)
        sc = cuda.local.array(nc, dtype=np.float32)
        for j in range(nd):
            acc[j] = np.float32(0.0)
        m = np.float32(-np.inf)
        l = np.float32(0.0)
        qpos = pos0 + qt0 + r
        j_end = pos0 + min(qt0 + bq, n) if causal else pos0 + n
        j_start = 0
        if window > 0:
            j_start = max(0, pos0 + qt0 - window + 1)
        for j0 in range(j_start, j_end, bk):
            cuda.syncthreads()  # the previous tile is consumed
            for e in range(tid, bk * hd, threads):
                kk = e // hd
                dd = e % hd
                j = j0 + kk
                if j < j_end:
                    ks[kk, dd] = kc[j, kvh, dd]
                    vs[kk, dd] = vc[j, kvh, dd]
                else:
                    ks[kk, dd] = np.float32(0.0)
                    vs[kk, dd] = np.float32(0.0)
            cuda.syncthreads()
            for ci in range(nc):
                sc[ci] = np.float32(0.0)
            for dd in range(hd):
                qv = qs[r, dd]
                for ci in range(nc):
                    sc[ci] += qv * ks[c8 + 8 * ci, dd]
            for ci in range(nc):
                c = c8 + 8 * ci
                j = j0 + c
                s = sc[ci]
                if softcap > 0:
                    s = softcap * math.tanh(s / softcap)
                ok = j < j_end
                if causal and j > qpos:
                    ok = False
                if window > 0 and qpos - j >= window:
                    ok = False
                ss[r, c] = s if ok else np.float32(-np.inf)
            cuda.syncthreads()
            mx = np.float32(-np.inf)
            for c in range(bk):
                mx = max(mx, ss[r, c])
            m_new = max(m, mx)
            if m_new > np.float32(-np.inf):
                corr = math.exp(m - m_new)
                psum = np.float32(0.0)
                for j in range(nd):
                    acc[j] *= corr
                for c in range(bk):
                    p = math.exp(ss[r, c] - m_new)
                    psum += p
                    for j in range(nd):
                        dd = c8 + 8 * j
                        if dd < hd:
                            acc[j] += p * vs[c, dd]
                l = l * corr + psum
                m = m_new
        tq = qt0 + r
        if tq < n:
            inv = np.float32(1.0) / l if l > 0 else np.float32(0.0)
            for j in range(nd):
                dd = c8 + 8 * j
                if dd < hd:
                    v = acc[j] * inv
                    out[tq, h * hd + dd] = v
                    if want16:
                        out16[tq, h * hd + dd] = v

    return kern, threads


def prefill_ok(head_dim: int) -> bool:
    """Whether `attention_prefill` handles this head size."""
    return head_dim <= _PREFILL_CONFIGS[-1][0]


def attention_prefill(
    q, k_cache, v_cache, pos_buf, causal: bool, window: int, scale: float, softcap: float, out, out16=None, stream=0
) -> None:
    """out [n, heads*hd] = attention of q [n, heads, hd] over cache rows [0, pos_buf[0] + n) (keys
    already stored), tiled through shared memory; optionally also a float16 copy in out16."""
    n, heads, hd = q.shape
    hdp, bq, bk = next(c for c in _PREFILL_CONFIGS if hd <= c[0])
    kern, threads = _prefill_kernel(hdp, bq, bk)
    want16 = out16 is not None
    fast(kern)[(math.ceil(n / bq), heads), threads, stream](
        q,
        k_cache,
        v_cache,
        pos_buf,
        causal,
        np.int32(window),
        np.float32(scale),
        np.float32(softcap),
        out,
        out16 if want16 else out,
        want16,
    )
