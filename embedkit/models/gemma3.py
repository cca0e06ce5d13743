"""Gemma 3 (Gemma Team 2025), text decoder as packaged in GGUF (e.g. Gemma 3 270M).

Differences from LLaMA: token embeddings scaled by sqrt(n_embd); RMSNorm on each head's queries
and keys (QK-norm); extra RMSNorms after attention and after the MLP ("sandwich" norms); GeGLU
with tanh GELU; local layers attend within a sliding window with RoPE base 10000 while every
6th layer is global with `{arch}.rope.freq_base`; NeoX RoPE; output tied to the embedding.
llama.cpp's converter stores Gemma's RMSNorm weights as (1 + w), so the norms here are plain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from embedkit.backend import Array, Backend, Weight
from embedkit.models.batch import SeqBatch
from embedkit.models.decoder import DecoderModel, Rows
from embedkit.models.kv_cache import ModelState, SlotState

LOCAL_ROPE_BASE = 10000.0  # llama.cpp's rope_freq_base_train_swa for gemma3
SWA_PATTERN = 6  # layers i with i % 6 == 5 are global


@dataclass
class Gemma3Layer:
    """Weights of one block; matrices are (n_out, n_in)."""

    attn_norm: Weight  # [n_embd]
    wq: Weight  # [n_head * head_dim, n_embd]
    wk: Weight  # [n_head_kv * head_dim, n_embd]
    wv: Weight  # [n_head_kv * head_dim, n_embd]
    q_norm: Weight  # [head_dim]
    k_norm: Weight  # [head_dim]
    wo: Weight  # [n_embd, n_head * head_dim]
    post_attn_norm: Weight  # [n_embd]
    ffn_norm: Weight  # [n_embd]
    w_gate: Weight  # [n_ff, n_embd]
    w_up: Weight  # [n_ff, n_embd]
    w_down: Weight  # [n_embd, n_ff]
    post_ffn_norm: Weight  # [n_embd]


class Gemma3Model(DecoderModel):
    """The `gemma3` architecture."""

    def load_weights(self) -> None:
        """Bind tensors by GGUF name and decide which layers are local (sliding window)."""
        f, hp = self.file, self.params
        self.w_tok_embd = self.tensor(self.placement.input, "token_embd.weight")
        self.w_output_norm = self.tensor(self.placement.output, "output_norm.weight")
        self.w_output = self.output_weight()
        pattern = f.arch_get("attention.sliding_window_pattern")
        if pattern is None or isinstance(pattern, int | float):
            n = int(pattern or SWA_PATTERN)
            self.is_local = [i % n < n - 1 for i in range(hp.n_layer)]
        else:
            self.is_local = [bool(b) for b in pattern]
        self.local_rope_base = float(f.arch_get("rope.freq_base_swa", LOCAL_ROPE_BASE))
        self.attn_scale = float(f.arch_get("attention.scale", 1.0 / math.sqrt(hp.head_dim)))
        self.layers: list[Gemma3Layer] = []
        for i in range(hp.n_layer):
            be, p = self.placement.layer(i), f"blk.{i}."
            names = (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "attn_output",
                "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm",
            )  # fmt: skip
            self.layers.append(Gemma3Layer(*(self.tensor(be, f"{p}{n}.weight") for n in names)))

    def embed(self, ids: np.ndarray) -> Array:
        """Embedding lookup scaled by sqrt(n_embd)."""
        be = self.placement.input
        return be.scale(be.get_rows(self.w_tok_embd, ids), math.sqrt(self.params.n_embd))

    def layer(
        self, i: int, be: Backend, x: Array, state: ModelState | SlotState, batch: SeqBatch, keep: Rows = None
    ) -> Array:
        """x + PostNorm(Attn(Norm(x))), then + PostNorm(GeGLU(Norm(.)))."""
        hp, w = self.params, self.layers[i]
        n, eps, positions = batch.n_rows, hp.norm_eps, batch.positions
        local = self.is_local[i]
        base = self.local_rope_base if local else hp.rope_base
        freq_scale = 1.0 if local else hp.rope_freq_scale
        h = be.rms_norm(x, w.attn_norm, eps)
        q, k, v = be.matmuls(h, [w.wq, w.wk, w.wv])
        q = be.rms_norm(be.view(q, (n, hp.n_head, hp.head_dim)), w.q_norm, eps)
        k = be.rms_norm(be.view(k, (n, hp.n_head_kv, hp.head_dim)), w.k_norm, eps)
        v = be.view(v, (n, hp.n_head_kv, hp.head_dim))
        q = be.rope(q, positions, hp.n_rot, base, "neox", freq_scale)
        k = be.rope(k, positions, hp.n_rot, base, "neox", freq_scale)
        window = hp.sliding_window if local else None
        # llama.cpp scales the queries (before its float16 rounding of them), not the scores
        q = be.scale(q, self.attn_scale)
        a = self.attend(be, i, q, k, v, state, batch, 1.0, window=window)
        a, x = self.keep_rows(be, keep, be.matmul(a, w.wo), x)
        x = be.add(x, be.rms_norm(a, w.post_attn_norm, eps))
        h = be.rms_norm(x, w.ffn_norm, eps)
        h = be.geglu(*be.matmuls(h, [w.w_gate, w.w_up]))
        return be.add(x, be.rms_norm(be.matmul(h, w.w_down), w.post_ffn_norm, eps))
