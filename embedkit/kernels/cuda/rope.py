"""Rotary position embedding, both ggml styles (ggml_rope_ext): "norm" rotates adjacent pairs
(x[2i], x[2i+1]), "neox" rotates halves (x[i], x[i + n_rot/2]). Dimensions past n_rot pass through.
Angles in float64: theta = pos * freq_scale * base^(-2i/n_rot).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.launch import fast


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
    if 2 * i >= n_rot:
        # pass-through: copy the two elements this pair slot owns (same slots in both styles)
        out[t, h, 2 * i] = x[t, h, 2 * i]
        out[t, h, 2 * i + 1] = x[t, h, 2 * i + 1]
        return
    p = positions[t] if use_positions else pos_buf[0] + t
    theta = np.float64(p) * freq_scale * math.exp(-2.0 * i / n_rot * log_base)
    c = math.cos(theta)
    s = math.sin(theta)
    if neox:
        a = i
        b = i + n_rot // 2
    else:
        a = 2 * i
        b = 2 * i + 1
    x0 = np.float64(x[t, h, a])
    x1 = np.float64(x[t, h, b])
    out[t, h, a] = np.float32(x0 * c - x1 * s)
    out[t, h, b] = np.float32(x0 * s + x1 * c)


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
