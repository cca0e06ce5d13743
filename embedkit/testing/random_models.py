"""GGUF models with random weights, laid out exactly as llama.cpp's converter writes them.

Used by the model tests (tiny shapes, compared with Hugging Face `transformers` loaded with the
same weights) and by GPU benchmarks (real shapes such as Mistral 7B, which can't ship model
files). Matrices are quantized with `embedkit.kernels.quantize`; norms and biases stay F32.

    write_random_model(path, "llama", {"n_embd": 256, ...}, ggml_type="Q4_K", seed=0)
    write_random_model(path, "llama", "mistral-7b", ggml_type="Q4_0")   # a named real shape

For real shapes the random rows of each matrix are generated and quantized once per
(shape, type) and reused by every layer (`distinct_layers=False`, the default when the model
is large), so a 7B-shaped file is written at disk speed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from embedkit import kernels
from embedkit.errors import InputError
from embedkit.gguf.types import GGMLType, ggml_type, type_info
from embedkit.gguf.writer import GGUFWriter

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(n_vocab=320, n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512, n_ctx=128),
    "mistral-7b": dict(
        n_vocab=32000, n_embd=4096, n_layer=32, n_head=32, n_head_kv=8, n_ff=14336, n_ctx=32768,
        rope_base=10000.0, eps=1e-5, sliding_window=4096,
    ),
    "gemma3-270m": dict(
        n_vocab=262144, n_embd=640, n_layer=18, n_head=4, n_head_kv=1, head_dim=256, n_ff=2048,
        n_ctx=32768, rope_base=1_000_000.0, eps=1e-6, sliding_window=512,
    ),
    "minilm-l6": dict(n_vocab=30522, n_embd=384, n_layer=6, n_head=12, n_ff=1536, n_ctx=512, eps=1e-12),
}  # fmt: skip

ARCHITECTURES = ("llama", "qwen2", "falcon", "gemma3", "bert")


def _shape(shape_params: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(shape_params, str):
        if shape_params not in SHAPES:
            raise InputError(f"unknown shape {shape_params!r}; known: {', '.join(SHAPES)}")
        shape_params = SHAPES[shape_params]
    s = dict(SHAPES["tiny"])
    s.update(shape_params)
    s.setdefault("n_head_kv", s["n_head"])
    s.setdefault("head_dim", s["n_embd"] // s["n_head"])
    s.setdefault("rope_base", 10000.0)
    s.setdefault("eps", 1e-5)
    return s


def _vocab(n_vocab: int, arch: str) -> tuple[list[str], list[float], list[int]]:
    """A synthetic SPM-like (or WordPiece for bert) vocabulary: specials, bytes, then made-up pieces."""
    if arch == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
        pieces = specials + letters + [f"##{c}" for c in letters]
    else:
        specials = ["<unk>", "<s>", "</s>"]
        pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    i = 0
    while len(pieces) < n_vocab:
        pieces.append(f"w{i}" if arch == "bert" else f"\u2581w{i}")
        i += 1
    pieces = pieces[:n_vocab]
    types = [3 if p in ("<unk>", "<s>", "</s>", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") else 1 for p in pieces]
    if arch != "bert":
        types = [6 if p.startswith("<0x") else t for p, t in zip(pieces, types, strict=True)]
        types[0] = 2
    scores = [-float(i) for i in range(len(pieces))]
    return pieces, scores, types


class _Source:
    """Random tensors from one seeded generator, quantized on demand."""

    def __init__(self, seed: int, ggml_type_: GGMLType, distinct_layers: bool):
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.type = ggml_type_
        self.distinct = distinct_layers
        self._shared: dict[tuple[int, int, int, str], np.ndarray] = {}

    def matrix(self, n_rows: int, n_cols: int, kind: str, std: float | None = None) -> np.ndarray:
        """A (n_rows, n_cols) weight with std 1/sqrt(n_cols) (or `std`), in the model's type."""
        std = std if std is not None else 1.0 / math.sqrt(n_cols)
        t = self.type
        if t.name not in ("F32", "F16") and n_cols % type_info(t).block_size:
            t = GGMLType.F16 if n_cols % 32 else GGMLType.Q8_0  # as llama.cpp falls back
        if self.distinct:
            w = self.rng.standard_normal((n_rows, n_cols), dtype=np.float32) * np.float32(std)
            return w if t == GGMLType.F32 else kernels.quantize(w, t)
        key = (n_rows, n_cols, int(t), kind)
        if key not in self._shared:
            self._shared[key] = self._tiled(n_rows, n_cols, t, std)
        return self._shared[key]

    def _tiled(self, n_rows: int, n_cols: int, t: GGMLType, std: float) -> np.ndarray:
        block = min(n_rows, 512)
        w = self.rng.standard_normal((block, n_cols), dtype=np.float32) * np.float32(std)
        q = w if t == GGMLType.F32 else kernels.quantize(w, t)
        q = q if q.dtype == np.uint8 else np.ascontiguousarray(q).view(np.uint8).reshape(block, -1)
        reps = -(-n_rows // block)
        return np.tile(q, (reps, 1))[:n_rows]

    def type_of(self, n_cols: int) -> GGMLType:
        """The ggml type `matrix` uses for rows of n_cols."""
        t = self.type
        if t.name not in ("F32", "F16") and n_cols % type_info(t).block_size:
            return GGMLType.F16 if n_cols % 32 else GGMLType.Q8_0
        return t

    def vector(self, n: int, center: float, spread: float) -> np.ndarray:
        """An F32 vector center + spread * N(0, 1) (norm weights, biases)."""
        return (center + spread * self.rng.standard_normal(n)).astype(np.float32)


def write_random_model(
    path: str | os.PathLike[str],
    arch: str,
    shape_params: dict[str, Any] | str,
    ggml_type: str | int | GGMLType = "F32",
    seed: int = 0,
    distinct_layers: bool | None = None,
) -> Path:
    """Write a random-weight GGUF model of `arch` with llama.cpp's tensor names and metadata.

    shape_params: a dict (n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_ctx,
    rope_base, eps, sliding_window) or a name from SHAPES. Matrices use `ggml_type` (falling back
    to Q8_0/F16 for rows the type's block size does not divide, as llama.cpp's quantizer does).
    distinct_layers: fresh random weights per layer (default: yes below 10M parameters per layer).
    """
    if arch not in ARCHITECTURES:
        raise InputError(f"write_random_model: unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    s = _shape(shape_params)
    gt = _gtype(ggml_type)
    if distinct_layers is None:
        distinct_layers = s["n_embd"] * s["n_ff"] * 3 < 10_000_000
    src = _Source(seed, gt, distinct_layers)
    w = GGUFWriter(arch)
    _metadata(w, arch, s)
    tensors = _TENSOR_BUILDERS[arch](s, src)
    for name, (make, t, np_shape) in tensors.items():
        w.add_tensor(name, make, t, np_shape)
    return w.write(path)


def _gtype(t: str | int | GGMLType) -> GGMLType:
    return ggml_type(t)


def _metadata(w: GGUFWriter, arch: str, s: dict[str, Any]) -> None:
    from embedkit.gguf.constants import ValueType

    u32, f32 = ValueType.UINT32, ValueType.FLOAT32
    w.add("general.name", f"random-{arch}")
    w.add(f"{arch}.context_length", s["n_ctx"], u32)
    w.add(f"{arch}.embedding_length", s["n_embd"], u32)
    w.add(f"{arch}.feed_forward_length", s["n_ff"], u32)
    w.add(f"{arch}.block_count", s["n_layer"], u32)
    w.add(f"{arch}.attention.head_count", s["n_head"], u32)
    if arch == "bert":
        w.add(f"{arch}.attention.layer_norm_epsilon", s["eps"], f32)
        w.add(f"{arch}.attention.causal", False)
        w.add(f"{arch}.pooling_type", 1, u32)
    else:
        w.add(f"{arch}.attention.head_count_kv", s["n_head_kv"], u32)
        w.add(f"{arch}.rope.freq_base", s["rope_base"], f32)
        if arch == "falcon":
            w.add(f"{arch}.attention.layer_norm_epsilon", s["eps"], f32)
        else:
            w.add(f"{arch}.attention.layer_norm_rms_epsilon", s["eps"], f32)
        if arch in ("llama",):
            w.add(f"{arch}.rope.dimension_count", s["head_dim"], u32)
            w.add(f"{arch}.vocab_size", s["n_vocab"], u32)
        if arch == "gemma3":
            w.add(f"{arch}.attention.key_length", s["head_dim"], u32)
            w.add(f"{arch}.attention.value_length", s["head_dim"], u32)
        if s.get("sliding_window") and arch in ("llama", "gemma3"):
            w.add(f"{arch}.attention.sliding_window", s["sliding_window"], u32)
    tokens, scores, types = _vocab(s["n_vocab"], arch)
    if arch == "bert":
        w.add("tokenizer.ggml.model", "bert")
        w.add("tokenizer.ggml.tokens", tokens)
        w.add("tokenizer.ggml.token_type", types, item_type=ValueType.INT32)
        for key, tok in (("unknown", 1), ("seperator", 3), ("padding", 0), ("cls", 2), ("mask", 4)):
            w.add(f"tokenizer.ggml.{key}_token_id", tok, u32)
    else:
        w.add("tokenizer.ggml.model", "llama")
        w.add("tokenizer.ggml.pre", "default")
        w.add("tokenizer.ggml.tokens", tokens)
        w.add("tokenizer.ggml.scores", scores, item_type=ValueType.FLOAT32)
        w.add("tokenizer.ggml.token_type", types, item_type=ValueType.INT32)
        w.add("tokenizer.ggml.unknown_token_id", 0, u32)
        w.add("tokenizer.ggml.bos_token_id", 1, u32)
        w.add("tokenizer.ggml.eos_token_id", 2, u32)
        w.add("tokenizer.ggml.add_bos_token", True)


Builder = dict[str, tuple[Callable[[], np.ndarray], GGMLType, tuple[int, ...]]]


def _mat(out: Builder, src: _Source, name: str, n_rows: int, n_cols: int, std: float | None = None) -> None:
    kind = name.split(".")[-2]
    out[name] = (lambda: src.matrix(n_rows, n_cols, kind, std), src.type_of(n_cols), (n_rows, n_cols))


def _vec(out: Builder, src: _Source, name: str, n: int, center: float, spread: float) -> None:
    v = src.vector(n, center, spread)
    out[name] = (lambda: v, GGMLType.F32, (n,))


def _decoder_tensors(s: dict[str, Any], src: _Source, arch: str) -> Builder:
    d, hd, ff = s["n_embd"], s["head_dim"], s["n_ff"]
    nq, nkv = s["n_head"] * hd, s["n_head_kv"] * hd
    norm_center = 1.0
    out: Builder = {}
    _mat(out, src, "token_embd.weight", s["n_vocab"], d, std=1.0 if arch != "gemma3" else 1.0 / math.sqrt(d))
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        if arch == "falcon":
            _vec(out, src, p + "attn_norm.weight", d, norm_center, 0.1)
            _vec(out, src, p + "attn_norm.bias", d, 0.0, 0.1)
            _mat(out, src, p + "attn_qkv.weight", nq + 2 * nkv, d)
            _mat(out, src, p + "attn_output.weight", d, nq)
            _mat(out, src, p + "ffn_up.weight", ff, d)
            _mat(out, src, p + "ffn_down.weight", d, ff)
            continue
        _vec(out, src, p + "attn_norm.weight", d, norm_center, 0.1)
        _mat(out, src, p + "attn_q.weight", nq, d)
        _mat(out, src, p + "attn_k.weight", nkv, d)
        _mat(out, src, p + "attn_v.weight", nkv, d)
        if arch == "qwen2":
            _vec(out, src, p + "attn_q.bias", nq, 0.0, 0.1)
            _vec(out, src, p + "attn_k.bias", nkv, 0.0, 0.1)
            _vec(out, src, p + "attn_v.bias", nkv, 0.0, 0.1)
        if arch == "gemma3":
            _vec(out, src, p + "attn_q_norm.weight", hd, norm_center, 0.1)
            _vec(out, src, p + "attn_k_norm.weight", hd, norm_center, 0.1)
            _vec(out, src, p + "post_attention_norm.weight", d, norm_center, 0.1)
            _vec(out, src, p + "post_ffw_norm.weight", d, norm_center, 0.1)
        _mat(out, src, p + "attn_output.weight", d, nq)
        _vec(out, src, p + "ffn_norm.weight", d, norm_center, 0.1)
        _mat(out, src, p + "ffn_gate.weight", ff, d)
        _mat(out, src, p + "ffn_up.weight", ff, d)
        _mat(out, src, p + "ffn_down.weight", d, ff)
    _vec(out, src, "output_norm.weight", d, norm_center, 0.1)
    if arch == "falcon":
        _vec(out, src, "output_norm.bias", d, 0.0, 0.1)
    if arch != "gemma3":  # gemma3 ties its output to token_embd
        _mat(out, src, "output.weight", s["n_vocab"], d)
    return out


def _bert_tensors(s: dict[str, Any], src: _Source) -> Builder:
    d, ff = s["n_embd"], s["n_ff"]
    out: Builder = {}
    _mat(out, src, "token_embd.weight", s["n_vocab"], d, std=0.5)
    out["token_types.weight"] = (lambda: src.vector(2 * d, 0.0, 0.1).reshape(2, d), GGMLType.F32, (2, d))
    pos = src.vector(s["n_ctx"] * d, 0.0, 0.1).reshape(s["n_ctx"], d)
    out["position_embd.weight"] = (lambda: pos, GGMLType.F32, (s["n_ctx"], d))
    _vec(out, src, "token_embd_norm.weight", d, 1.0, 0.1)
    _vec(out, src, "token_embd_norm.bias", d, 0.0, 0.1)
    for i in range(s["n_layer"]):
        p = f"blk.{i}."
        for name, rows, cols in (("attn_q", d, d), ("attn_k", d, d), ("attn_v", d, d), ("attn_output", d, d),
                                 ("ffn_up", ff, d), ("ffn_down", d, ff)):  # fmt: skip
            _mat(out, src, f"{p}{name}.weight", rows, cols)
            _vec(out, src, f"{p}{name}.bias", rows, 0.0, 0.1)
        for name in ("attn_output_norm", "layer_output_norm"):
            _vec(out, src, f"{p}{name}.weight", d, 1.0, 0.1)
            _vec(out, src, f"{p}{name}.bias", d, 0.0, 0.1)
    return out


_TENSOR_BUILDERS: dict[str, Callable[[dict[str, Any], _Source], Builder]] = {
    "llama": lambda s, src: _decoder_tensors(s, src, "llama"),
    "qwen2": lambda s, src: _decoder_tensors(s, src, "qwen2"),
    "falcon": lambda s, src: _decoder_tensors(s, src, "falcon"),
    "gemma3": lambda s, src: _decoder_tensors(s, src, "gemma3"),
    "bert": _bert_tensors,
}
