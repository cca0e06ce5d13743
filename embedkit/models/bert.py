"""BERT encoder (llama.cpp's LLM_ARCH_BERT): token + position + token-type embeddings, post-LayerNorm
blocks of bidirectional attention and an exact-GELU feed-forward, over padded batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedkit.backend import Placement, Weight, cpu_placement
from embedkit.errors import InputError
from embedkit.gguf import GGUFFile

POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


@dataclass(frozen=True)
class BertParams:
    """Sizes and constants of a BERT encoder, from `bert.*` metadata."""

    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    n_ctx_train: int
    norm_eps: float
    pooling: str | None  # from {arch}.pooling_type; None when the file does not say

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head


def read_bert_params(f: GGUFFile) -> BertParams:
    """Collect `{arch}.*` metadata (GGUFError naming a missing key)."""
    arch = f.architecture
    pooling = f.arch_get("pooling_type")
    return BertParams(
        arch=arch,
        n_vocab=int(f.tensor("token_embd.weight").np_shape[0]),
        n_embd=int(f.require(f"{arch}.embedding_length")),
        n_layer=int(f.require(f"{arch}.block_count")),
        n_head=int(f.require(f"{arch}.attention.head_count")),
        n_ff=int(f.require(f"{arch}.feed_forward_length")),
        n_ctx_train=int(f.require(f"{arch}.context_length")),
        norm_eps=float(f.arch_get("attention.layer_norm_epsilon", 1e-12)),
        pooling=None if pooling is None else POOLING_NAMES.get(int(pooling), "none"),
    )


@dataclass
class BertLayer:
    """Weights of one encoder block (numpy shapes: matrices are (n_out, n_in))."""

    wq: Weight  # (n_embd, n_embd)
    bq: Weight  # (n_embd,)
    wk: Weight  # (n_embd, n_embd)
    bk: Weight
    wv: Weight  # (n_embd, n_embd)
    bv: Weight
    wo: Weight  # (n_embd, n_embd)
    bo: Weight
    attn_norm_w: Weight  # (n_embd,) LayerNorm after attention + residual
    attn_norm_b: Weight
    w_up: Weight  # (n_ff, n_embd)
    b_up: Weight  # (n_ff,)
    w_down: Weight  # (n_embd, n_ff)
    b_down: Weight  # (n_embd,)
    out_norm_w: Weight  # (n_embd,) LayerNorm after FFN + residual
    out_norm_b: Weight
    wqkv: Weight | None = None  # (3 n_embd, n_embd): wq, wk, wv stacked for one product (packed CPU forward)
    bqkv: Weight | None = None


class BertModel:
    """A BERT encoder over a GGUF file; `encode` maps padded token batches to hidden states."""

    def __init__(
        self,
        f: GGUFFile | str | Path,
        placement: Placement | Callable[[int], Placement] | None = None,
    ):
        self.file = f if isinstance(f, GGUFFile) else GGUFFile(f)
        self.params = p = read_bert_params(self.file)
        if placement is None:
            placement = cpu_placement(p.n_layer)
        elif not isinstance(placement, Placement):
            placement = placement(p.n_layer)  # a factory: n_layer -> Placement
        self.placement = placement = placement.for_encoder()
        t = self.file.tensor
        inp = self.placement.input
        self.tok_embd = inp.weight(t("token_embd.weight"))  # (n_vocab, n_embd)
        self.pos_embd = inp.weight(t("position_embd.weight"))  # (n_ctx_train, n_embd)
        self.type_embd = inp.weight(t("token_types.weight")) if "token_types.weight" in self.file.tensors else None
        self.embd_norm_w = inp.weight(t("token_embd_norm.weight"))
        self.embd_norm_b = inp.weight(t("token_embd_norm.bias"))
        self.layers: list[BertLayer] = []
        for i in range(p.n_layer):
            be = self.placement.layer(i)

            def w(name: str, i: int = i, be=be) -> Weight:
                return be.weight(t(f"blk.{i}.{name}"))

            self.layers.append(
                BertLayer(
                    w("attn_q.weight"), w("attn_q.bias"), w("attn_k.weight"), w("attn_k.bias"),
                    w("attn_v.weight"), w("attn_v.bias"), w("attn_output.weight"), w("attn_output.bias"),
                    w("attn_output_norm.weight"), w("attn_output_norm.bias"),
                    w("ffn_up.weight"), w("ffn_up.bias"), w("ffn_down.weight"), w("ffn_down.bias"),
                    w("layer_output_norm.weight"), w("layer_output_norm.bias"),
                )
            )
        backends = self.placement.backends
        # packed sequences (`embed_packed`): every layer on one backend that has the packed ops
        self.packs = len(backends) == 1 and getattr(backends[0], "packs_sequences", False)
        if self.packs:
            for L in self.layers:
                L.wqkv, L.bqkv = backends[0].stack_weights([L.wq, L.wk, L.wv], [L.bq, L.bk, L.bv]) or (None, None)

    def encode(self, batch_ids: np.ndarray, attention_mask: np.ndarray,
               token_types: np.ndarray | None = None) -> np.ndarray:
        """Hidden states [b, t, n_embd] (host float32) of right-padded token ids [b, t] with mask [b, t] (1 = token).

        `token_types` [b, t] selects each token's segment embedding (0 = first sequence, 1 = second, as a
        cross-encoder's "query [SEP] document"); None puts every token in the first, as llama.cpp does."""
        be, x, mask = self._hidden(batch_ids, attention_mask, token_types)
        b, t = mask.shape
        return be.to_host(x).reshape(b, t, self.params.n_embd)

    def embed(self, batch_ids: np.ndarray, attention_mask: np.ndarray, pooling: str) -> np.ndarray:
        """One pooled vector per sequence, host float32 [b, n_embd] (`pooling` as `embedkit.embed.pool`),
        pooled where the last layer ran (on a GPU only the vectors cross the bus)."""
        be, x, mask = self._hidden(batch_ids, attention_mask)
        return be.pooled(x, mask, pooling)

    def embed_packed(self, seqs: Sequence[Sequence[int]], pooling: str) -> np.ndarray:
        """One pooled vector per token sequence, host float32 [len(seqs), n_embd], the sequences packed one after
        another without padding (`packs` must be True): the dense ops run on their real tokens only and each
        sequence attends over its own, so a vector does not depend on the others of the call and equals `embed`'s
        of the same sequence (to float32 rounding)."""
        if not self.packs:
            raise InputError("embed_packed: this model's placement runs padded batches only (use embed)")
        with self.placement.input.packed_forward():
            return self._embed_packed(seqs, pooling)

    def _embed_packed(self, seqs: Sequence[Sequence[int]], pooling: str) -> np.ndarray:
        p = self.params
        if not seqs:
            return np.empty((0, p.n_embd), dtype=np.float32)
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        if lengths.min() < 1 or lengths.max() > p.n_ctx_train:
            raise InputError(f"embed_packed: every sequence needs 1..{p.n_ctx_train} tokens")
        ids = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])
        if ids.min() < 0 or ids.max() >= p.n_vocab:
            raise InputError(f"encode: token ids must be in [0, {p.n_vocab})")
        stops = np.cumsum(lengths)
        starts = stops - lengths
        spans = np.stack([starts, stops], axis=1)
        positions = np.arange(ids.size, dtype=np.int64) - np.repeat(starts, lengths)

        be = self.placement.input
        x = be.embedding_rows(self.tok_embd, ids)
        x = be.add(x, be.embedding_rows(self.pos_embd, positions))
        if self.type_embd is not None:  # every token in the first segment, as `embed`
            x = be.add(x, be.embedding_rows(self.type_embd, np.zeros(1, dtype=np.int64)))
        x = be.layer_norm(x, self.embd_norm_w, self.embd_norm_b, p.norm_eps)

        d, hd = p.n_embd, p.head_dim
        scale = 1.0 / math.sqrt(hd)
        for i, L in enumerate(self.layers):
            be = self.placement.layer(i)
            if L.wqkv is not None:
                qkv = be.dense(x, L.wqkv, L.bqkv)
                q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
            else:
                q, k, v = be.matmuls(x, [L.wq, L.wk, L.wv], [L.bq, L.bk, L.bv])
            q, k, v = (a.reshape(ids.size, p.n_head, hd) for a in (q, k, v))
            attn = be.attention_packed(q, k, v, spans, scale)
            x = be.dense_residual_norm(attn, L.wo, L.bo, x, L.attn_norm_w, L.attn_norm_b, p.norm_eps)
            x = be.dense_residual_norm(be.dense_gelu(x, L.w_up, L.b_up), L.w_down, L.b_down, x,
                                       L.out_norm_w, L.out_norm_b, p.norm_eps)
        return be.pooled_packed(x, starts, lengths, pooling)

    def _hidden(self, batch_ids: np.ndarray, attention_mask: np.ndarray, token_types: np.ndarray | None = None):
        """(backend of the last layer, its hidden states [b*t, n_embd], float32 mask [b, t])."""
        p = self.params
        ids = np.asarray(batch_ids, dtype=np.int64)
        if ids.ndim != 2:
            raise InputError(f"encode: expected token ids of shape [batch, tokens], got {ids.shape}")
        b, t = ids.shape
        if t > p.n_ctx_train:
            raise InputError(f"encode: {t} tokens exceed the model's context length {p.n_ctx_train}")
        if ids.size and (ids.min() < 0 or ids.max() >= p.n_vocab):
            raise InputError(f"encode: token ids must be in [0, {p.n_vocab})")
        mask = np.asarray(attention_mask, dtype=np.float32)
        n = b * t

        be = self.placement.input
        x = be.get_rows(self.tok_embd, ids.reshape(n))
        x = be.add(x, be.get_rows(self.pos_embd, np.tile(np.arange(t), b)))
        if self.type_embd is not None:
            types = np.zeros(n, dtype=np.int64) if token_types is None else np.asarray(token_types, np.int64).reshape(n)
            x = be.add(x, be.get_rows(self.type_embd, types))
        x = be.layer_norm(x, self.embd_norm_w, self.embd_norm_b, p.norm_eps)

        scale = 1.0 / math.sqrt(p.head_dim)
        for i, L in enumerate(self.layers):
            x = self.placement.move(x, be, self.placement.layer(i))
            be = self.placement.layer(i)
            attn = be.self_attention(x, L.wq, L.bq, L.wk, L.bk, L.wv, L.bv, mask, p.n_head, scale)
            x = be.add_layer_norm(be.matmul(attn, L.wo, L.bo), x, L.attn_norm_w, L.attn_norm_b, p.norm_eps)
            ff = be.matmul(be.gelu_erf(be.matmul(x, L.w_up, L.b_up)), L.w_down, L.b_down)
            x = be.add_layer_norm(ff, x, L.out_norm_w, L.out_norm_b, p.norm_eps)
        return self.placement.layer(p.n_layer - 1), x, mask

