"""LLaMA 1/2/3, Mistral (sliding window), SmolLM and other fine-tunes sharing the `llama` tensors.

Pre-norm transformer (Touvron et al. 2023): RMSNorm -> grouped-query attention with rotary
positions -> residual; RMSNorm -> SwiGLU MLP -> residual. llama.cpp's GGUF stores Q/K with their
rows permuted for LLAMA_ROPE_TYPE_NORM (adjacent pairs), so RoPE style is "norm".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from embedkit.backend import Array, Backend, Weight
from embedkit.models.batch import SeqBatch
from embedkit.models.decoder import DecoderModel, Rows
from embedkit.models.kv_cache import ModelState, SlotState


@dataclass
class LlamaLayer:
    """Weights of one block; matrices are (n_out, n_in)."""

    attn_norm: Weight  # [n_embd]
    wq: Weight  # [n_head * head_dim, n_embd]
    wk: Weight  # [n_head_kv * head_dim, n_embd]
    wv: Weight  # [n_head_kv * head_dim, n_embd]
    wo: Weight  # [n_embd, n_head * head_dim]
    bq: Weight | None  # [n_head * head_dim] (Qwen2)
    bk: Weight | None
    bv: Weight | None
    ffn_norm: Weight  # [n_embd]
    w_gate: Weight  # [n_ff, n_embd]
    w_up: Weight  # [n_ff, n_embd]
    w_down: Weight  # [n_embd, n_ff]


class LlamaModel(DecoderModel):
    """The `llama` architecture."""

    rope_style = "norm"

    def load_weights(self) -> None:
        """Bind tensors by their GGUF names; each layer on its own backend."""
        self.w_tok_embd = self.tensor(self.placement.input, "token_embd.weight")
        self.w_output_norm = self.tensor(self.placement.output, "output_norm.weight")
        self.w_output = self.output_weight()
        self.layers: list[LlamaLayer] = []
        for i in range(self.params.n_layer):
            be, p = self.placement.layer(i), f"blk.{i}."

            def t(name: str, optional: bool = False, be=be, p=p):
                return self.tensor(be, p + name, optional)

            self.layers.append(
                LlamaLayer(
                    t("attn_norm.weight"), t("attn_q.weight"), t("attn_k.weight"), t("attn_v.weight"),
                    t("attn_output.weight"), t("attn_q.bias", True), t("attn_k.bias", True),
                    t("attn_v.bias", True), t("ffn_norm.weight"), t("ffn_gate.weight"),
                    t("ffn_up.weight"), t("ffn_down.weight"),
                )
            )  # fmt: skip

    def embed(self, ids: np.ndarray) -> Array:
        """Token embedding lookup."""
        return self.placement.input.get_rows(self.w_tok_embd, ids)

    def layer(
        self, i: int, be: Backend, x: Array, state: ModelState | SlotState, batch: SeqBatch, keep: Rows = None
    ) -> Array:
        """x + Attention(RMSNorm(x)), then + SwiGLU(RMSNorm(.))."""
        hp, w = self.params, self.layers[i]
        n, positions = batch.n_rows, batch.positions
        h = be.rms_norm(x, w.attn_norm, hp.norm_eps)
        q, k, v = be.matmuls(h, [w.wq, w.wk, w.wv], [w.bq, w.bk, w.bv])
        q = be.view(q, (n, hp.n_head, hp.head_dim))
        k = be.view(k, (n, hp.n_head_kv, hp.head_dim))
        v = be.view(v, (n, hp.n_head_kv, hp.head_dim))
        q = be.rope(q, positions, hp.n_rot, hp.rope_base, self.rope_style, hp.rope_freq_scale)
        k = be.rope(k, positions, hp.n_rot, hp.rope_base, self.rope_style, hp.rope_freq_scale)
        a = self.attend(be, i, q, k, v, state, batch, 1.0 / math.sqrt(hp.head_dim), window=hp.sliding_window)
        a, x = self.keep_rows(be, keep, be.matmul(a, w.wo), x)
        x = be.add(x, a)
        h = be.rms_norm(x, w.ffn_norm, hp.norm_eps)
        h = be.swiglu(*be.matmuls(h, [w.w_gate, w.w_up]))
        return be.add(x, be.matmul(h, w.w_down))
