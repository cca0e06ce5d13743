"""ggml_v_expf (vec.h, AVX2+FMA), one lane: the exp of ggml's softmax and SiLU, bit for bit.

The vector function is a degree-5 polynomial after a base-2 range reduction, with fused multiply-adds.
Each of its 8 lanes is computed independently (the slow path it takes when some lane is out of range
gives in-range lanes the same formula), so evaluating `v_expf` element by element reproduces it.
Tails of n % 8 elements use libm's expf in ggml, not this.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from embedkit.kernels.cpu.ggml_exact.scalar import fma32
from embedkit.kernels.cpu.halfbits import bits_to_f32, f32_to_bits


def _c(hexfloat: str) -> np.float32:
    value = float.fromhex(hexfloat)
    assert float(np.float32(value)) == value
    return np.float32(value)


# ggml_v_expf's constants, as its C hex float literals
_ROUND = _c("0x1.8p23")
_LOG2E = _c("0x1.715476p+0")
_LN2_HI = _c("0x1.62e4p-1")
_LN2_LO = _c("0x1.7f7d1cp-20")
_P0 = _c("0x1.0e4020p-7")
_P1 = _c("0x1.573e2ep-5")
_P2 = _c("0x1.555e66p-3")
_P3 = _c("0x1.fffdb6p-2")
_P4 = _c("0x1.ffffecp-1")
_ONE_BITS = np.int32(0x3F800000)
_G_BITS = np.int32(-0x7E000000)  # 0x82000000 as int32
_S1_BITS = np.int32(0x7F000000)


@njit(cache=True, nogil=True, inline="always")
def v_expf(x):
    """One lane of ggml_v_expf(__m256) for a float32 x (exp(x) to ~1.5 ulp, rounded as ggml's)."""
    x = np.float32(x)
    z = fma32(x, _LOG2E, _ROUND)
    n = z - _ROUND
    b = fma32(-n, _LN2_LO, fma32(-n, _LN2_HI, x))
    e = f32_to_bits(z) << np.int32(23)
    k = bits_to_f32(e + _ONE_BITS)
    u = b * b
    j = fma32(fma32(fma32(_P0, b, _P1), u, fma32(_P2, b, _P3)), u, _P4 * b)
    an = abs(n)
    if not an > np.float32(126.0):
        return fma32(j, k, k)
    # large |n|: scale in two steps, s1 * (s2 + s2 * j), or saturate to 0 / inf past 192
    g = _G_BITS if n <= np.float32(0.0) else np.int32(0)
    s1 = bits_to_f32(g + _S1_BITS)
    if an > np.float32(192.0):
        return s1 * s1
    s2 = bits_to_f32(e - g)
    return fma32(s2, j, s2) * s1
