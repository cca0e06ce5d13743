"""BERT encoder (llama.cpp's LLM_ARCH_BERT): token + position + token-type embeddings, post-LayerNorm
blocks of bidirectional attention and an exact-GELU feed-forward, over padded batches."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedkit.backend import Placement, Weight, cpu_placement
from embedkit.backend.cpu import CPUBackend, CPUWeight
from embedkit.errors import InputError
from embedkit.gguf import GGMLType, GGUFFile
from embedkit.kernels.cpu.dense_f32 import matmul_f32_cols
from embedkit.kernels.cpu.gelu_erf import bias_gelu_erf_rows, bias_residual_layer_norm_block
from embedkit.kernels.cpu.row_blocks import run_blocks, single_thread_blas
from embedkit.kernels.pooling import POOLINGS

POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
# Fewest rows per block of the packed forward's LayerNorm (~0.4 us a row of 384): below this a hand-off to
# another thread costs more than it saves, so a lone request's norms run on the calling thread.
_MIN_NORM_ROWS = 256


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
    transposed: dict[int, np.ndarray] | None = None  # id(weight) -> its float32 transpose (packed CPU forward)


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
        self.packs = _can_pack(self.placement)
        if self.packs:
            for L in self.layers:
                L.wqkv, L.bqkv = _stacked_qkv(L)
                L.transposed = {id(w): _transposed(w) for w in (L.wqkv, L.wo, L.w_up, L.w_down)
                                if w is not None and _fused_f32(self.placement.layer(0), w)}

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
        with single_thread_blas():
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
        x = _rows(be, self.tok_embd, ids)
        x = be.add(x, _rows(be, self.pos_embd, positions))
        if self.type_embd is not None:  # every token in the first segment, as `embed`
            x = be.add(x, _rows(be, self.type_embd, np.zeros(1, dtype=np.int64)))
        x = be.layer_norm(x, self.embd_norm_w, self.embd_norm_b, p.norm_eps)

        d, hd = p.n_embd, p.head_dim
        scale = 1.0 / math.sqrt(hd)
        for i, L in enumerate(self.layers):
            be = self.placement.layer(i)
            if L.wqkv is not None:
                qkv = _dense(be, x, L.wqkv, L.bqkv, L.transposed)
                q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
            else:
                q, k, v = be.matmuls(x, [L.wq, L.wk, L.wv], [L.bq, L.bk, L.bv])
            q, k, v = (a.reshape(ids.size, p.n_head, hd) for a in (q, k, v))
            attn = be.attention_packed(q, k, v, spans, scale)
            wt = L.transposed or {}
            x = _dense_residual_norm(be, attn, L.wo, L.bo, wt, x, L.attn_norm_w, L.attn_norm_b, p.norm_eps)
            x = _dense_residual_norm(be, _dense_gelu(be, x, L.w_up, L.b_up, wt), L.w_down, L.b_down, wt, x,
                                     L.out_norm_w, L.out_norm_b, p.norm_eps)
        return pool_packed(x, starts, lengths, pooling)

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


def _can_pack(placement: Placement) -> bool:
    """Whether `embed_packed` can run: every layer on one CPU backend (it has the packed attention)."""
    backends = placement.backends
    return len(backends) == 1 and isinstance(backends[0], CPUBackend)


def _rows(be: CPUBackend, w: Weight, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` of an embedding table: float32 ones by numpy indexing (the backend's `get_rows` dequantizes in
    a parallel Numba region, whose OpenMP threads then spin beside the kernel threads), others by the backend."""
    if isinstance(w, CPUWeight) and w.ggml_type == GGMLType.F32:
        return w.data.view(np.float32).reshape(w.shape)[ids]
    return be.get_rows(w, ids)


def _transposed(w: Weight) -> np.ndarray:
    """A float32 weight's transpose [n_in, n_out] in C order, the layout `matmul_f32_cols` takes (copied once, at
    load: `BertLayer.transposed`)."""
    return np.ascontiguousarray(w.data.view(np.float32).reshape(w.shape).T)


