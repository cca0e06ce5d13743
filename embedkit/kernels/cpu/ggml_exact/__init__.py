"""Kernels that reproduce llama.cpp's CPU arithmetic (ggml's x86 AVX2 build) bit for bit.

ggml rounds at many points (8-bit activation blocks, float16 K/V/Q and probabilities, a float16
GELU table) and each SIMD kernel sums in its own order; a model as small as Gemma 3 270M amplifies
ulp-sized differences into different greedy tokens. These kernels follow ggml's operation order,
lane layout and fused multiply-adds, so that `embedkit.backend.ggml_cpu.GGMLCPUBackend` gives
llama.cpp's logits:

- `quantize`: activation rows to Q8_0 / Q8_1 / Q8_K bytes; `dots`: quantized matmuls with the kernel
  ggml picks per weight type and row count (vec_dot, tinyBLAS, repacked Q4_K gemm/gemv, tiled K-quants);
- `f16_matmul`, `softmax`, `attention`: attention over a float16 KV cache without flash attention;
- `elementwise` (get_rows, scale, RMSNorm), `rope`, `glu` (GeGLU, SwiGLU), `expf` (ggml_v_expf);
- `scalar`: the fused multiply-add Numba lacks.
Each is checked against llama.cpp's library and its intermediate tensors (tests/test_ggml_exact_*.py).
"""
