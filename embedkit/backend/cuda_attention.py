"""The CUDA backend's positions and attention: RoPE, the KV cache, causal and padded attention.

Mixed into `CUDABackend`. The KV cache is float32 [n_ctx, n_kv_heads, head_dim] (position-major). A
one-token step's decode attention also writes the int8 blocks of its output for the next matvec; while
recording a graph, the RoPE of q and k and the KV store run inside it (`FUSE_DECODE_ROPE`: the graph drops
the two RoPE launches; the roped q/k arrays are then never written, which holds because every architecture
hands them only to the attention). A step that leaves the recording recomputes its prefix with the unfused
launches. Prompt attention runs two cuBLAS batched GEMMs around a masked softmax.
"""

from __future__ import annotations

import numpy as np

from embedkit.backend.base import Array, KVCache, RopeStyle
from embedkit.backend.cuda_linear import MATVEC_MAX_ROWS

PROMPT_ATTENTION_BLAS = True  # prompts: cuBLAS batched GEMMs (else the tiled shared-memory kernel)
FUSE_DECODE_ROPE = True  # graphs: RoPE of q and k + KV store inside the decode attention kernel


class CUDAAttention:
    """`rope`, `kv_cache`, `attention` and `attention_batch` of `CUDABackend`."""

    def rope(
        self,
        x: Array,
        positions: np.ndarray,
        n_rot: int,
        base: float,
        style: RopeStyle,
        freq_scale: float = 1.0,
    ) -> Array:
        """Rotary embedding of [n, heads, hd]; consecutive positions go through the step's pos buffer."""
        rope = self._k.rope
        positions = np.asarray(positions, dtype=np.int32).reshape(-1)
        n = x.shape[0]
        p0 = int(positions[0])
        # 2..MATVEC_MAX_ROWS rows always read their positions from an array: a batch of several sequences'
        # decode rows may happen to be consecutive, and a recorded step must not depend on that
        consecutive = n == 1 or (
            n > MATVEC_MAX_ROWS and bool(np.all(positions == np.arange(p0, p0 + n, dtype=np.int32)))
        )
        pos_buf = self.steps.pos(p0)
        pos_arr = None if consecutive else self.steps.input(positions, ("positions",))
        neox = style == "neox"

        def build():
            out = self._empty(x.shape)
            return out, lambda s: rope.rope(x, pos_arr, pos_buf, n_rot, base, freq_scale, neox, out, s)

        out = self.steps.op(("rope", x.shape, n_rot, base, style, freq_scale, consecutive), n, build)
        if n == 1:
            self.steps.mark(out, ("rope", x, (n_rot, base, freq_scale, neox)))
        return out

    def kv_cache(self, n_ctx: int, n_kv_heads: int, head_dim: int) -> KVCache:
        """Float32 keys and values in VRAM, laid out [n_ctx, n_kv_heads, head_dim] (position-major)."""
        k = self._empty((n_ctx, n_kv_heads, head_dim))
        v = self._empty((n_ctx, n_kv_heads, head_dim))
        return KVCache(n_ctx, n_kv_heads, head_dim, k, v, "cuda")

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
        """Store k_new/v_new in the VRAM cache at pos0.., then attend (see Backend.attention)."""
        attention, prefill = self._k.attention, self._k.attention_prefill
        n, heads, hd = q.shape
        pos_buf = self.steps.pos(pos0)
        win = int(window) if window else 0
        cap = float(softcap) if softcap else 0.0

        def build():
            out = self._empty((n, heads * hd))
            blocks = None
            if not (attention.decode_ok(hd) and prefill.prefill_ok(hd)):
                attend = lambda s: attention.attention_cache(  # noqa: E731
                    q, cache.k, cache.v, pos_buf, causal, win, scale, cap, self._dummy_i32, out, s
                )
            elif n == 1:
                xq, xd = blocks = self._k.quant_fast.activation_buffers(n, heads * hd, self.stream)
                attend = lambda s: attention.attention_decode(  # noqa: E731
                    q, cache.k, cache.v, pos_buf, causal, win, scale, cap, out, xq.view(np.int8), xd, s
                )
                self._fuse_decode_rope(q, cache, k_new, v_new, pos_buf, causal, win, scale, cap, out, blocks)
            elif (
                PROMPT_ATTENTION_BLAS
                and n > MATVEC_MAX_ROWS
                and self._cp is not None
                and attention.blas_ok(n, heads, pos0 + n)
            ):
                cp_stream = self._cp_stream.ptr
                attend = lambda s: attention.attention_blas(  # noqa: E731
                    q, cache.k, cache.v, pos0, pos_buf, causal, win, scale, cap, out, self._empty, s, cp_stream
                )
            else:
                o16 = self._empty((n, heads * hd), np.float16) if n > MATVEC_MAX_ROWS and self._cp else None
                if o16 is not None:
                    self.steps.keep_f16(out, o16)
                attend = lambda s: prefill.attention_prefill(  # noqa: E731
                    q, cache.k, cache.v, pos_buf, causal, win, scale, cap, out, o16, s
                )

            def fn(s):
                attention.kv_store(k_new, v_new, cache.k, cache.v, pos_buf, s)
                attend(s)

            return out, fn, blocks

        return self.steps.op(("attention", q.shape, id(cache), scale, causal, window, softcap), n, build)

    def _fuse_decode_rope(self, q, cache, k_new, v_new, pos_buf, causal, win, scale, cap, out, blocks) -> None:
        """While recording: when q and k_new come from this step's RoPEs (same parameters), the graph runs
        one decode attention that ropes q and k and stores k and v in place of the two RoPEs, the KV store
        and the attention (same results)."""
        rq, rk = self.steps.marked(q), self.steps.marked(k_new)
        if not (FUSE_DECODE_ROPE and rq is not None and rk is not None and rq[1][0] == rk[1][0] == "rope"):
            return
        (iq, (_, q_in, params)), (ik, (_, k_in, k_params)) = rq, rk
        if params != k_params:
            return
        attention, (xq, xd) = self._k.attention, blocks
        n_rot, base, freq_scale, neox = params
        self.steps.capture_next_as(
            lambda s: attention.attention_decode(
                q_in, cache.k, cache.v, pos_buf, causal, win, scale, cap, out, xq.view(np.int8), xd, s,
                rope=(k_in, v_new, n_rot, base, freq_scale, neox),
            ),
            drop=(iq, ik),
        )  # fmt: skip

    def attention_batch(self, q: Array, k: Array, v: Array, mask: np.ndarray, scale: float) -> Array:
        """Padded bidirectional attention: [b, t, heads, hd] -> [b, t, heads * hd]."""
        attention = self._k.attention
        b, t, heads, hd = q.shape
        mask_dev = self.steps.input(np.asarray(mask, dtype=np.int32).reshape(b, t), ("mask",))

        def build():
            out = self._empty((b * t, heads * hd))
            fn = lambda s: attention.attention_batch(q, k, v, mask_dev, scale, out, s)  # noqa: E731
            return out.reshape(b, t, heads * hd), fn

        return self.steps.op(("attention_batch", q.shape, scale), b * t, build)
