"""The CPU backend's packed encoder ops: BERT sequences one after another without padding (`BertModel.embed_packed`).

The dense ops run on the real tokens only and each sequence attends over its own rows, so a vector does not depend
on what else is in the batch. Float32 products go through `matmul_f32_cols` on the weights' transposes (copied on
first use), with their bias and GELU, or bias + residual + LayerNorm, fused. A forward runs inside
`packed_forward()`: BLAS at one thread, ops split over the kernel threads by `run_blocks` only.
"""

from __future__ import annotations

import contextlib

import numpy as np

from embedkit.backend.base import Array, Weight
from embedkit.errors import InputError
from embedkit.gguf import GGMLType
from embedkit.kernels.cpu.dense_f32 import matmul_f32_cols
from embedkit.kernels.cpu.encoder_attention import attention_packed_items
from embedkit.kernels.cpu.gelu_erf import bias_gelu_erf_rows, bias_residual_layer_norm_block
from embedkit.kernels.cpu.row_blocks import run_blocks, single_thread_blas
from embedkit.kernels.pooling import POOLINGS

# Fewest rows per block of a LayerNorm (~0.4 us a row of 384): below this a hand-off to another thread costs
# more than it saves, so a lone request's norms run on the calling thread.
_MIN_NORM_ROWS = 256


class PackedEncoderOps:
    """Mixin of `CPUBackend`: the ops of `BertModel.embed_packed`."""

    packs_sequences = True

    def packed_forward(self) -> contextlib.AbstractContextManager[None]:
        """The context a packed forward runs in: BLAS at one thread, so that its unsplit BLAS calls wake no BLAS
        threads that then spin beside the kernel threads."""
        return single_thread_blas()

    def embedding_rows(self, w: Weight, ids: np.ndarray) -> Array:
        """Rows `ids` of an embedding table: float32 ones by numpy indexing (`get_rows` dequantizes in a parallel
        Numba region, whose OpenMP threads then spin beside the kernel threads), others by `get_rows`."""
        if w.ggml_type == GGMLType.F32 and w.data.ndim == 2:
            return w.data.view(np.float32).reshape(w.shape)[ids]
        return self.get_rows(w, ids)

    def stack_weights(self, ws: list[Weight], biases: list[Weight]) -> tuple[Weight, Weight] | None:
        """ws (all float32 rows, same n_in) stacked into one weight and their biases into one vector, for one
        product of their summed width (Q/K/V); None when they are not all float32."""
        from embedkit.backend.cpu import CPUWeight

        if not all(isinstance(w, CPUWeight) and w.ggml_type == GGMLType.F32 for w in ws):
            return None
        rows = np.concatenate([np.asarray(w.data).view(np.float32).reshape(w.shape) for w in ws], axis=0)
        name = "+".join(w.name for w in ws)
        w = CPUWeight(name, int(GGMLType.F32), (rows.shape[0], rows.shape[1]), rows.view(np.uint8))
        b = Weight(name + ".bias", int(GGMLType.F32), (rows.shape[0],),
                   np.concatenate([np.asarray(b.data, dtype=np.float32) for b in biases]))
        return w, b

    def _transpose(self, w: Weight) -> np.ndarray | None:
        """W's float32 transpose [n_in, n_out] in C order (the layout `matmul_f32_cols` takes; BLAS packs it
        faster than a transposed view of the rows), copied on first use; None where the fused float32 path does
        not apply (another type, or a subclass with its own matmul arithmetic)."""
        from embedkit.backend.cpu import CPUBackend

        if w.ggml_type != GGMLType.F32 or w.data.ndim != 2 or type(self).matmul is not CPUBackend.matmul:
            return None
        cache = self.__dict__.setdefault("_transposes", {})
        hit = cache.get(id(w))
        if hit is None:  # the weight is kept with its copy, so that its id cannot be reused meanwhile
            hit = cache[id(w)] = (w, np.ascontiguousarray(w.data.view(np.float32).reshape(w.shape).T))
        return hit[1]

    def dense(self, x: Array, w: Weight, bias: Weight | None) -> Array:
        """x @ W.T + bias, float32 weights split by output columns over the kernel threads."""
        wt = self._transpose(w)
        if wt is None:
            return self.matmul(x, w, bias)
        return matmul_f32_cols(np.ascontiguousarray(x, dtype=np.float32), wt, None if bias is None else bias.data)

    def dense_gelu(self, x: Array, w: Weight, bias: Weight) -> Array:
        """gelu_erf(x @ W.T + bias), bias and GELU applied to each thread's block of columns after its product."""
        wt = self._transpose(w)
        if wt is None:
            return self.gelu_erf(self.matmul(x, w, bias))
        return matmul_f32_cols(np.ascontiguousarray(x, dtype=np.float32), wt, bias.data, epilogue=bias_gelu_erf_rows)

    def dense_residual_norm(self, x: Array, w: Weight, bias: Weight, residual: Array, norm_w: Weight,
                            norm_b: Weight, eps: float) -> Array:
        """layer_norm(x @ W.T + bias + residual) * norm_w + norm_b: the product, then bias, residual and
        LayerNorm in one pass over row blocks (how a post-LayerNorm block's two halves end)."""
        wt = self._transpose(w)
        if wt is None:
            return self.add_layer_norm(self.matmul(x, w, bias), residual, norm_w, norm_b, eps)
        y = matmul_f32_cols(np.ascontiguousarray(x, dtype=np.float32), wt, None)
        res = np.ascontiguousarray(residual, dtype=np.float32)
        b, nw, nb = bias.data, norm_w.data, norm_b.data
        run_blocks(lambda r0, r1: bias_residual_layer_norm_block(y[r0:r1], b, res[r0:r1], nw, nb, float(eps)),
                   y.shape[0], min_items=_MIN_NORM_ROWS)
        return y

    def attention_packed(self, q: Array, k: Array, v: Array, spans: np.ndarray, scale: float) -> Array:
        """Bidirectional attention of packed sequences: q, k, v [n, heads, hd] (views allowed), sequence i on
        rows spans[i] = (start, stop) attending over those rows only -> [n, heads * hd]."""
        n, h, hd = q.shape
        out = np.empty((n, h, hd), dtype=np.float32)
        spans = np.asarray(spans, dtype=np.int64)
        s = np.float32(scale)
        lengths = (spans[:, 1] - spans[:, 0]).astype(np.float64)
        run_blocks(lambda i0, i1: attention_packed_items(q, k, v, spans, s, out, i0, i1), len(spans),
                   cost=lengths**2, blas=True)
        return out.reshape(n, h * hd)

    def pooled_packed(self, x: Array, starts: np.ndarray, lengths: np.ndarray, method: str) -> np.ndarray:
        """Pool hidden states x [n, d] of sequences packed at rows starts[i]..starts[i] + lengths[i] -> host float32
        [b, d] (the methods of `embedkit.kernels.pooling.pool`: mean in float64, cls and none the first token,
        last the last)."""
        if method not in POOLINGS:
            raise InputError(f"pooling {method!r}: expected one of {', '.join(POOLINGS)}")
        if method == "mean":
            sums = np.add.reduceat(np.asarray(x, dtype=np.float64), starts, axis=0)
            return (sums / lengths[:, None]).astype(np.float32)
        rows = starts + lengths - 1 if method == "last" else starts
        return np.ascontiguousarray(x[rows], dtype=np.float32)
