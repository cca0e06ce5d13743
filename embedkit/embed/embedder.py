"""`Embedder`: texts -> one float32 vector each, from a BERT encoder or a decoder model in a GGUF file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedkit.embed.batching import pad_batch, plan_batches
from embedkit.errors import InputError, ModelOutputError
from embedkit.gguf import GGUFFile
from embedkit.gguf.keys import DOCUMENT_PREFIX_KEY, QUERY_PREFIX_KEY, ST_MAX_SEQ_LENGTH_KEY
from embedkit.kernels.pooling import POOLINGS, l2_normalize, pool
from embedkit.models import ENCODER_ARCHITECTURES, load_model
from embedkit.tokenizer import load_tokenizer

# Decoders embed one text at a time through their KV cache; cap the context they allocate.
DECODER_MAX_TOKENS = 2048
# Encoder batches run whole forward passes side by side, one per kernel thread, when the backends allow
# it (CPU: `Backend.forward_threads()`) and there are at least this many batches per thread; otherwise
# one batch at a time with each op split across the threads. Side by side no thread waits for another
# between ops (2-core dev VM, MiniLM: ~22% more tokens/s); False forces one at a time (A/B benchmarks).
CONCURRENT_BATCHES = True
MIN_BATCHES_PER_THREAD = 2
# Side by side, batches are also cut to at most this many padded tokens: each thread's activations
# (up to ~n_ff * 4 bytes a token) then stay closer to the caches.
CONCURRENT_BATCH_TOKENS = 2048


@dataclass
class EmbedStats:
    """Counters over the life of an Embedder."""

    texts: int = 0
    tokens: int = 0  # tokens actually run (after truncation)
    truncated: int = 0  # texts cut to max_tokens
    batches: int = 0


class Embedder:
    """Embed texts with the model in a GGUF file.

    pooling: mean, cls, last or none (None: the file's `{arch}.pooling_type`, else mean);
    normalize: scale vectors to unit L2 norm; max_tokens: longer texts are truncated (and counted in
    `stats.truncated`), default the model's context length; placement: backends, as `load_model`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        pooling: str | None = None,
        normalize: bool = True,
        max_tokens: int | None = None,
        placement=None,
    ):
        self.path = Path(path)
        self.file = GGUFFile(self.path)
        self.architecture = self.file.architecture
        self.model = load_model(self.file, placement)
        self.tokenizer = load_tokenizer(self.file)
        self.is_encoder = self.architecture in ENCODER_ARCHITECTURES
        params = self.model.params
        self.dim = int(params.n_embd)
        file_pooling = getattr(params, "pooling", None) if self.is_encoder else None
        chosen = pooling or (file_pooling if file_pooling in POOLINGS else None) or "mean"
        if chosen not in POOLINGS:
            raise InputError(f"pooling {chosen!r}: expected one of {', '.join(POOLINGS)}")
        self.pooling = chosen
        self.normalize = bool(normalize)
        # prefixes the model was trained with (recorded by the converter); callers prepend them
        self.query_prefix = _text_key(self.file.get(QUERY_PREFIX_KEY))
        self.document_prefix = _text_key(self.file.get(DOCUMENT_PREFIX_KEY))
        limit = int(params.n_ctx_train) if self.is_encoder else min(int(params.n_ctx_train), DECODER_MAX_TOKENS)
        st_limit = self.file.get(ST_MAX_SEQ_LENGTH_KEY)
        if self.is_encoder and isinstance(st_limit, int) and 2 <= st_limit < limit:
            limit = st_limit  # the length the model was trained and is used at (sentence-transformers)
        if max_tokens is not None:
            if max_tokens < 2:
                raise InputError(f"max_tokens={max_tokens}: expected at least 2")
            limit = min(limit, int(max_tokens)) if self.is_encoder else int(max_tokens)
        self.max_tokens = limit
        self.model_name = self.path.name
        self.model_sha256 = self.file.identity_sha256()
        self.stats = EmbedStats()
        self._state = None

    # -- tokens ------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Tokens of `text` with the model's special tokens, before truncation."""
        return len(self.tokenizer.encode(text, add_special=True))

    def _tokens(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special=True)
        if not ids:
            raise InputError("cannot embed a text that has no tokens (empty text and no special tokens)")
        if len(ids) > self.max_tokens:
            tok = self.tokenizer
            keep_tail = 1 if tok.add_eos and tok.eos_id is not None and ids[-1] == tok.eos_id else 0
            ids = ids[: self.max_tokens - keep_tail] + ids[len(ids) - keep_tail :]
            self.stats.truncated += 1
        return ids

    # -- vectors -----------------------------------------------------------------------------
    def embed(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Vectors float32 [len(texts), dim] in input order; `progress(n)` after each batch of n texts."""
        if isinstance(texts, str):
            raise InputError("embed() takes a sequence of texts, not one string")
        return self.embed_tokens([self._tokens(t) for t in texts], batch_size, progress)

    def tokenize(self, text: str) -> list[int]:
        """The token ids `embed` runs for `text`: special tokens added, truncated to `max_tokens`."""
        return self._tokens(text)

    def embed_tokens(
        self,
        seqs: Sequence[Sequence[int]],
        batch_size: int = 32,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Vectors float32 [len(seqs), dim] of token-id sequences (special tokens included, none longer than
        `max_tokens`), in input order; `embed` is this on its texts' tokens."""
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size}: expected a positive integer")
        out = np.empty((len(seqs), self.dim), dtype=np.float32)
        if not seqs:
            return out
        if self.is_encoder:
            pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
            lengths = [len(s) for s in seqs]
            batches = list(plan_batches(lengths, batch_size))

            packs = getattr(self.model, "packs", False)

            def run(idx: np.ndarray) -> tuple[np.ndarray, int]:
                if packs:  # no padding: each text's tokens only
                    part = [seqs[i] for i in idx]
                    vecs, n_tokens = self.model.embed_packed(part, self.pooling), sum(len(s) for s in part)
                else:
                    ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
                    vecs, n_tokens = self.model.embed(ids, mask, self.pooling), int(mask.sum())
                return (l2_normalize(vecs) if self.normalize else vecs), n_tokens

            backends = self.model.placement.backends
            n_workers = min(be.forward_threads() for be in backends) if CONCURRENT_BATCHES else 1
            if n_workers > 1 and len(batches) >= MIN_BATCHES_PER_THREAD * n_workers:
                batches = list(plan_batches(lengths, batch_size, max_tokens=CONCURRENT_BATCH_TOKENS))
                with contextlib.ExitStack() as stack:
                    for be in backends:
                        stack.enter_context(be.concurrent_forwards())
                    with ThreadPoolExecutor(n_workers, thread_name_prefix="embedkit-batch") as pool:
                        for idx, (vecs, n_tokens) in zip(batches, pool.map(run, batches), strict=True):
                            out[idx] = vecs
                            self._count(len(idx), n_tokens, progress)
            else:
                for idx in batches:
                    vecs, n_tokens = run(idx)
                    out[idx] = vecs
                    self._count(len(idx), n_tokens, progress)
        else:
            for i, ids in enumerate(seqs):
                hidden = self._decoder_hidden(ids)
                out[i] = self._finish(hidden[None], np.ones((1, len(ids)), dtype=np.uint8))[0]
                self._count(1, len(ids), progress)
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:  # NaN vectors print as invalid JSON and PostgreSQL refuses them
            raise ModelOutputError(
                f"{self.path}: the model produced NaN or infinite values for {bad.size} of {len(seqs)} texts "
                f"(the first is text {bad[0] + 1}); its weights are damaged or not computed right"
            )
        return out

    def _decoder_hidden(self, ids: list[int]) -> np.ndarray:
        """Final-normed hidden states [n, d] of one text; the KV cache is reused from position 0."""
        if self._state is None:
            self._state = self.model.new_state(self.max_tokens)
        return self.model.forward(np.asarray(ids, dtype=np.int32), self._state, 0, output="hidden", all_positions=True)

    def _finish(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        vecs = pool(hidden, mask, self.pooling)
        return l2_normalize(vecs) if self.normalize else vecs

    def _count(self, n_texts: int, n_tokens: int, progress: Callable[[int], None] | None) -> None:
        self.stats.texts += n_texts
        self.stats.tokens += n_tokens
        self.stats.batches += 1
        if progress is not None:
            progress(n_texts)

    def close(self) -> None:
        """Release the model file's memory map."""
        self.file.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text_key(value) -> str:
    return value if isinstance(value, str) else ""
