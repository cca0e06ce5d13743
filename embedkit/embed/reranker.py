"""Cross-encoder reranking: a BERT sequence-classification model scores (query, document) pairs.

The GGUF holds the head as llama.cpp's `rank` pooling reads it (`cls` = the pooler's dense layer, `cls.output`
= the classifier). Each pair is "[CLS] query [SEP] document [SEP]" with segment ids 0 for "[CLS] query [SEP]"
and 1 for the rest (as Hugging Face tokenizers build pairs); the score is the first logit of
cls.output(tanh(cls([CLS] hidden state))). Documents are truncated to fit the model's window.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedkit.embed.batching import pad_batch, plan_batches
from embedkit.errors import InputError, UnsupportedModelError
from embedkit.gguf import GGUFFile
from embedkit.kernels import dequantize
from embedkit.models.bert import BertModel
from embedkit.tokenizer import load_tokenizer

RANK_POOLING = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK


def _f32(f: GGUFFile, name: str) -> np.ndarray:
    t = f.tensor(name)
    if t.ggml_type.name == "F32":
        return np.asarray(t.data.view(np.float32).reshape(t.np_shape), dtype=np.float32)
    rows = t.np_shape[0] if len(t.np_shape) == 2 else 1
    return np.asarray(dequantize(t.data, t.ggml_type, (rows, t.shape[0])), dtype=np.float32).reshape(t.np_shape)


def check_cross_encoder(f: GGUFFile, path: str | os.PathLike[str]) -> None:
    """UnsupportedModelError unless the GGUF is a BERT with a classification head (a cross-encoder)."""
    if f.architecture != "bert" or "cls.output.weight" not in f.tensors:
        raise UnsupportedModelError(
            f"{path}: not a cross-encoder (expected a BERT with a classification head, e.g. a "
            "BertForSequenceClassification converted by `embedkit convert`)"
        )


class Reranker:
    """A cross-encoder in a GGUF file (converted from a BertForSequenceClassification)."""

    def __init__(self, path: str | os.PathLike[str], max_tokens: int | None = None):
        self.path = Path(path)
        self.file = GGUFFile(self.path)
        check_cross_encoder(self.file, self.path)
        self.model = BertModel(self.file)
        self.tokenizer = load_tokenizer(self.file)
        self.max_tokens = min(int(max_tokens or self.model.params.n_ctx_train), int(self.model.params.n_ctx_train))
        self.pool_w = _f32(self.file, "cls.weight") if "cls.weight" in self.file.tensors else None
        self.pool_b = _f32(self.file, "cls.bias") if "cls.bias" in self.file.tensors else None
        self.out_w = _f32(self.file, "cls.output.weight").reshape(-1, self.model.params.n_embd)
        self.out_b = _f32(self.file, "cls.output.bias") if "cls.output.bias" in self.file.tensors else None

    def _pair(self, query: list[int], doc: list[int]) -> tuple[list[int], list[int]]:
        cls_id, sep_id = self.tokenizer.cls_id, self.tokenizer.sep_id
        if cls_id is None or sep_id is None:
            raise UnsupportedModelError(f"{self.path}: the tokenizer has no [CLS]/[SEP] tokens")
        room = self.max_tokens - 3
        q = query[: max(1, room // 2)] if len(query) + len(doc) > room else query
        d = doc[: max(0, room - len(q))]
        ids = [cls_id, *q, sep_id, *d, sep_id]
        return ids, [0] * (len(q) + 2) + [1] * (len(d) + 1)

    def pairs(self, query: str, documents: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """(token ids, segment ids) of each (query, document) pair as the model reads it, truncated to fit."""
        q = self.tokenizer.encode(query, add_special=False)
        return [self._pair(q, self.tokenizer.encode(d, add_special=False)) for d in documents]

    def logits(self, query: str, documents: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """The classifier's logits [n_documents, n_labels] for each (query, document) pair."""
        return self.pair_logits(self.pairs(query, documents), batch_size)

    def pair_logits(self, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 16) -> np.ndarray:
        """The classifier's logits [n_pairs, n_labels] of pairs made by `pairs`."""
        out = np.zeros((len(pairs), self.out_w.shape[0]), dtype=np.float32)
        if not pairs:
            return out
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        for idx in plan_batches([len(p[0]) for p in pairs], batch_size):
            ids, mask = pad_batch([pairs[i][0] for i in idx], pad)
            types = np.zeros_like(ids)
            for row, i in enumerate(idx):
                types[row, : len(pairs[i][1])] = pairs[i][1]
            hidden = self.model.encode(ids, mask, types)[:, 0, :].astype(np.float64)
            x = hidden
            if self.pool_w is not None:
                x = np.tanh(x @ self.pool_w.T.astype(np.float64) + (self.pool_b if self.pool_b is not None else 0))
            y = x @ self.out_w.T.astype(np.float64) + (self.out_b if self.out_b is not None else 0)
            out[idx] = y.astype(np.float32)
        return out

    def scores(self, query: str, documents: Sequence[str], batch_size: int = 16) -> list[float]:
        """One relevance score per document (the first logit), higher is more relevant."""
        return [float(v) for v in self.logits(query, documents, batch_size)[:, 0]]


_LOADED: dict[str, Reranker] = {}


def rerank(model: str | os.PathLike[str] | Reranker, query: str, documents: Sequence[str]) -> list[float]:
    """Scores of `documents` for `query` by a cross-encoder (a Reranker, a GGUF path or a known model name),
    in the order given; the model is loaded once per process."""
    if isinstance(model, Reranker):
        return model.scores(query, documents)
    if not query.strip():
        raise InputError("the query is empty; expected the text the documents are ranked for")
    key = os.fspath(model)
    if key not in _LOADED:
        from embedkit.catalog import resolve_model

        _LOADED[key] = Reranker(resolve_model(key, kind="embed"))
    return _LOADED[key].scores(query, documents)
