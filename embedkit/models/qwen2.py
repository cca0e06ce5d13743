"""Qwen2 / Qwen2.5 (Yang et al. 2024): LLaMA's block with biases on Q, K and V and NeoX-style RoPE.

The biases are bound by `LlamaModel.load_weights` (`blk.N.attn_{q,k,v}.bias`); Qwen2 differs
only in rotating the two halves of each head (HF `rotate_half`, LLAMA_ROPE_TYPE_NEOX).
"""

from __future__ import annotations

from embedkit.errors import GGUFError
from embedkit.models.llama import LlamaModel


class Qwen2Model(LlamaModel):
    """The `qwen2` architecture."""

    rope_style = "neox"

    def load_weights(self) -> None:
        """LLaMA's tensors; Qwen2 requires the Q/K/V biases."""
        super().load_weights()
        for i, layer in enumerate(self.layers):
            if layer.bq is None or layer.bk is None or layer.bv is None:
                raise GGUFError(f"{self.file.path}: qwen2 layer {i} lacks attn_q/k/v.bias")
