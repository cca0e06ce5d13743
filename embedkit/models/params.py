"""Hyper-parameters of a decoder model, read from GGUF metadata only."""

from __future__ import annotations

from dataclasses import dataclass

from embedkit.errors import GGUFError
from embedkit.gguf import GGUFFile


@dataclass(frozen=True)
class ModelParams:
    """Sizes and constants of one decoder-only model (llama.cpp's hparams)."""

    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int  # per-head size of queries/keys ({arch}.attention.key_length)
    head_dim_v: int  # per-head size of values
    n_ff: int
    n_ctx_train: int
    norm_eps: float
    n_rot: int
    rope_base: float
    rope_freq_scale: float
    sliding_window: int | None

    @property
    def n_embd_q(self) -> int:
        """Width of the query projection."""
        return self.n_head * self.head_dim

    @property
    def n_embd_kv(self) -> int:
        """Width of the key projection."""
        return self.n_head_kv * self.head_dim


def _scalar(v: object, key: str) -> int:
    """Some files store per-layer arrays (e.g. head_count_kv); all equal is the only case we support."""
    if isinstance(v, int | float):
        return int(v)
    vals = {int(x) for x in v}  # type: ignore[union-attr]
    if len(vals) != 1:
        raise GGUFError(f"{key}: per-layer values {sorted(vals)} are not supported")
    return vals.pop()


def read_params(f: GGUFFile) -> ModelParams:
    """Collect `{arch}.*` metadata into ModelParams (GGUFError naming a missing key)."""
    arch = f.architecture

    def req(suffix: str):
        return f.require(f"{arch}.{suffix}")

    n_embd = int(req("embedding_length"))
    n_head = _scalar(req("attention.head_count"), f"{arch}.attention.head_count")
    n_head_kv = _scalar(f.arch_get("attention.head_count_kv", n_head), f"{arch}.attention.head_count_kv")
    head_dim = int(f.arch_get("attention.key_length", n_embd // n_head))
    head_dim_v = int(f.arch_get("attention.value_length", head_dim))
    eps = f.arch_get("attention.layer_norm_rms_epsilon")
    if eps is None:
        eps = f.arch_get("attention.layer_norm_epsilon", 1e-5)
    n_vocab = f.arch_get("vocab_size")
    if n_vocab is None:
        n_vocab = f.tensor("token_embd.weight").np_shape[0]
    scale_type = f.arch_get("rope.scaling.type")
    factor = float(f.arch_get("rope.scaling.factor", 1.0) or 1.0)
    freq_scale = 1.0 / factor if scale_type in (None, "linear") and factor > 0 else 1.0
    window = f.arch_get("attention.sliding_window")
    return ModelParams(
        arch=arch,
        n_vocab=int(n_vocab),
        n_embd=n_embd,
        n_layer=int(req("block_count")),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        head_dim_v=head_dim_v,
        n_ff=_scalar(f.arch_get("feed_forward_length", 4 * n_embd), f"{arch}.feed_forward_length"),
        n_ctx_train=int(f.arch_get("context_length", 2048)),
        norm_eps=float(eps),
        n_rot=int(f.arch_get("rope.dimension_count", head_dim)),
        rope_base=float(f.arch_get("rope.freq_base", 10000.0)),
        rope_freq_scale=freq_scale,
        sliding_window=int(window) if window else None,
    )
