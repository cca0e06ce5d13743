"""Numba CPU kernels: dequantize, quantize and fused matvec per ggml type family (see `dispatch`)."""
