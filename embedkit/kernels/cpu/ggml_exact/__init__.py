"""Kernels that reproduce llama.cpp's CPU arithmetic (ggml's x86 AVX2 build) bit for bit.

ggml rounds at many points (8-bit activation blocks, float16 K/V/Q and probabilities, a float16
GELU table) and each SIMD kernel sums in its own order; a model as small as Gemma 3 270M amplifies
ulp-sized differences into different greedy tokens. These kernels follow ggml's operation order,
lane layout and fused multiply-adds so that `ggml_exact` backend output equals llama.cpp's.
"""
