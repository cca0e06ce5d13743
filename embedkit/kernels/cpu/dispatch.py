"""The kernel tables of the float32 CPU path, derived from the quant registry (`embedkit.quant`): the
dequantizers and quantizers are compiled per type (`dequant.dequant_kernel`, `quantizers.quantize_kernel`)."""

from __future__ import annotations

from embedkit.kernels.cpu import matmul_multirow
from embedkit.kernels.cpu.dequant import dequant_kernel
from embedkit.kernels.cpu.quantizers import quantize_kernel
from embedkit.quant import QUANT_TYPES, types_with
from embedkit.quant.registry import CPU_DEQUANT, CPU_MULTIROW, CPU_QUANTIZE

DEQUANTIZERS = {t: dequant_kernel(t) for t in types_with(CPU_DEQUANT)}

# block types only: F32/F16/BF16 are plain conversions (embedkit.kernels.quantize)
QUANTIZERS = {t: quantize_kernel(t) for t in types_with(CPU_QUANTIZE) if QUANT_TYPES[t].block_size > 1}

# row decoders of the small-batch matmul (`matmul_multirow.multirow_matmul(decoder, w, x, y)`)
MULTIROW_DECODERS = {
    t: getattr(matmul_multirow, f"decode_{QUANT_TYPES[t].kernel_suffix}") for t in types_with(CPU_MULTIROW)
}
# the small-batch matmul of each such type (`matmul_multirow.multirow_kernel(<type>)(w, x, y)`)
MULTIROW_KERNELS = {t: matmul_multirow.multirow_kernel(QUANT_TYPES[t].kernel_suffix) for t in types_with(CPU_MULTIROW)}