def _dense(be: CPUBackend, x: np.ndarray, w: Weight, b: Weight | None,
           transposed: dict[int, np.ndarray] | None) -> np.ndarray:
    """x @ W.T + b of the packed forward: float32 weights split by output columns over the kernel threads
    (`matmul_f32_cols`), others through the backend."""
    if transposed and id(w) in transposed:
        return matmul_f32_cols(np.ascontiguousarray(x, dtype=np.float32), transposed[id(w)],
                               None if b is None else b.data)
    return be.matmul(x, w, b)


def _fused_f32(be: CPUBackend, w: Weight, *vectors: Weight | None) -> bool:
    """Whether the packed forward's fused float32 kernels take W and these vectors (biases, norm weights)."""
    return (isinstance(w, CPUWeight) and w.ggml_type == GGMLType.F32 and type(be) is CPUBackend
            and all(v is not None for v in vectors))


def _dense_gelu(be: CPUBackend, x: np.ndarray, w: Weight, b: Weight | None,
                transposed: dict[int, np.ndarray]) -> np.ndarray:
    """gelu_erf(x @ W.T + b), the bias and GELU applied to each thread's block of columns right after its product."""
    if not (_fused_f32(be, w, b) and id(w) in transposed):
        return be.gelu_erf(be.matmul(x, w, b))
    return matmul_f32_cols(np.ascontiguousarray(x, dtype=np.float32), transposed[id(w)], b.data,
                           epilogue=bias_gelu_erf_rows)


def _dense_residual_norm(be: CPUBackend, x: np.ndarray, w: Weight, b: Weight | None, transposed: dict[int, np.ndarray],
                         residual: np.ndarray, norm_w: Weight | None, norm_b: Weight | None, eps: float) -> np.ndarray:
    """layer_norm(x @ W.T + b + residual): the product, then its bias, the residual and the LayerNorm in one pass
    over row blocks (a post-LayerNorm block's two halves end this way)."""
    if not (_fused_f32(be, w, b, norm_w, norm_b) and id(w) in transposed):
        return be.add_layer_norm(be.matmul(x, w, b), residual, norm_w, norm_b, eps)
    y = matmul_f32_cols(np.ascontiguousarray(x, dtype=np.float32), transposed[id(w)], None)
    res = np.ascontiguousarray(residual, dtype=np.float32)
    bias, nw, nb = b.data, norm_w.data, norm_b.data
    run_blocks(lambda r0, r1: bias_residual_layer_norm_block(y[r0:r1], bias, res[r0:r1], nw, nb, float(eps)),
               y.shape[0], min_items=_MIN_NORM_ROWS)
    return y


def _stacked_qkv(L: BertLayer) -> tuple[Weight | None, Weight | None]:
    """wq, wk, wv (and their biases) as one float32 weight [3 n_embd, n_embd], when all three are float32 rows:
    one product of three times the width runs faster than three."""
    ws, bs = (L.wq, L.wk, L.wv), (L.bq, L.bk, L.bv)
    if not all(isinstance(w, CPUWeight) and w.ggml_type == GGMLType.F32 for w in ws):
        return None, None
    n_in = ws[0].shape[1]
    rows = np.concatenate([np.asarray(w.data).view(np.float32).reshape(w.shape) for w in ws], axis=0)
    name = ws[0].name.replace("attn_q", "attn_qkv")
    w = CPUWeight(name, int(GGMLType.F32), (rows.shape[0], n_in), rows.view(np.uint8))
    b = Weight(name.replace(".weight", ".bias"), int(GGMLType.F32), (rows.shape[0],),
               np.concatenate([np.asarray(b.data, dtype=np.float32) for b in bs]))
    return w, b


def pool_packed(x: np.ndarray, starts: np.ndarray, lengths: np.ndarray, method: str) -> np.ndarray:
    """Pool hidden states x [n, d] of sequences packed at rows starts[i]..starts[i] + lengths[i] -> [b, d] float32
    (the methods of `embedkit.kernels.pooling.pool`: mean in float64, cls and none the first token, last the last)."""
    if method not in POOLINGS:
        raise InputError(f"pooling {method!r}: expected one of {', '.join(POOLINGS)}")
    if method == "mean":
        sums = np.add.reduceat(x.astype(np.float64), starts, axis=0)
        return (sums / lengths[:, None]).astype(np.float32)
    rows = starts + lengths - 1 if method == "last" else starts
    return np.ascontiguousarray(x[rows], dtype=np.float32)
