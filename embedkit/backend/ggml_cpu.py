"""The CPU backend with llama.cpp's arithmetic (`--cpu-math ggml`): logits bit-identical to llama.cpp's x86 AVX2
CPU build.

`CPUBackend` computes in float32, the default: its mean KL to a float64 forward of the same weights is ~1e-11
(tests/test_fidelity.py). llama.cpp's CPU build instead rounds
activations to 8-bit blocks before every quantized matmul, keeps K, V, Q and the attention probabilities in
float16 and sums in its SIMD kernels' order; small models such as Gemma 3 270M turn those differences
into a different top-1 token at several percent of positions. This backend runs the kernels of
`embedkit.kernels.cpu.ggml_exact`, which follow ggml's x86 AVX2 code operation for operation, for every op a
decoder's forward uses and every weight type those kernels cover; anything else (other weight types,
encoders' ops) falls back to the float32 kernels it inherits.
"""

from __future__ import annotations

import os

import numpy as np

from embedkit.backend.base import Array, Backend, KVCache, RopeStyle, Weight
from embedkit.backend.cpu import CPUBackend
from embedkit.errors import InputError
from embedkit.kernels.cpu import threads
from embedkit.kernels.cpu.ggml_exact import attention as exact_attention
from embedkit.kernels.cpu.ggml_exact import dots, elementwise, glu, rope
from embedkit.quant import types_with
from embedkit.quant.registry import GGML_EXACT

# Weight types whose matmuls follow llama.cpp (quantized activations, ggml's kernel per type and batch size).
EXACT_MATMUL_TYPES = frozenset(types_with(GGML_EXACT))

# float32: the faithful default; ggml: bit-identical to llama.cpp's x86 AVX2 CPU build
CPU_MATH_CHOICES = ("float32", "ggml")


def cpu_math(choice: str | None = None) -> str:
    """Decoders' CPU arithmetic: `choice` (--cpu-math) if given, else EMBEDKIT_CPU_MATH, else `float32`."""
    if choice is not None:
        if choice not in CPU_MATH_CHOICES:
            raise InputError(f"--cpu-math {choice!r}: expected one of {', '.join(CPU_MATH_CHOICES)}")
        return choice
    value = os.environ.get("EMBEDKIT_CPU_MATH", "").strip() or "float32"
    if value not in CPU_MATH_CHOICES:
        raise InputError(f"EMBEDKIT_CPU_MATH={value!r}: expected one of {', '.join(CPU_MATH_CHOICES)}")
    return value


class GGMLCPUBackend(CPUBackend):
    """CPU backend whose decoder ops reproduce llama.cpp's CPU (x86 AVX2) results exactly."""

    name = "cpu"

    # -- linear algebra (get_rows: the inherited dequantization is ggml's, see ggml_exact.elementwise) ----
    def matmul(self, x: Array, w: Weight, bias: Weight | None = None) -> Array:
        """x @ W.T as llama.cpp computes it for this weight type and number of rows (+ bias, a ggml add)."""
        return self.matmuls(x, [w], [bias])[0]

    def matmuls(self, x: Array, ws: list[Weight], biases: list[Weight | None] | None = None) -> list[Array]:
        """Several matmuls of one input, each with the kernel ggml picks; x is quantized once per activation
        type (ggml quantizes it per matmul, to the same bytes). Other weight types: the float32 kernels."""
        biases = biases or [None] * len(ws)
        if x.ndim != 2 or any(w.ggml_type not in EXACT_MATMUL_TYPES for w in ws):
            return [super(GGMLCPUBackend, self).matmul(x, w, b) for w, b in zip(ws, biases, strict=True)]
        x = np.ascontiguousarray(x, dtype=np.float32)
        threads.apply_num_threads()
        ys = dots.mul_mat_q_shared([(w.data.reshape(w.n_rows, -1), w.ggml_type) for w in ws], x, ws[0].n_cols)
        return [y if b is None else y + b.data for y, b in zip(ys, biases, strict=True)]

    # -- elementwise ---------------------------------------------------------------------
    def scale(self, a: Array, s: float) -> Array:
        """ggml_scale: a * (float)s."""
        return elementwise.scale(a, s)

    def swiglu(self, gate: Array, up: Array) -> Array:
        """ggml_swiglu (ggml's vectorised expf)."""
        return glu.swiglu(gate, up)

    def geglu(self, gate: Array, up: Array) -> Array:
        """ggml_geglu (ggml's float16 GELU table)."""
        return glu.geglu(gate, up)

    def rms_norm(self, x: Array, w: Weight | None, eps: float) -> Array:
        """ggml_rms_norm, then ggml_mul by the weight, as llama.cpp's CPU backend fuses them."""
        if w is None:
            return elementwise.rms_norm(x, eps)
        return elementwise.rms_norm_mul(x, w.data, eps)

    # -- positions and attention ---------------------------------------------------------
    def rope(
        self, x: Array, positions: np.ndarray, n_rot: int, base: float, style: RopeStyle, freq_scale: float = 1.0
    ) -> Array:
        """ggml_rope_ext (ext_factor 0, attn_factor 1)."""
        return rope.rope(x, positions, n_rot, base, style, freq_scale)

    # one cache per slot and attention per sequence (the float32 backend's one-array slots have its layout)
    kv_cache_slots = Backend.kv_cache_slots
    attention_seqs = Backend.attention_seqs

    def kv_cache(self, n_ctx: int, n_kv_heads: int, head_dim: int) -> KVCache:
        """Float16 keys and values laid out as llama.cpp's cache (see ggml_exact.attention)."""
        k, v = exact_attention.new_cache(n_ctx, n_kv_heads, head_dim)
        return KVCache(n_ctx, n_kv_heads, head_dim, k, v, "cpu")

    def attention(
        self,
        q: Array,
        cache: KVCache,
        k_new: Array,
        v_new: Array,
        pos0: int,
        scale: float,
        causal: bool = True,
        window: int | None = None,
        softcap: float | None = None,
    ) -> Array:
        """llama.cpp's attention without flash attention: float16 K·Q, soft_max_ext, float16 KQ·V."""
        if not causal or softcap:
            raise NotImplementedError("llama.cpp-exact attention is causal and without a softcap")
        threads.apply_num_threads()
        return exact_attention.attention(
            np.ascontiguousarray(q, dtype=np.float32), cache.k, cache.v,
            np.ascontiguousarray(k_new, dtype=np.float32), np.ascontiguousarray(v_new, dtype=np.float32),
            pos0, scale, window,
        )  # fmt: skip
