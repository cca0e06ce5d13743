"""Element-wise ops on flat float32 arrays: add/mul (b broadcast by wrap-around), scale, activations.

The GELU is ggml's tanh approximation (ggml_gelu); `gelu_erf` the exact one (ggml_gelu_erf).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import q8_lane
from embedkit.kernels.cuda.launch import fast

THREADS = 256

ADD, MUL = 0, 1
SCALE, SILU, GELU, GELU_ERF = 0, 1, 2, 3
SWIGLU, GEGLU = 0, 1

_SQRT_2_OVER_PI = np.float32(0.7978845608028654)
_GELU_COEF_A = np.float32(0.044715)
_INV_SQRT2 = np.float32(0.7071067811865476)


@cuda.jit(device=True, inline=True)
def _gelu(v):
    return (
        np.float32(0.5)
        * v
        * (np.float32(1.0) + math.tanh(_SQRT_2_OVER_PI * v * (np.float32(1.0) + _GELU_COEF_A * v * v)))
    )


@cuda.jit(device=True, inline=True)
def _silu(v):
    return v / (np.float32(1.0) + math.exp(-v))


@cuda.jit
def binary_kernel(a, b, out, op):
    i = cuda.grid(1)
    if i < out.shape[0]:
        bv = b[i % b.shape[0]]
        out[i] = a[i] + bv if op == ADD else a[i] * bv


@cuda.jit
def unary_kernel(x, out, op, s):
    i = cuda.grid(1)
    if i < out.shape[0]:
        v = x[i]
        if op == SCALE:
            v = v * s
        elif op == SILU:
            v = _silu(v)
        elif op == GELU:
            v = _gelu(v)
        else:
            v = np.float32(0.5) * v * (np.float32(1.0) + math.erf(v * _INV_SQRT2))
        out[i] = v


@cuda.jit
def glu_kernel(gate, up, out, op):
    i = cuda.grid(1)
    if i < out.shape[0]:
        g = gate[i]
        out[i] = (_silu(g) if op == SWIGLU else _gelu(g)) * up[i]


def _blocks(n: int) -> int:
    return max(1, math.ceil(n / THREADS))


def binary(a, b, out, op: int, stream=0) -> None:
    """out = a op b on flat views; b's length divides a's (broadcast over rows)."""
    fast(binary_kernel)[_blocks(out.shape[0]), THREADS, stream](a, b, out, op)


def unary(x, out, op: int, s: float = 1.0, stream=0) -> None:
    """out = op(x) on flat views (SCALE multiplies by `s`)."""
    fast(unary_kernel)[_blocks(out.shape[0]), THREADS, stream](x, out, op, np.float32(s))


def glu(gate, up, out, op: int, stream=0) -> None:
    """out = act(gate) * up on flat views (SWIGLU: silu, GEGLU: tanh-gelu)."""
    fast(glu_kernel)[_blocks(out.shape[0]), THREADS, stream](gate, up, out, op)


@cuda.jit
def copy_cols_kernel(x, c0, out):
    """out[r, j] = x[r, c0 + j]."""
    r = cuda.blockIdx.y
    j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if j < out.shape[1]:
        out[r, j] = x[r, c0 + j]


def copy_cols(x, c0: int, out, stream=0) -> None:
    """out [n, w] = columns c0..c0+w of x [n, k]."""
    n, w = out.shape
    fast(copy_cols_kernel)[(_blocks(w), n), THREADS, stream](x, c0, out)


@cuda.jit
def glu_fused_kernel(gate, up, out, op, xq, xd, want_q, out16, want16):
    """out = act(gate) * up on flat views, plus int8 blocks of 32 (want_q) and/or a float16 copy."""
    i = cuda.grid(1)
    valid = i < out.shape[0]
    v = np.float32(0.0)
    if valid:
        g = gate[i]
        v = (_silu(g) if op == SWIGLU else _gelu(g)) * up[i]
        out[i] = v
        if want16:
            out16[i] = v
    if want_q:
        q, dd = q8_lane(v)
        if valid:
            xq[i] = q
            if cuda.threadIdx.x % 32 == 0:
                xd[i // 32] = dd


def glu_fused(gate, up, out, op: int, xq=None, xd=None, out16=None, stream=0) -> None:
    """glu() that also writes int8 blocks (xq int8, xd float32 flat; row length % 32 == 0) and/or a
    float16 copy (out16 flat) for the next matmul."""
    want_q = xq is not None
    want16 = out16 is not None
    fast(glu_fused_kernel)[_blocks(out.shape[0]), THREADS, stream](
        gate, up, out, op, xq if want_q else out, xd if want_q else out, want_q, out16 if want16 else out, want16
    )
