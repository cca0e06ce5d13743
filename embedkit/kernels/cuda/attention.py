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
from functools import cache

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import q8_lane, warp_sum
from embedkit.kernels.cuda.launch import fast
from embedkit.kernels.cuda.reduce import block_max, block_sum
from embedkit.kernels.cuda.rope import pair_slots, rope_angle, rotate

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


# continuous batching: rows of several sequences (launchers and layout in attention_rows.py)
@cuda.jit
def kv_store_rows_kernel(k_new, v_new, k_all, v_all, slots, positions):
    """k_all[slots[t], positions[t]] = k_new[t] (and v); k_new [n, kv_heads, hd]."""
    t = cuda.blockIdx.y
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    hd = k_new.shape[2]
    if i < k_new.shape[1] * hd:
        h = i // hd
        d = i % hd
        s = slots[t]
        p = positions[t]
        k_all[s, p, h, d] = k_new[t, h, d]
        v_all[s, p, h, d] = v_new[t, h, d]


@cuda.jit
def attention_rows_kernel(q, k_all, v_all, slots, positions, window, scale, softcap, dummy_mask, out):
    """q [n, heads, hd]; k_all, v_all [n_slots, n_ctx, kv_heads, hd]; out [n, heads*hd]."""
    t = cuda.blockIdx.x
    h = cuda.blockIdx.y
    merge = cuda.shared.array((WARPS, MERGE_COLS), dtype=np.float32)
    group = q.shape[1] // k_all.shape[2]
    p = positions[t]
    j0 = 0
    if window > 0:
        j0 = max(0, p - window + 1)
    _attend(q, t, h, k_all, v_all, slots[t], h // group, j0, p + 1, dummy_mask, False, scale, softcap, out, t, merge)



def kv_store(k_new, v_new, k_cache, v_cache, pos_buf, stream=0) -> None:
    """Write [n, kv_heads, hd] keys/values into the caches [n_ctx, kv_heads, hd] at rows pos_buf[0].."""
    n, kvh, hd = k_new.shape
    threads = 128
    fast(kv_store_kernel)[(max(1, math.ceil(kvh * hd / threads)), n), threads, stream](
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
    fast(attention_cache_kernel)[(n, heads), WARPS * 32, stream](
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
    fast(attention_batch_kernel)[(b * t, heads), WARPS * 32, stream](q, k, v, mask, np.float32(scale), out)


# -- decode attention: a few query rows, keys four at a time per warp ---------------------------------
# One block of 8 warps per (query row, head); each warp takes four keys per step (their loads issued
# together, four independent warp reductions), online softmax, warps merged through shared memory.
# The output can also come out as int8 blocks for the next dp4a matvec (want_q; head_dim % 32 == 0).
# The one-token variant with `rope` set also does what the two RoPE launches and the KV store did
# before it: each block rotates its query head and its KV head's new key in shared memory (the same
# float64 angles as `rope.rope_kernel`, so the results are identical), the first query head of each
# KV group writes the new key and value into the cache, and the current position is read from
# shared memory (another block may not have written it yet).

DEC_KEYS = 4


@cache
def _decode_kernel(per: int, rope: bool):
    @cuda.jit
    def kern(q, kc, vc, pos_buf, causal, window, scale, softcap, out, xq, xd, want_q,
             k_new, v_new, n_rot, log_base, freq_scale, neox):  # fmt: skip
        t = cuda.blockIdx.x
        h = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        merge = cuda.shared.array((WARPS, MERGE_COLS), dtype=np.float32)
        n = q.shape[0]
        hd = q.shape[2]
        group = q.shape[1] // kc.shape[1]
        kvh = h // group
        pos0 = pos_buf[0]
        p = pos0 + t
        j1 = p + 1 if causal else pos0 + n
        j0 = 0
        if window > 0:
            j0 = max(0, p - window + 1)
        qs = cuda.shared.array(MAX_HEAD_DIM, dtype=np.float32)
        ks = cuda.shared.array(MAX_HEAD_DIM, dtype=np.float32)
        vs = cuda.shared.array(MAX_HEAD_DIM, dtype=np.float32)
        if rope:
            for i in range(tid, hd // 2, cuda.blockDim.x):
                a, b = pair_slots(i, n_rot, neox)
                if 2 * i >= n_rot:
                    qs[a], qs[b] = q[t, h, a], q[t, h, b]
                    ks[a], ks[b] = k_new[t, kvh, a], k_new[t, kvh, b]
                else:  # one angle for the query and the key pair
                    c, sn = rope_angle(i, p, n_rot, log_base, freq_scale)
                    qa, qb = rotate(q[t, h, a], q[t, h, b], c, sn)
                    qs[a], qs[b] = qa, qb
                    ka, kb = rotate(k_new[t, kvh, a], k_new[t, kvh, b], c, sn)
                    ks[a], ks[b] = ka, kb
            for d in range(tid, hd, cuda.blockDim.x):
                vs[d] = v_new[t, kvh, d]
            cuda.syncthreads()
            if h % group == 0:
                for d in range(tid, hd, cuda.blockDim.x):
                    kc[p, kvh, d] = ks[d]
                    vc[p, kvh, d] = vs[d]
        qv = cuda.local.array(per, dtype=np.float32)
        acc = cuda.local.array(per, dtype=np.float32)
        kv = cuda.local.array((DEC_KEYS, per), dtype=np.float32)
        vv = cuda.local.array((DEC_KEYS, per), dtype=np.float32)
        sv = cuda.local.array(DEC_KEYS, dtype=np.float32)
        for c in range(per):
            if rope:
                qv[c] = qs[c * 32 + lane] * scale
            else:
                qv[c] = q[t, h, c * 32 + lane] * scale
            acc[c] = np.float32(0.0)
        m = np.float32(-np.inf)
        l = np.float32(0.0)
        for jb in range(j0, j1, WARPS * DEC_KEYS):
            ja = jb + warp * DEC_KEYS
            for u in range(DEC_KEYS):
                jj = min(ja + u, j1 - 1)
                if rope and jj == p:
                    for c in range(per):
                        kv[u, c] = ks[c * 32 + lane]
                        vv[u, c] = vs[c * 32 + lane]
                else:  # (rope is a compile-time constant: without it only this branch is left)
                    for c in range(per):
                        kv[u, c] = kc[jj, kvh, c * 32 + lane]
                        vv[u, c] = vc[jj, kvh, c * 32 + lane]
            for u in range(DEC_KEYS):
                s = np.float32(0.0)
                for c in range(per):
                    s += qv[c] * kv[u, c]
                sv[u] = s
            for u in range(DEC_KEYS):
                sv[u] = warp_sum(sv[u])
            mx = np.float32(-np.inf)
            for u in range(DEC_KEYS):
                s = sv[u]
                if softcap > 0:
                    s = softcap * math.tanh(s / softcap)
                if ja + u >= j1:
                    s = np.float32(-np.inf)
                sv[u] = s
                mx = max(mx, s)
            m_new = max(m, mx)
            if m_new > np.float32(-np.inf):
                corr = math.exp(m - m_new)
                l = l * corr
                for c in range(per):
                    acc[c] *= corr
                for u in range(DEC_KEYS):
                    pu = math.exp(sv[u] - m_new)
                    l += pu
                    for c in range(per):
                        acc[c] += pu * vv[u, c]
                m = m_new
        if lane == 0:
            merge[warp, 0] = m
            merge[warp, 1] = l
        for c in range(per):
            merge[warp, 2 + c * 32 + lane] = acc[c]
        cuda.syncthreads()
        mm = merge[0, 0]
        for w in range(1, WARPS):
            mm = max(mm, merge[w, 0])
        ll = np.float32(0.0)
        o = np.float32(0.0)
        valid = tid < hd
        for w in range(WARPS):
            if merge[w, 0] > -np.inf:
                f = math.exp(merge[w, 0] - mm)
                ll += merge[w, 1] * f
                if valid:
                    o += merge[w, 2 + tid] * f
        o = o / ll if ll > 0 else np.float32(0.0)
        if valid:
            out[t, h * hd + tid] = o
        if want_q:
            q, dd = q8_lane(o)
            if valid:
                xq[t, h * hd + tid] = q
                if lane == 0:
                    xd[t, (h * hd + tid) // 32] = dd

    return kern


def decode_ok(head_dim: int) -> bool:
    """Whether `attention_decode` handles this head size (a multiple of 32, at most 256)."""
    return head_dim % 32 == 0 and head_dim <= WARPS * 32


def attention_decode(
    q, k_cache, v_cache, pos_buf, causal: bool, window: int, scale: float, softcap: float, out, xq=None, xd=None,
    stream=0, rope=None,
) -> None:  # fmt: skip
    """out [n, heads*hd] = attention of q [n, heads, hd] (a few rows) over cache rows [0, pos_buf[0] + n)
    (keys already stored); with xq int8 [n, heads*hd] and xd [n, heads*hd/32] also its int8 blocks.

    rope = (k_new, v_new, n_rot, base, freq_scale, neox), one token only: q and k_new [1, kv_heads, hd]
    are not rotated yet; the kernel rotates both to position pos_buf[0] and stores k/v in the cache."""
    n, heads, hd = q.shape
    want_q = xq is not None
    if rope is not None:
        if n != 1:
            raise ValueError("attention_decode: the fused RoPE takes one token")
        k_new, v_new, n_rot, base, freq_scale, neox = rope
        extra = (k_new, v_new, np.int32(n_rot), np.float64(math.log(base)), np.float64(freq_scale), bool(neox))
    else:
        extra = (q, q, np.int32(0), np.float64(0.0), np.float64(1.0), False)
    fast(_decode_kernel(hd // 32, rope is not None))[(n, heads), WARPS * 32, stream](
        q,
        k_cache,
        v_cache,
        pos_buf,
        causal,
        np.int32(window),
        np.float32(scale),
        np.float32(softcap),
        out,
        xq if want_q else out,
        xd if want_q else out,
        want_q,
        *extra,
    )


# -- prompt attention through cuBLAS -----------------------------------------------------------------
# Scores S_h = Q_h K_h^T for every head in one strided-batched float32 GEMM, a masked softmax kernel
# (scale, softcap, causal and window masks), then O_h = P_h V_h in a second GEMM written straight
# into out [n, heads*hd]. Grouped-query caches are first expanded to one key/value head per query
# head (the batched GEMM needs one stride per operand). Takes heads * n * n_keys floats of scratch.


@cuda.jit
def expand_kv_kernel(kc, vc, kx, vx):
    """kx[j, h, d] = kc[j, h // group, d] (and v) for j < kx.shape[0]."""
    j = cuda.blockIdx.y
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    heads = kx.shape[1]
    hd = kx.shape[2]
    if i < heads * hd:
        h = i // hd
        d = i % hd
        g = h // (heads // kc.shape[1])
        kx[j, h, d] = kc[j, g, d]
        vx[j, h, d] = vc[j, g, d]


@cuda.jit
def masked_softmax_kernel(s, pos_buf, causal, window, scale, softcap):
    """In place over s [heads, n, n_keys]: row (h, t) -> softmax of the scaled, capped, masked scores."""
    row = cuda.blockIdx.x
    n = s.shape[1]
    nk = s.shape[2]
    h = row // n
    t = row % n
    scratch = cuda.shared.array(32, dtype=np.float32)
    p = pos_buf[0] + t
    j_hi = min(p + 1, nk) if causal else nk
    j_lo = max(0, p - window + 1) if window > 0 else 0
    m = np.float32(-np.inf)
    for j in range(cuda.threadIdx.x, nk, cuda.blockDim.x):
        v = s[h, t, j] * scale
        if softcap > 0:
            v = softcap * math.tanh(v / softcap)
        if j < j_lo or j >= j_hi:
            v = np.float32(-np.inf)
        s[h, t, j] = v
        m = max(m, v)
    m = block_max(m, scratch)
    total = np.float32(0.0)
    for j in range(cuda.threadIdx.x, nk, cuda.blockDim.x):
        e = math.exp(s[h, t, j] - m)
        s[h, t, j] = e
        total += e
    total = block_sum(total, scratch)
    inv = np.float32(1.0) / total
    for j in range(cuda.threadIdx.x, nk, cuda.blockDim.x):
        s[h, t, j] *= inv


BLAS_MAX_SCORE_BYTES = 512 << 20


def blas_ok(n: int, heads: int, n_keys: int) -> bool:
    """Whether the scores of a prompt fit the cuBLAS path's scratch limit."""
    return heads * n * n_keys * 4 <= BLAS_MAX_SCORE_BYTES


def attention_blas(
    q, k_cache, v_cache, pos0: int, pos_buf, causal: bool, window: int, scale: float, softcap: float, out,
    empty, stream, stream_ptr: int,
) -> None:  # fmt: skip
    """out [n, heads*hd] = attention of q [n, heads, hd] over cache rows [0, pos0 + n) (keys already
    stored) with two batched cuBLAS GEMMs; `empty(shape)` allocates float32 scratch."""
    from embedkit.kernels.cuda.gemm import gemm_f32_strided_batched

    n, heads, hd = q.shape
    kvh = k_cache.shape[1]
    nk = pos0 + n
    if kvh == heads:
        kx, vx = k_cache, v_cache
    else:
        kx, vx = empty((nk, heads, hd)), empty((nk, heads, hd))
        fast(expand_kv_kernel)[(math.ceil(heads * hd / 128), nk), 128, stream](k_cache, v_cache, kx, vx)
    s = empty((heads, n, nk))
    ld = heads * hd

    def ptr(a) -> int:
        return a.__cuda_array_interface__["data"][0]

    # S_h^T (nk x n, column-major) = K_h (hd x nk)^T . Q_h (hd x n)
    gemm_f32_strided_batched(1, 0, nk, n, hd, ptr(kx), ld, hd, ptr(q), ld, hd, ptr(s), nk, n * nk, heads, stream_ptr)
    fast(masked_softmax_kernel)[heads * n, 128, stream](
        s, pos_buf, causal, np.int32(window), np.float32(scale), np.float32(softcap)
    )
    # O_h^T (hd x n) = V_h (hd x nk) . P_h^T (nk x n), written into out with row stride heads*hd
    gemm_f32_strided_batched(0, 0, hd, n, nk, ptr(vx), ld, hd, ptr(s), nk, n * nk, ptr(out), ld, hd, heads, stream_ptr)
