"""Numba CPU kernels: dequantize, quantize and fused matvec per ggml type family (see `dispatch`)."""

from embedkit.kernels.cpu import isa as _isa  # noqa: F401,E402 - a bad EMBEDKIT_CPU_ISA fails here, before any kernel
