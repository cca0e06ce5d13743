"""Falcon (Almazrouei et al. 2023): parallel attention and MLP from one LayerNorm, multi-query attention.

Each block computes x + Attn(LN(x)) + MLP(LN(x)) with a fused QKV projection (`attn_qkv`: rows
[queries | keys | values]), NeoX RoPE and a GELU MLP without gate. The Falcon-40B layout (a
second norm `attn_norm_2` feeding the MLP) is honoured when present. GELU is the exact (erf)
form of the reference implementation (HF `FalconMLP`); llama.cpp uses the tanh approximation.
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
class FalconLayer:
    """Weights of one block; matrices are (n_out, n_in)."""

    attn_norm: Weight  # [n_embd]
    attn_norm_b: Weight  # [n_embd]
    attn_norm_2: Weight | None  # [n_embd] (Falcon-40B: the MLP's own norm)
    attn_norm_2_b: Weight | None
    wqkv: Weight  # [(n_head + 2 n_head_kv) * head_dim, n_embd]
    wo: Weight  # [n_embd, n_head * head_dim]
    w_up: Weight  # [n_ff, n_embd]
    w_down: Weight  # [n_embd, n_ff]


class FalconModel(DecoderModel):
    """The `falcon` architecture."""

    def load_weights(self) -> None:
        """Bind tensors by GGUF name."""
        out = self.placement.output
        self.w_tok_embd = self.tensor(self.placement.input, "token_embd.weight")
        self.w_output_norm = self.tensor(out, "output_norm.weight")
        self.w_output_norm_b = self.tensor(out, "output_norm.bias")
        self.w_output = self.output_weight()
        self.layers: list[FalconLayer] = []
        for i in range(self.params.n_layer):
            be, p = self.placement.layer(i), f"blk.{i}."

            def t(name: str, optional: bool = False, be=be, p=p):
                return self.tensor(be, p + name, optional)

            self.layers.append(
                FalconLayer(
                    t("attn_norm.weight"), t("attn_norm.bias"), t("attn_norm_2.weight", True),
                    t("attn_norm_2.bias", True), t("attn_qkv.weight"), t("attn_output.weight"),
                    t("ffn_up.weight"), t("ffn_down.weight"),
                )
            )  # fmt: skip

    def embed(self, ids: np.ndarray) -> Array:
        """Token embedding lookup."""
        return self.placement.input.get_rows(self.w_tok_embd, ids)

    def output_norm(self, be: Backend, x: Array) -> Array:
        """Final LayerNorm with bias."""
        return be.layer_norm(x, self.w_output_norm, self.w_output_norm_b, self.params.norm_eps)

    def layer(
        self, i: int, be: Backend, x: Array, state: ModelState | SlotState, batch: SeqBatch, keep: Rows = None
    ) -> Array:
        """x + Attn(LN(x)) + MLP(LN(x)) (or MLP(LN2(x)) with a second norm)."""
        hp, w = self.params, self.layers[i]
        n, hd, positions = batch.n_rows, hp.head_dim, batch.positions
        h = be.layer_norm(x, w.attn_norm, w.attn_norm_b, hp.norm_eps)
        h_mlp = h if w.attn_norm_2 is None else be.layer_norm(x, w.attn_norm_2, w.attn_norm_2_b, hp.norm_eps)
        q, k, v = be.split_cols(be.matmul(h, w.wqkv), [hp.n_embd_q, hp.n_embd_kv, hp.n_embd_kv])
        q = be.rope(be.view(q, (n, hp.n_head, hd)), positions, hp.n_rot, hp.rope_base, "neox", hp.rope_freq_scale)
        k = be.rope(be.view(k, (n, hp.n_head_kv, hd)), positions, hp.n_rot, hp.rope_base, "neox", hp.rope_freq_scale)
        v = be.view(v, (n, hp.n_head_kv, hd))
        a = be.matmul(self.attend(be, i, q, k, v, state, batch, 1.0 / math.sqrt(hd)), w.wo)
        a, x, h_mlp = self.keep_rows(be, keep, a, x, h_mlp)
        m = be.matmul(be.gelu_erf(be.matmul(h_mlp, w.w_up)), w.w_down)
        return be.add(be.add(x, a), m)
