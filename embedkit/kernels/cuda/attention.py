"""Attention over a KV cache in device memory (decode and prompt), and padded bidirectional batches.

One block of 8 warps per (query token, head). Each warp walks a strided share of the keys with an
online softmax (running max, running sum, accumulator of head_dim/32 values per lane); the warps
merge through shared memory at the end. Grouped-query attention maps head h to KV head
h // (heads / kv_heads). Causal: query t (absolute position pos0 + t) sees keys <= its position;
a sliding window of w keeps keys with position > p - w; a softcap applies cap * tanh(s / cap) to the
scaled scores (Gemma 2).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import warp_sum

WARPS = 8
MAX_HEAD_DIM = 256
PER_LANE = MAX_HEAD_DIM // 32
MERGE_COLS = MAX_HEAD_DIM + 2  # per warp: running max, running sum, accumulator


@cuda.jit
def kv_store_kernel(k_new, v_new, k_cache, v_cache, pos_buf):
    """k_cache[pos0 + t] = k_new[t] (and v); arrays [n, kv_heads, head_dim]."""
    t = cuda.blockIdx.y
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    hd = k_new.shape[2]
    if i < k_new.shape[1] * hd:
        h = i // hd
        d = i % hd
        p = pos_buf[0] + t
        k_cache[p, h, d] = k_new[t, h, d]
        v_cache[p, h, d] = v_new[t, h, d]


@cuda.jit(device=True, inline=True)
def _attend(q, qt, qh, kc, vc, kb, kvh, j0, j1, mask, has_mask, scale, softcap, out, ot, merge):
    """Online-softmax attention of q[qt, qh] over keys kc[kb, j, kvh] for j in [j0, j1)
    (and mask[kb, j] != 0 if has_mask), written to out[ot, qh*hd + d]."""
    tid = cuda.threadIdx.x
    lane = tid % 32
    warp = tid // 32
    hd = q.shape[q.ndim - 1]
    qv = cuda.local.array(PER_LANE, dtype=np.float32)
    acc = cuda.local.array(PER_LANE, dtype=np.float32)
    for c in range(PER_LANE):
        d = c * 32 + lane
        qv[c] = q[qt, qh, d] * scale if d < hd else np.float32(0.0)
        acc[c] = np.float32(0.0)
    m = np.float32(-np.inf)
    l = np.float32(0.0)
    # every warp runs the same number of iterations (the simulator's warp_sum is block-wide)
    for jb in range(j0, j1, WARPS):
        j = jb + warp
        valid = j < j1
        if valid and has_mask:
            valid = mask[kb, j] != 0
        s = np.float32(0.0)
        if valid:
            for c in range(PER_LANE):
                d = c * 32 + lane
                if d < hd:
                    s += qv[c] * kc[kb, j, kvh, d]
        s = warp_sum(s)
        if valid:
            if softcap > 0:
                s = softcap * math.tanh(s / softcap)
            m_new = max(m, s)
            corr = math.exp(m - m_new)
            p = math.exp(s - m_new)
            l = l * corr + p
            for c in range(PER_LANE):
                d = c * 32 + lane
                if d < hd:
                    acc[c] = acc[c] * corr + p * vc[kb, j, kvh, d]
            m = m_new
    # merge the warps: merge[w, 0] = m, merge[w, 1] = l, merge[w, 2 + d] = acc
    if lane == 0:
        merge[warp, 0] = m
        merge[warp, 1] = l
    for c in range(PER_LANE):
        d = c * 32 + lane
        if d < hd:
            merge[warp, 2 + d] = acc[c]
    cuda.syncthreads()
    mm = merge[0, 0]
    for w in range(1, WARPS):
        mm = max(mm, merge[w, 0])
    ll = np.float32(0.0)
    for w in range(WARPS):
        if merge[w, 0] > -np.inf:
            ll += merge[w, 1] * math.exp(merge[w, 0] - mm)
    for d in range(tid, hd, cuda.blockDim.x):
        o = np.float32(0.0)
        for w in range(WARPS):
            if merge[w, 0] > -np.inf:
                o += merge[w, 2 + d] * math.exp(merge[w, 0] - mm)
        out[ot, qh * hd + d] = o / ll if ll > 0 else np.float32(0.0)


@cuda.jit
def attention_cache_kernel(q, kc, vc, pos_buf, causal, window, scale, softcap, dummy_mask, out):
    """q [n, heads, hd]; kc, vc [1, n_ctx, kv_heads, hd]; out [n, heads*hd]."""
    t = cuda.blockIdx.x
    h = cuda.blockIdx.y
    merge = cuda.shared.array((WARPS, MERGE_COLS), dtype=np.float32)
    group = q.shape[1] // kc.shape[2]
    pos0 = pos_buf[0]
    p = pos0 + t
    j1 = p + 1 if causal else pos0 + q.shape[0]
    j0 = 0
    if window > 0:
        j0 = max(0, p - window + 1)
    _attend(q, t, h, kc, vc, 0, h // group, j0, j1, dummy_mask, False, scale, softcap, out, t, merge)


@cuda.jit
def attention_batch_kernel(q, k, v, mask, scale, out):
    """q, k, v [b*t... as [b, t, heads, hd]] -> out [b*t, heads*hd]; bidirectional, keys masked."""
    bt = cuda.blockIdx.x
    h = cuda.blockIdx.y
    merge = cuda.shared.array((WARPS, MERGE_COLS), dtype=np.float32)
    T = q.shape[1]
    b = bt // T
    t = bt % T
    group = q.shape[2] // k.shape[2]
    _attend(q[b], t, h, k, v, b, h // group, 0, T, mask, True, scale, np.float32(0.0), out, bt, merge)


def kv_store(k_new, v_new, k_cache, v_cache, pos_buf, stream=0) -> None:
    """Write [n, kv_heads, hd] keys/values into the caches [n_ctx, kv_heads, hd] at rows pos_buf[0].."""
    n, kvh, hd = k_new.shape
    threads = 128
    kv_store_kernel[(max(1, math.ceil(kvh * hd / threads)), n), threads, stream](
        k_new, v_new, k_cache, v_cache, pos_buf
    )


def attention_cache(
    q, k_cache, v_cache, pos_buf, causal: bool, window: int, scale: float, softcap: float, dummy_mask, out, stream=0
) -> None:
    """out [n, heads*hd] = attention of q [n, heads, hd] over cache rows [0, pos_buf[0] + n)."""
    n, heads, hd = q.shape
    if hd > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {hd} > {MAX_HEAD_DIM}")
    kc = k_cache.reshape(1, *k_cache.shape)
    vc = v_cache.reshape(1, *v_cache.shape)
    attention_cache_kernel[(n, heads), WARPS * 32, stream](
        q,
        kc,
        vc,
        pos_buf,
        causal,
        np.int32(window),
        np.float32(scale),
        np.float32(softcap),
        dummy_mask,
        out,
    )


def attention_batch(q, k, v, mask, scale: float, out, stream=0) -> None:
    """out [b*t, heads*hd] = bidirectional attention of q,k,v [b, t, heads, hd]; mask int32 [b, t]."""
    b, t, heads, hd = q.shape
    if hd > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {hd} > {MAX_HEAD_DIM}")
    attention_batch_kernel[(b * t, heads), WARPS * 32, stream](q, k, v, mask, np.float32(scale), out)
