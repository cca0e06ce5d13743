"""ggml's CPU gated FFN activations, bit for bit: geglu (Gemma) and swiglu (LLaMA, Qwen2).

geglu (vec.h, GGML_GELU_FP16): act(g) = 0 for g <= -10, g for g >= 10, else the float16 table entry
for g rounded to float16 (ggml_table_gelu_f16, filled by ggml_cpu_init with the tanh approximation
0.5f*x*(1 + tanhf(sqrt(2/pi)*x*fma(0.044715f*x, x, 1)))); the result is act(g) * up.

swiglu (vec.cpp, ggml_vec_swiglu_f32 with AVX2+FMA): silu(g) * up, silu(g) = g / (1 + exp(-g)) where
exp is ggml_v_expf, an 8-lane polynomial with FMAs. Each lane computes independently (its special-case
blend is per lane), so one scalar routine per element reproduces it; the n % 8 tail uses glibc expf.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from embedkit.kernels.cpu.ggml_exact.expf import v_expf
from embedkit.kernels.cpu.ggml_exact.scalar import fma32
from embedkit.kernels.cpu.halfbits import f16_to_f32, f32_to_f16

_SQRT_2_OVER_PI = np.float32(0.79788456080286535587989211986876)
_GELU_COEF_A = np.float32(0.044715)


@njit(cache=True)
def _gelu_table():
    table = np.empty(65536, dtype=np.uint16)
    half = np.float32(0.5)
    one = np.float32(1.0)
    for i in range(65536):
        x = f16_to_f32(i)
        inner = fma32(_GELU_COEF_A * x, x, one)
        y = half * x * (one + np.float32(math.tanh(_SQRT_2_OVER_PI * x * inner)))
        if y != y:  # ggml's entries for NaN inputs: the default quiet NaN, with the input's sign
            table[i] = (i & 0x8000) | 0x7E00
        else:
            table[i] = f32_to_f16(y)
    return table


GELU_TABLE = _gelu_table()
"""ggml_table_gelu_f16: float16 bits of GELU(x) for each float16 bit pattern x."""


@njit(cache=True, nogil=True)
def _geglu(gate, up, table, out):
    for r in range(gate.shape[0]):
        for i in range(gate.shape[1]):
            g = gate[r, i]
            if g <= np.float32(-10.0):
                out[r, i] = np.float32(0.0)
            elif g >= np.float32(10.0):
                out[r, i] = g * up[r, i]
            else:
                out[r, i] = f16_to_f32(table[f32_to_f16(g)]) * up[r, i]


@njit(cache=True, nogil=True)
def _swiglu(gate, up, out):
    n = gate.shape[1]
    n8 = n - n % 8
    one = np.float32(1.0)
    for r in range(gate.shape[0]):
        for i in range(n8):
            g = gate[r, i]
            out[r, i] = (g / (one + v_expf(np.float32(0.0) - g))) * up[r, i]
        for i in range(n8, n):
            g = gate[r, i]
            out[r, i] = (g / (one + np.float32(math.exp(-g)))) * up[r, i]


def _pair(gate: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if gate.shape != up.shape:
        raise ValueError(f"gate {gate.shape} and up {up.shape} differ")
    g = np.ascontiguousarray(gate, dtype=np.float32).reshape(-1, gate.shape[-1])
    u = np.ascontiguousarray(up, dtype=np.float32).reshape(-1, gate.shape[-1])
    return g, u


def geglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ggml_geglu_split(gate, up) on the CPU backend: GELU(gate) * up (float16-table GELU), float32."""
    g, u = _pair(gate, up)
    out = np.empty_like(g)
    _geglu(g, u, GELU_TABLE, out)
    return out.reshape(gate.shape)


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """ggml_swiglu_split(gate, up) on the CPU backend: SiLU(gate) * up with ggml_v_expf, float32."""
    g, u = _pair(gate, up)
    out = np.empty_like(g)
    _swiglu(g, u, out)
    return out.reshape(gate.shape)
