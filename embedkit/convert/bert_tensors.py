"""Hugging Face BERT tensor names -> llama.cpp GGUF tensor names (gguf-py ``tensor_mapping.py``, MODEL_ARCH.BERT)."""

from __future__ import annotations

import re

# Tensors llama.cpp's converter drops: the pooler and the pretraining heads are not used for embeddings.
_SKIPPED = re.compile(r"^(embeddings\.position_ids|pooler\.dense\.(weight|bias)|cls\..*)$")

_GLOBAL = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.LayerNorm": "token_embd_norm",
}

_LAYER = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}

_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


# A sequence-classification head (cross-encoders, rerankers), as llama.cpp's `rank` pooling reads it: the pooler
# (dense + tanh over [CLS]) becomes `cls`, the classifier `cls.output`.
_CLASSIFIER = {"pooler.dense": "cls", "classifier": "cls.output"}


def gguf_tensor_name(hf_name: str, classifier: bool = False) -> str | None:
    """The GGUF name of a HF BERT tensor, None for a tensor llama.cpp skips; KeyError if unknown. With
    `classifier` (a BertForSequenceClassification), the pooler and classifier are kept as `cls`/`cls.output`."""
    name = hf_name.removeprefix("bert.")
    if name.endswith(".gamma"):
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    base, _, suffix = name.rpartition(".")
    if classifier and base in _CLASSIFIER:
        return f"{_CLASSIFIER[base]}.{suffix}"
    if _SKIPPED.match(name):
        return None
    base, _, suffix = name.rpartition(".")
    if base in _GLOBAL:
        return f"{_GLOBAL[base]}.{suffix}"
    m = _LAYER_RE.match(base)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}.{suffix}"
    raise KeyError(hf_name)


def keeps_float32(gguf_name: str, n_dims: int) -> bool:
    """Tensors llama.cpp's converter always stores as F32.

    1-D tensors, norms, biases, position and token-type embeddings.
    """
    return (
        n_dims <= 1
        or gguf_name.endswith("_norm.weight")
        or not gguf_name.endswith(".weight")
        or gguf_name.startswith(("position_embd.", "token_types."))
    )
