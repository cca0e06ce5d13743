"""Fused Numba loops behind the CPU backend's small ops: one compiled call instead of a chain of
numpy temporaries, which matters in decode where each op touches only a few thousand floats.

Every function writes into `out` (preallocated by the caller) and allocates nothing.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from embedkit.kernels.cpu.fast_f32 import exp_f32

# Fast-math flags that allow vectorised reductions but keep inf/nan semantics (-inf is used as a start).
_REASSOC = {"reassoc", "contract", "nsz", "arcp"}


@njit(cache=True, fastmath=_REASSOC)  # reassociating the sum lets LLVM vectorise it
def rms_norm_rows(x, w, eps, out):  # pragma: no cover - compiled
    """out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w (w of length 0: no weight); sums in float64."""
    n, d = x.shape
    has_w = w.shape[0] == d
    for r in range(n):
        s = 0.0
        for i in range(d):
            v = np.float64(x[r, i])
            s += v * v
        inv = np.float32(1.0 / math.sqrt(s / d + eps))
        if has_w:
            for i in range(d):
                out[r, i] = x[r, i] * inv * w[i]
        else:
            for i in range(d):
                out[r, i] = x[r, i] * inv


@njit(cache=True)
def rope_rows(x, cos, sin, n_rot, neox, out):  # pragma: no cover - compiled
    """Rotate x [n, heads, hd] by angles cos/sin [n, n_rot/2] into out (dims >= n_rot copied)."""
    n, h, hd = x.shape
    half = n_rot // 2
    for t in range(n):
        for j in range(h):
            for i in range(half):
                c = cos[t, i]
                s = sin[t, i]
                if neox:
                    a = x[t, j, i]
                    b = x[t, j, i + half]
                    out[t, j, i] = a * c - b * s
                    out[t, j, i + half] = a * s + b * c
                else:
                    a = x[t, j, 2 * i]
                    b = x[t, j, 2 * i + 1]
                    out[t, j, 2 * i] = a * c - b * s
                    out[t, j, 2 * i + 1] = a * s + b * c
            for i in range(n_rot, hd):
                out[t, j, i] = x[t, j, i]


@njit(cache=True, fastmath={"contract"})  # no reassoc: each element's sum keeps its order
def _weighted_rows(s, inv, v, kv, start, m, acc):  # pragma: no cover - compiled
    """acc [hd] = the sum over jj < m of (s[jj] * inv) * v[kv, start + jj], each element's terms added in jj order
    (one fused multiply-add each). Four rows of v a pass over acc: one load and store of acc per four rows, where a
    row at a time spent more on them than on the multiply-adds; the same operations in the same order."""
    hd = acc.shape[0]
    for i in range(hd):
        acc[i] = 0.0
    jj = 0
    while jj + 4 <= m:
        w0, w1, w2, w3 = s[jj] * inv, s[jj + 1] * inv, s[jj + 2] * inv, s[jj + 3] * inv
        j = start + jj
        for i in range(hd):
            a = acc[i]
            a += w0 * v[kv, j, i]
            a += w1 * v[kv, j + 1, i]
            a += w2 * v[kv, j + 2, i]
            a += w3 * v[kv, j + 3, i]
            acc[i] = a
        jj += 4
    while jj < m:
        wgt = s[jj] * inv
        j = start + jj
        for i in range(hd):
            acc[i] += wgt * v[kv, j, i]
        jj += 1


@njit(cache=True, inline="always", fastmath=_REASSOC)
def _attend_row(q, t, h, k, v, kv, p, scale, window, softcap, s, acc, out):  # pragma: no cover - compiled
    """Query row t, head h at position p over cache head kv of k/v [Hkv, n_ctx, hd] into out[t, h*hd:(h+1)*hd]
    (the rules of `attention_small`); s: scratch of at least p + 1 floats, acc: hd floats."""
    hd = q.shape[2]
    start = 0
    if window > 0 and p - window + 1 > 0:
        start = p - window + 1
    m = p + 1 - start
    mx = np.float32(-np.inf)  # float32: a float64 maximum would carry the exponentials below into float64
    for jj in range(m):
        j = start + jj
        dot = np.float32(0.0)
        for i in range(hd):
            dot += q[t, h, i] * k[kv, j, i]
        dot *= scale
        if softcap > 0:
            dot = np.float32(softcap * math.tanh(dot / softcap))
        s[jj] = dot
        if dot > mx:
            mx = dot
    tot = 0.0
    for jj in range(m):
        e = exp_f32(s[jj] - mx)  # vectorised (a libm call per key cost as much as its dot product)
        s[jj] = e
        tot += e
    _weighted_rows(s, np.float32(1.0 / tot), v, kv, start, m, acc)
    base = h * hd
    for i in range(hd):
        out[t, base + i] = acc[i]


@njit(cache=True, fastmath=_REASSOC)  # serial: a decode step has n_head rows of work, less than a thread wake-up
def attention_small(q, k, v, pos0, scale, window, softcap, out):  # pragma: no cover - compiled
    """Attention of a few query tokens over the cache; q [n, H, hd], k/v [Hkv, n_ctx, hd], out [n, H*hd].

    Token t (position pos0 + t) sees key j when j <= pos0 + t and pos0 + t - j < window (window <= 0:
    unlimited). softcap > 0 applies softcap * tanh(s / softcap) to scores.
    """
    n, n_head, hd = q.shape
    g = n_head // k.shape[0]
    s = np.empty(pos0 + n, dtype=np.float32)
    acc = np.empty(hd, dtype=np.float32)  # a local accumulator: LLVM can't prove `out` doesn't alias v
    for hh in range(n * n_head):
        t = hh // n_head
        h = hh % n_head
        _attend_row(q, t, h, k, v, h // g, pos0 + t, scale, window, softcap, s, acc, out)


@njit(cache=True, inline="always")
def _store_kv(k_new, v_new, k, v, pos0):  # pragma: no cover - compiled
    """k_new, v_new [n, Hkv, hd] into the cache k, v [Hkv, n_ctx, hd] at positions pos0 .. pos0 + n - 1."""
    n, n_kv, hd = k_new.shape
    for t in range(n):
        for h in range(n_kv):
            for i in range(hd):
                k[h, pos0 + t, i] = k_new[t, h, i]
                v[h, pos0 + t, i] = v_new[t, h, i]


@njit(cache=True, fastmath=_REASSOC)
def store_attention_small(q, k_new, v_new, k, v, pos0, scale, window, softcap, out):  # pragma: no cover
    """A few tokens' keys and values k_new, v_new [n, Hkv, hd] stored at positions pos0.. of the cache k/v
    [Hkv, n_ctx, hd], then `attention_small` (one call where a decode step made three)."""
    _store_kv(k_new, v_new, k, v, pos0)
    attention_small(q, k, v, pos0, scale, window, softcap, out)


@njit(parallel=True, cache=True, fastmath=_REASSOC)
def store_attention_parallel(q, k_new, v_new, k, v, pos0, scale, window, softcap, out):  # pragma: no cover
    """`store_attention_small` with the (token, head) pairs in one parallel region: each pair's result is
    `_attend_row`'s, as in the serial kernel (for long contexts, where a pair costs more than a thread wake-up)."""
    _store_kv(k_new, v_new, k, v, pos0)
    n, n_head, hd = q.shape
    g = n_head // k.shape[0]
    for hh in prange(n * n_head):
        t = hh // n_head
        h = hh % n_head
        s = np.empty(pos0 + t + 1, dtype=np.float32)
        acc = np.empty(hd, dtype=np.float32)
        _attend_row(q, t, h, k, v, h // g, pos0 + t, scale, window, softcap, s, acc, out)


# contraction only: with reciprocal or reassociation flags the vector loop and its scalar remainder round differently,
# and an element's bits would depend on where a thread's slice starts
@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def gelu_tanh_mul(gate, up, out):  # pragma: no cover - compiled
    """out = gelu_tanh(gate) * up, elementwise over 1-D arrays.

    Uses 0.5 (1 + tanh(z)) = 1 / (1 + exp(-2 z)) with the vectorisable `exp_f32` (relative error ~2e-7, as
    libm's tanhf/expf to a unit or two in the last place; a scalar libm call per element took ~4 ns, most of a
    batched decode step's GLU). exp_f32 clamps its argument to [-87, 88], so very negative inputs give
    x / (1 + e^88) ~ -0, the right limit.
    """
    c = np.float32(2.0 * math.sqrt(2.0 / math.pi))
    for i in range(gate.size):
        x = gate[i]
        z = c * (x + np.float32(0.044715) * x * x * x)
        out[i] = x / (np.float32(1.0) + exp_f32(-z)) * up[i]


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def silu_mul(gate, up, out):  # pragma: no cover - compiled
    """out = silu(gate) * up, elementwise over 1-D arrays (exp by `exp_f32`, as `gelu_tanh_mul`)."""
    for i in range(gate.size):
        x = gate[i]
        out[i] = x / (np.float32(1.0) + exp_f32(-x)) * up[i]


@njit(parallel=True, cache=True)
def silu_mul_parallel(gate, up, out, n_parts):  # pragma: no cover - compiled
    """`silu_mul` over n_parts slices in one parallel region (each element's result is the serial kernel's)."""
    n = gate.size
    for p in prange(n_parts):
        a, b = p * n // n_parts, (p + 1) * n // n_parts
        silu_mul(gate[a:b], up[a:b], out[a:b])


@njit(parallel=True, cache=True)
def gelu_tanh_mul_parallel(gate, up, out, n_parts):  # pragma: no cover - compiled
    """`gelu_tanh_mul` over n_parts slices in one parallel region (each element's result is the serial kernel's)."""
    n = gate.size
    for p in prange(n_parts):
        a, b = p * n // n_parts, (p + 1) * n // n_parts
        gelu_tanh_mul(gate[a:b], up[a:b], out[a:b])


@njit(parallel=True, cache=True, fastmath=_REASSOC)
def attention_spans(q, k_new, v_new, k_all, v_all, spans, scale, window, softcap, out):  # pragma: no cover
    """`attention_small` for the rows of several sequences in one parallel region over (row, head) pairs.

    spans [n_spans, 4] int64: (slot, start, stop, pos0) — rows start:stop of q [n, H, hd] are tokens of
    slot `slot` at positions pos0..; their keys/values k_new, v_new [n, Hkv, hd] are first stored in that
    slot's cache k_all[slot], v_all[slot] [Hkv, n_ctx, hd]. out [n, H * hd].
    """
    n_head, hd = q.shape[1], q.shape[2]
    g = n_head // k_new.shape[1]
    row_slot = np.empty(q.shape[0], dtype=np.int64)
    row_pos = np.empty(q.shape[0], dtype=np.int64)
    for si in range(spans.shape[0]):
        slot, start, stop, pos0 = spans[si, 0], spans[si, 1], spans[si, 2], spans[si, 3]
        for t in range(start, stop):
            p = pos0 + t - start
            row_slot[t] = slot
            row_pos[t] = p
            k_all[slot, :, p, :] = k_new[t]
            v_all[slot, :, p, :] = v_new[t]
    for item in prange(q.shape[0] * n_head):
        t = item // n_head
        h = item % n_head
        slot = row_slot[t]
        p = row_pos[t]
        s = np.empty(p + 1, dtype=np.float32)
        acc = np.empty(hd, dtype=np.float32)
        _attend_row(q, t, h, k_all[slot], v_all[slot], h // g, p, scale, window, softcap, s, acc, out)
