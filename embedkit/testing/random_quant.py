"""Random ggml tensor bytes with sane scales, and random-weight GGUF models built from them.

The bytes are drawn directly (random quants, float16 scales sized so that weights come out near
`scale`), with no float weights quantized on the way: a 7B-shaped Q4_0 file is written in seconds.
Used by the GPU tests and `benchmarks/bench_gpu.py` (the GPU machine receives no model files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit.gguf.types import GGMLType, type_info
from embedkit.quant import QUANT_TYPES

# rough magnitude of (quant * sub-scale) per type, to size the block scales (at the registry's float16 scale
# fields); the types with a random generator
# rough magnitude of (quant * sub-scale) per type, to size the block scales
_LEVELS = {"Q4_0": 8, "Q4_1": 8, "Q5_0": 16, "Q5_1": 16, "Q8_0": 128, "Q4_K": 8 * 32, "Q6_K": 32 * 64}


def random_tensor_bytes(
    ggml_type: str, n_rows: int, n_cols: int, rng: np.random.Generator, scale: float = 0.02
) -> np.ndarray:
    """uint8 [n_rows, row_bytes] of random quants whose dequantized values are about `scale` in size."""
    info = type_info(ggml_type)
    name = info.name
    if name == "F32":
        return (rng.standard_normal((n_rows, n_cols), dtype=np.float32) * scale).view(np.uint8)
    if name == "F16":
        w = rng.standard_normal((n_rows, n_cols), dtype=np.float32) * scale
        return w.astype(np.float16).view(np.uint8)
    if name not in _LEVELS:
        raise ValueError(f"no random generator for {name}")
    nb = n_cols // info.block_size
    raw = np.frombuffer(rng.bytes(n_rows * nb * info.type_size), dtype=np.uint8).reshape(n_rows, nb, -1).copy()
    for off in QUANT_TYPES[GGMLType[name]].f16_scales:
        d = (rng.uniform(0.5, 1.5, size=(n_rows, nb)).astype(np.float32) * (scale / _LEVELS[name])).astype(np.float16)
        raw[:, :, off : off + 2] = d.view(np.uint8).reshape(n_rows, nb, 2)
    return raw.reshape(n_rows, nb * info.type_size)


def write_random_gguf(
    path: str | Path,
    arch: str,
    metadata: dict,
    tensors: list[tuple[str, tuple[int, ...], str]],
    seed: int = 0,
) -> Path:
    """Write a GGUF of `arch` with `metadata` ({key: value}, keys without the arch prefix get it)
    and random tensors [(name, numpy shape, ggml type)]; 1-D tensors are float32 near 1.0."""
    from embedkit.gguf.writer import GGUFWriter

    w = GGUFWriter(arch)
    for key, value in metadata.items():
        w.add(key if key.startswith(("general.", "tokenizer.")) else f"{arch}.{key}", value)
    for i, (name, shape, gtype) in enumerate(tensors):
        rng = np.random.default_rng([seed, i])
        if len(shape) == 1:
            w.add_tensor(name, (1.0 + 0.05 * rng.standard_normal(shape[0])).astype(np.float32), "F32", shape)
        else:
            rows, cols = int(np.prod(shape[:-1])), shape[-1]
            w.add_tensor(name, lambda rng=rng, g=gtype, r=rows, c=cols: random_tensor_bytes(g, r, c, rng), gtype, shape)
    return w.write(path)


def llama_spec(
    n_embd: int,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
    n_vocab: int,
    gtype: str,
    n_ctx: int = 4096,
    window: int | None = None,
) -> tuple[dict, list]:
    """(metadata, tensors) of a LLaMA/Mistral-shaped model with every matrix in `gtype`."""
    hd = n_embd // n_head
    meta = {
        "embedding_length": n_embd, "block_count": n_layer, "attention.head_count": n_head,
        "attention.head_count_kv": n_head_kv, "feed_forward_length": n_ff, "context_length": n_ctx,
        "attention.layer_norm_rms_epsilon": 1e-5, "rope.freq_base": 10000.0, "vocab_size": n_vocab,
        "rope.dimension_count": hd,
    }  # fmt: skip
    if window:
        meta["attention.sliding_window"] = window
    t = [("token_embd.weight", (n_vocab, n_embd), gtype), ("output_norm.weight", (n_embd,), "F32"),
         ("output.weight", (n_vocab, n_embd), gtype)]  # fmt: skip
    for i in range(n_layer):
        p = f"blk.{i}."
        t += [
            (p + "attn_norm.weight", (n_embd,), "F32"), (p + "attn_q.weight", (n_head * hd, n_embd), gtype),
            (p + "attn_k.weight", (n_head_kv * hd, n_embd), gtype),
            (p + "attn_v.weight", (n_head_kv * hd, n_embd), gtype),
            (p + "attn_output.weight", (n_embd, n_head * hd), gtype), (p + "ffn_norm.weight", (n_embd,), "F32"),
            (p + "ffn_gate.weight", (n_ff, n_embd), gtype), (p + "ffn_up.weight", (n_ff, n_embd), gtype),
            (p + "ffn_down.weight", (n_embd, n_ff), gtype),
        ]  # fmt: skip
    return meta, t


def gemma3_spec(
    n_embd: int,
    n_layer: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    n_ff: int,
    n_vocab: int,
    gtype: str,
    window: int = 512,
    n_ctx: int = 32768,
) -> tuple[dict, list]:
    """(metadata, tensors) of a Gemma 3-shaped model (tied embeddings, q/k norms, sliding window)."""
    meta = {
        "embedding_length": n_embd, "block_count": n_layer, "attention.head_count": n_head,
        "attention.head_count_kv": n_head_kv, "attention.key_length": head_dim,
        "attention.value_length": head_dim, "feed_forward_length": n_ff, "context_length": n_ctx,
        "attention.layer_norm_rms_epsilon": 1e-6, "rope.freq_base": 1000000.0,
        "attention.sliding_window": window, "vocab_size": n_vocab,
    }  # fmt: skip
    t = [("token_embd.weight", (n_vocab, n_embd), gtype), ("output_norm.weight", (n_embd,), "F32")]
    for i in range(n_layer):
        p = f"blk.{i}."
        t += [
            (p + "attn_norm.weight", (n_embd,), "F32"), (p + "attn_q.weight", (n_head * head_dim, n_embd), gtype),
            (p + "attn_k.weight", (n_head_kv * head_dim, n_embd), gtype),
            (p + "attn_v.weight", (n_head_kv * head_dim, n_embd), gtype),
            (p + "attn_q_norm.weight", (head_dim,), "F32"), (p + "attn_k_norm.weight", (head_dim,), "F32"),
            (p + "attn_output.weight", (n_embd, n_head * head_dim), gtype),
            (p + "post_attention_norm.weight", (n_embd,), "F32"), (p + "ffn_norm.weight", (n_embd,), "F32"),
            (p + "ffn_gate.weight", (n_ff, n_embd), gtype), (p + "ffn_up.weight", (n_ff, n_embd), gtype),
            (p + "ffn_down.weight", (n_embd, n_ff), gtype), (p + "post_ffw_norm.weight", (n_embd,), "F32"),
        ]  # fmt: skip
    return meta, t


def bert_spec(
    n_embd: int, n_layer: int, n_head: int, n_ff: int, n_vocab: int, gtype: str = "F32", n_ctx: int = 512
) -> tuple[dict, list]:
    """(metadata, tensors) of a BERT-shaped encoder (MiniLM: 384, 6, 12, 1536, 30522), mean pooling."""
    meta = {
        "embedding_length": n_embd, "block_count": n_layer, "attention.head_count": n_head,
        "feed_forward_length": n_ff, "context_length": n_ctx, "attention.layer_norm_epsilon": 1e-12,
        "pooling_type": 1,
    }  # fmt: skip
    t = [("token_embd.weight", (n_vocab, n_embd), gtype), ("position_embd.weight", (n_ctx, n_embd), gtype),
         ("token_types.weight", (2, n_embd), gtype), ("token_embd_norm.weight", (n_embd,), "F32"),
         ("token_embd_norm.bias", (n_embd,), "F32")]  # fmt: skip
    for i in range(n_layer):
        p = f"blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            t += [(p + name + ".weight", (n_embd, n_embd), gtype), (p + name + ".bias", (n_embd,), "F32")]
        t += [
            (p + "attn_output_norm.weight", (n_embd,), "F32"), (p + "attn_output_norm.bias", (n_embd,), "F32"),
            (p + "ffn_up.weight", (n_ff, n_embd), gtype), (p + "ffn_up.bias", (n_ff,), "F32"),
            (p + "ffn_down.weight", (n_embd, n_ff), gtype), (p + "ffn_down.bias", (n_embd,), "F32"),
            (p + "layer_output_norm.weight", (n_embd,), "F32"), (p + "layer_output_norm.bias", (n_embd,), "F32"),
        ]  # fmt: skip
    return meta, t
