"""Rotary position embedding, both ggml styles (ggml_rope_ext): "norm" rotates adjacent pairs
(x[2i], x[2i+1]), "neox" rotates halves (x[i], x[i + n_rot/2]). Dimensions past n_rot pass through.
Angles in float64: theta = pos * freq_scale * base^(-2i/n_rot).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.launch import fast


@cuda.jit(device=True, inline=True)
def rope_angle(i, p, n_rot, log_base, freq_scale):
    """(cos, sin) of pair i at position p, in float64: theta = p * freq_scale * base^(-2i/n_rot)."""
    theta = np.float64(p) * freq_scale * math.exp(-2.0 * i / n_rot * log_base)
    return math.cos(theta), math.sin(theta)


@cuda.jit(device=True, inline=True)
def rotate(x0, x1, c, s):
    """(x0 c - x1 s, x0 s + x1 c) in float64, rounded to float32."""
    a = np.float64(x0)
    b = np.float64(x1)
    return np.float32(a * c - b * s), np.float32(a * s + b * c)


@cuda.jit(device=True, inline=True)
def pair_slots(i, n_rot, neox):
    """The two element indices pair i rotates ("norm": 2i, 2i+1; "neox": i, i + n_rot/2); pairs
    with 2i >= n_rot pass through and own slots 2i, 2i+1 in both styles."""
    if neox and 2 * i < n_rot:
        return i, i + n_rot // 2
    return 2 * i, 2 * i + 1


@cuda.jit
def rope_kernel(x, positions, pos_buf, use_positions, n_rot, log_base, freq_scale, neox, out):
    """x, out float32 [n, heads, head_dim]; one thread per (token, head, dim pair)."""
    t = cuda.blockIdx.y
    idx = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    heads = x.shape[1]
    hd = x.shape[2]
    half = hd // 2
    if idx >= heads * half:
        return
    h = idx // half
    i = idx % half  # pair index over the whole head; pairs >= n_rot/2 pass through
    a, b = pair_slots(i, n_rot, neox)
    if 2 * i >= n_rot:
        out[t, h, a] = x[t, h, a]
        out[t, h, b] = x[t, h, b]
        return
    p = positions[t] if use_positions else pos_buf[0] + t
    c, sn = rope_angle(i, p, n_rot, log_base, freq_scale)
    ya, yb = rotate(x[t, h, a], x[t, h, b], c, sn)
    out[t, h, a] = ya
    out[t, h, b] = yb


def rope(x, positions, pos_buf, n_rot: int, base: float, freq_scale: float, neox: bool, out, stream=0) -> None:
    """Rotate x [n, heads, hd] into out at positions (device int32 [n]), or, with positions None,
    at pos_buf[0] + arange(n) (pos_buf: device int32 [1], so a captured graph can be replayed)."""
    n, heads, hd = x.shape
    threads = 128
    use = positions is not None
    fast(rope_kernel)[(max(1, math.ceil(heads * (hd // 2) / threads)), n), threads, stream](
        x,
        positions if use else pos_buf,
        pos_buf,
        use,
        np.int32(n_rot),
        np.float64(math.log(base)),
        np.float64(freq_scale),
        neox,
        out,
    )
