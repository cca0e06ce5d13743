"""ggml's CPU rotary position embedding (ggml_rope_ext without YaRN extrapolation), bit for bit.

ops.cpp builds, per token, a table of angles by the float32 recurrence theta_0 = pos,
theta_{i+1} = theta_i * powf(base, -2.0f/n_rot), and takes cosf/sinf of freq_scale*theta (times
attn_factor). Numba's math.cos/sin/pow on float32 call the same glibc cosf/sinf/powf. GCC contracts the
rotation into x0*cos - x1*sin = fma(x0, cos, -(x1*sin)) and x0*sin + x1*cos = fma(x0, sin, x1*cos)
(the only one of the four contractions that matches the library). 'norm' rotates adjacent pairs
(2i, 2i+1) (LLAMA_ROPE_TYPE_NORM: llama); 'neox' rotates (i, i + n_rot/2) (LLAMA_ROPE_TYPE_NEOX: gemma3, qwen2).
Dimensions past n_rot are copied. ext_factor is 0 (llama.cpp's setting without YaRN scaling).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from embedkit.kernels.cpu.ggml_exact.scalar import fma32

STYLES = {"norm": False, "neox": True}


@njit(cache=True, nogil=True)
def _rope(x, positions, n_rot, base, freq_scale, attn_factor, neox, out):
    n_tok, n_head, head_dim = x.shape
    half = n_rot // 2
    theta_scale = math.pow(base, np.float32(-2.0) / np.float32(n_rot))
    cos_t = np.empty(half, dtype=np.float32)
    sin_t = np.empty(half, dtype=np.float32)
    for t in range(n_tok):
        theta = np.float32(positions[t])
        for i in range(half):
            angle = freq_scale * theta
            cos_t[i] = np.float32(math.cos(angle)) * attn_factor
            sin_t[i] = np.float32(math.sin(angle)) * attn_factor
            theta = theta * theta_scale
        for h in range(n_head):
            src = x[t, h]
            dst = out[t, h]
            for i in range(half):
                if neox:
                    a = i
                    b = i + half
                else:
                    a = 2 * i
                    b = 2 * i + 1
                x0 = src[a]
                x1 = src[b]
                dst[a] = fma32(x0, cos_t[i], -(x1 * sin_t[i]))
                dst[b] = fma32(x0, sin_t[i], x1 * cos_t[i])
            for i in range(n_rot, head_dim):
                dst[i] = src[i]


def rope(
    x: np.ndarray,
    positions: np.ndarray,
    n_rot: int,
    base: float,
    style: str,
    freq_scale: float = 1.0,
    attn_factor: float = 1.0,
) -> np.ndarray:
    """Rotate float32 x [n_tokens, n_heads, head_dim] at int32 positions [n_tokens] as ggml_rope_ext.

    n_rot: rotated dimensions (even, <= head_dim); base: freq_base (Gemma 3: 10000 on sliding-window
    layers, 1e6 on global ones); style: 'norm' or 'neox'.
    """
    if style not in STYLES:
        raise ValueError(f"style must be 'norm' or 'neox', not {style!r}")
    xs = np.ascontiguousarray(x, dtype=np.float32)
    pos = np.ascontiguousarray(positions, dtype=np.int32)
    if xs.ndim != 3 or pos.shape != (xs.shape[0],) or n_rot % 2 or not 0 < n_rot <= xs.shape[2]:
        raise ValueError(f"bad rope shapes: x {xs.shape}, positions {pos.shape}, n_rot {n_rot}")
    out = np.empty_like(xs)
    _rope(xs, pos, n_rot, np.float32(base), np.float32(freq_scale), np.float32(attn_factor), STYLES[style], out)
    return out
