"""The kernel table: which Numba kernel handles which ggml type."""

from __future__ import annotations

from embedkit.gguf.types import GGMLType
from embedkit.kernels.cpu import (
    dequant_float,
    dequant_kquants,
    dequant_legacy,
    quantize_kquants,
    quantize_legacy,
)

DEQUANTIZERS = {
    GGMLType.F32: dequant_float.dequant_f32,
    GGMLType.F16: dequant_float.dequant_f16,
    GGMLType.BF16: dequant_float.dequant_bf16,
    GGMLType.Q4_0: dequant_legacy.dequant_q4_0,
    GGMLType.Q4_1: dequant_legacy.dequant_q4_1,
    GGMLType.Q5_0: dequant_legacy.dequant_q5_0,
    GGMLType.Q5_1: dequant_legacy.dequant_q5_1,
    GGMLType.Q8_0: dequant_legacy.dequant_q8_0,
    GGMLType.IQ4_NL: dequant_legacy.dequant_iq4_nl,
    GGMLType.Q2_K: dequant_kquants.dequant_q2_k,
    GGMLType.Q3_K: dequant_kquants.dequant_q3_k,
    GGMLType.Q4_K: dequant_kquants.dequant_q4_k,
    GGMLType.Q5_K: dequant_kquants.dequant_q5_k,
    GGMLType.Q6_K: dequant_kquants.dequant_q6_k,
    GGMLType.IQ4_XS: dequant_kquants.dequant_iq4_xs,
}

QUANTIZERS = {
    GGMLType.Q8_0: quantize_legacy.quantize_q8_0,
    GGMLType.Q4_0: quantize_legacy.quantize_q4_0,
    GGMLType.Q4_1: quantize_legacy.quantize_q4_1,
    GGMLType.Q5_0: quantize_legacy.quantize_q5_0,
    GGMLType.Q5_1: quantize_legacy.quantize_q5_1,
    GGMLType.Q4_K: quantize_kquants.quantize_q4_k,
    GGMLType.Q6_K: quantize_kquants.quantize_q6_k,
}
