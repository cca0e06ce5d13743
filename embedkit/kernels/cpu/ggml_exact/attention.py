"""llama.cpp's CPU attention (flash attention off, F16 KV cache) bit for bit.

What llama.cpp's graph does for one layer (llama-graph.cpp build_attn / build_attn_mha,
llama-kv-cache.cpp), and so what `attention` computes:

1. k_new and v_new are stored in the cache by set_rows, rounded to IEEE half (round to nearest
   even). K is kept as rows [cell, kv_head, dim]; V transposed, [kv_head, dim, cell], as llama.cpp
   does without flash attention.
2. The graph sees n_kv cells: min(cache cells, max(256, the used cells padded to 256)); the cache
   itself holds n_ctx padded to 256 cells (llama_context pads n_ctx so).
3. kq = mul_mat(K view, q): q is rounded to float16, each score is an F16 dot product of head_dim
   elements (tinyBLAS order for >= 2 query rows, ggml_vec_dot_f16's for one, see f16_matmul).
   Query head h reads KV head h // (heads / kv_heads).
4. soft_max_ext(kq, mask, scale): mask 0 for kept cells and -inf otherwise (see softmax).
   A query at position p keeps cell j (= position j) when j <= p and, for a sliding-window layer,
   p - j < window (llama_hparams::is_masked_swa, LLAMA_SWA_TYPE_STANDARD, Gemma 3's local layers).
5. kqv = mul_mat(V view, probabilities): the probabilities are rounded to float16 and each output is
   an F16 dot product over the n_kv cells (same two orders, now with k = n_kv).
6. permute + cont: the output row of a token is its heads' vectors one after another.

Assumed: one sequence that starts at position 0 and never wraps around, so cache cell i holds
position i (what llama.cpp does for a fresh context; its SWA cache has min(n_ctx, window + n_ubatch)
cells padded to 256, so this also holds for Gemma 3's local layers while n_ctx <= window + n_ubatch).
Gemma 3 multiplies q by its attention scale before attention (ggml_scale, a float32 product: the
model does it with the backend's `scale`, before the float16 rounding here) and passes kq_scale 1.0.
No logit soft-capping.

Cells that no query sees only ever contribute exact zeros, so the kernels skip the score products
and the 8- or 32-element blocks of them (which leaves every result bit unchanged; f16_matmul says why).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.ggml_exact.f16_matmul import (
    round_f16,
    tinyblas_dot,
    tinyblas_dot4,
    uses_tinyblas,
    vec_dot_f16,
)
from embedkit.kernels.cpu.ggml_exact.softmax import soft_max_row
from embedkit.kernels.cpu.halfbits import f16_to_f32, f32_to_f16

CELL_PAD = 256
_PARALLEL_WORK = 1 << 14  # multiply-adds below which thread start-up costs more than it saves


def cache_cells(n_ctx: int) -> int:
    """Cells of a llama.cpp KV cache for a context of n_ctx tokens (n_ctx padded to 256)."""
    return -(-n_ctx // CELL_PAD) * CELL_PAD


def graph_n_kv(n_cells: int, n_used: int) -> int:
    """n_kv of llama.cpp's graph: the cells attended over once n_used cells (0..n_used-1) are filled."""
    return min(n_cells, max(CELL_PAD, -(-n_used // CELL_PAD) * CELL_PAD))


def new_cache(n_ctx: int, n_kv_heads: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """One layer's zeroed F16 cache as uint16 bits: K [cells, n_kv_heads, head_dim], V [n_kv_heads, head_dim, cells]."""
    cells = cache_cells(n_ctx)
    k = np.zeros((cells, n_kv_heads, head_dim), dtype=np.uint16)
    v = np.zeros((n_kv_heads, head_dim, cells), dtype=np.uint16)
    return k, v


@njit(cache=True)
def _store(k_cache, v_cache, k_new, v_new, pos0):
    n, n_head_kv, hd = k_new.shape
    for t in range(n):
        for g in range(n_head_kv):
            for d in range(hd):
                k_cache[pos0 + t, g, d] = f32_to_f16(k_new[t, g, d])
                v_cache[g, d, pos0 + t] = f32_to_f16(v_new[t, g, d])


@njit(cache=True)
def _attend_row(q16, k_cache, v_cache, pos0, n_kv, scale, window, out, kq_all, sm_all, full, t, h):
    """Output row of query token t, head h (and, when `full`, its whole kq / softmax rows)."""
    n, n_head, hd = q16.shape
    n_cells, n_head_kv, _ = k_cache.shape
    g = h // (n_head // n_head_kv)
    kq_tiny = uses_tinyblas(n_kv, n, hd)
    kqv_tiny = uses_tinyblas(hd, n, n_kv)
    kf = k_cache.ravel()
    vf = v_cache.ravel()
    qf = q16.ravel()
    hi = pos0 + t + 1
    lo = max(0, hi - window) if window > 0 else 0
    qo = (t * n_head + h) * hd
    kq = np.empty(n_kv, dtype=np.float32)
    j0, j1 = (0, n_kv) if full else (lo, hi)
    if kq_tiny:
        k_row = n_head_kv * hd
        j4 = j0 + (j1 - j0) // 4 * 4
        for j in range(j0, j4, 4):
            kq[j], kq[j + 1], kq[j + 2], kq[j + 3] = tinyblas_dot4(kf, j * k_row + g * hd, k_row, qf, qo, 0, hd)
        for j in range(j4, j1):
            kq[j] = tinyblas_dot(kf, j * k_row + g * hd, qf, qo, 0, hd)
    else:
        for j in range(j0, j1):
            kq[j] = vec_dot_f16(kf, (j * n_head_kv + g) * hd, qf, qo, hd, 0, hd & ~31)
    p = np.zeros(n_kv, dtype=np.float32)
    soft_max_row(p, 0, kq, 0, n_kv, scale, lo, hi)
    if full:
        kq_all[h, t, :] = kq
        sm_all[h, t, :] = p
    # mul_mat converts the probabilities to float16 (only non-zero ones matter)
    for j in range(lo & ~7, min(n_kv, (hi + 7) & ~7)):
        p[j] = f16_to_f32(f32_to_f16(p[j]))
    for j in range(n_kv & ~31, n_kv):
        p[j] = f16_to_f32(f32_to_f16(p[j]))
    o = h * hd
    if kqv_tiny:  # hd % 4 == 0 here
        b0, b1 = lo & ~7, min(n_kv, (hi + 7) & ~7)
        for d in range(0, hd, 4):
            r = tinyblas_dot4(vf, (g * hd + d) * n_cells, n_cells, p, 0, b0, b1)
            out[t, o + d], out[t, o + d + 1], out[t, o + d + 2], out[t, o + d + 3] = r
    else:
        b0, b1 = lo & ~31, min(n_kv & ~31, (hi + 31) & ~31)
        for d in range(hd):
            out[t, o + d] = vec_dot_f16(vf, (g * hd + d) * n_cells, p, 0, n_kv, b0, b1)


@njit(cache=True, parallel=True)
def _attend_parallel(q16, k_cache, v_cache, pos0, n_kv, scale, window, out, kq_all, sm_all, full):
    n, n_head, _ = q16.shape
    for task in prange(n * n_head):
        _attend_row(q16, k_cache, v_cache, pos0, n_kv, scale, window, out, kq_all, sm_all, full,
                    task // n_head, task % n_head)  # fmt: skip


@njit(cache=True)
def _attend_serial(q16, k_cache, v_cache, pos0, n_kv, scale, window, out, kq_all, sm_all, full):
    n, n_head, _ = q16.shape
    for task in range(n * n_head):
        _attend_row(q16, k_cache, v_cache, pos0, n_kv, scale, window, out, kq_all, sm_all, full,
                    task // n_head, task % n_head)  # fmt: skip


def _run(q, k_cache, v_cache, k_new, v_new, pos0, scale, window, full):
    n, n_head, hd = q.shape
    n_cells, n_head_kv, hd_k = k_cache.shape
    if hd_k != hd or v_cache.shape != (n_head_kv, hd, n_cells) or n_head % n_head_kv:
        raise ValueError("cache shapes do not match q: use new_cache(n_ctx, kv_heads, head_dim)")
    if k_new.shape != (n, n_head_kv, hd) or v_new.shape != (n, n_head_kv, hd):
        raise ValueError("k_new/v_new must be [n, kv_heads, head_dim]")
    if pos0 < 0 or pos0 + n > n_cells:
        raise ValueError("positions pos0..pos0+n-1 must fit in the cache")
    k_cache16 = k_cache.view(np.uint16)
    v_cache16 = v_cache.view(np.uint16)
    _store(k_cache16, v_cache16, np.asarray(k_new, dtype=np.float32), np.asarray(v_new, dtype=np.float32), pos0)
    q32 = np.ascontiguousarray(q, dtype=np.float32)
    q16 = round_f16(q32)
    n_kv = graph_n_kv(n_cells, pos0 + n)
    out = np.empty((n, n_head * hd), dtype=np.float32)
    shape = (n_head, n, n_kv) if full else (1, 1, 1)
    kq = np.zeros(shape, dtype=np.float32)
    sm = np.zeros(shape, dtype=np.float32)
    attend = _attend_parallel if n * n_head * (pos0 + n) * hd >= _PARALLEL_WORK else _attend_serial
    attend(q16, k_cache16, v_cache16, pos0, n_kv, np.float32(scale), int(window or 0), out, kq, sm, full)
    return out, kq, sm


def attention(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    k_new: np.ndarray,
    v_new: np.ndarray,
    pos0: int,
    scale: float,
    window: int | None = None,
) -> np.ndarray:
    """Store k_new/v_new at positions pos0.. of the cache and attend as llama.cpp does -> float32 [n, heads*hd].

    q: float32 [n, heads, hd]; k_new, v_new: float32 [n, kv_heads, hd]; k_cache, v_cache from
    `new_cache` (updated in place). scale is soft_max_ext's kq_scale. window: sliding window of the
    layer or None.
    Token i sits at position pos0 + i; cache cell j holds position j (see the module docstring).
    """
    return _run(q, k_cache, v_cache, k_new, v_new, pos0, scale, window, False)[0]


def attention_stages(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    k_new: np.ndarray,
    v_new: np.ndarray,
    pos0: int,
    scale: float,
    window: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`attention` that also returns llama.cpp's intermediate tensors: (kq, kq_soft_max, kqv_out).

    kq and kq_soft_max are [heads, n, n_kv] over all n_kv cells of the graph (the `kq-L` and
    `kq_soft_max-L` tensors), kqv_out is [n, heads*hd]. Slower: every score is computed.
    """
    out, kq, sm = _run(q, k_cache, v_cache, k_new, v_new, pos0, scale, window, True)
    return kq, sm, out
