"""llama-perplexity's saved log-probabilities (`--kl-divergence-base`): the file `--save-logits` writes and
`--kl-base` reads, so a base saved by either tool can be compared with a model run by the other.

Layout (little-endian), as llama.cpp's tools/perplexity/perplexity.cpp writes it:

    "_logits_"                          8 bytes
    n_ctx                               uint32
    n_vocab, n_chunk                    int32, int32
    tokens                              int32 [n_chunk * n_ctx]   (the text's tokens, before BOS replacement)
    per chunk, per scored position      uint16 [nv], nv = 2 * ((n_vocab + 1) // 2) + 4:
        float32 scale, float32 min_log_prob (the first 4 uint16), then n_vocab uint16 q with
        log p = scale * q + min_log_prob (log-probabilities below max - 16 are stored as q = 0)

A chunk of n_ctx tokens stores its n_ctx - 1 - n_ctx // 2 scored positions (the second half, as perplexity).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from embedkit.errors import InputError

MAGIC = b"_logits_"


def row_width(n_vocab: int) -> int:
    """uint16 values per stored position (two float32 header values, the vocabulary, padding to even)."""
    return 2 * ((n_vocab + 1) // 2) + 4


def quantize_log_probs(logits: np.ndarray) -> np.ndarray:
    """Rows of float32 logits [n, n_vocab] -> stored rows uint16 [n, row_width] (llama.cpp's log_softmax)."""
    logits = np.asarray(logits, dtype=np.float32)
    n, n_vocab = logits.shape
    max_logit = logits.max(axis=1)
    min_logit = np.maximum(logits.min(axis=1), max_logit - np.float32(16))
    sum_exp = np.exp(logits - max_logit[:, None]).sum(axis=1, dtype=np.float64)
    log_sum_exp = np.log(sum_exp).astype(np.float32)
    min_log_prob = (min_logit - max_logit - log_sum_exp).astype(np.float32)
    scale = ((max_logit - min_logit) / np.float32(65535)).astype(np.float32)
    out = np.zeros((n, row_width(n_vocab)), dtype=np.uint16)
    header = out[:, :4].view(np.float32)
    header[:, 0] = scale
    header[:, 1] = min_log_prob
    with np.errstate(divide="ignore"):
        inv_scale = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    q = np.rint(inv_scale[:, None] * (logits - min_logit[:, None]))
    q = np.where(logits > min_logit[:, None], q, 0)
    out[:, 4 : 4 + n_vocab] = np.clip(q, 0, 65535).astype(np.uint16)
    return out


def stored_log_probs(rows: np.ndarray, n_vocab: int) -> np.ndarray:
    """Stored rows uint16 [n, row_width] -> their log-probabilities float32 [n, n_vocab]."""
    header = np.ascontiguousarray(rows[:, :4]).view(np.float32)
    scale, min_log_prob = header[:, 0:1], header[:, 1:2]
    return (scale * rows[:, 4 : 4 + n_vocab].astype(np.float32) + min_log_prob).astype(np.float32)


class LogitsWriter:
    """Writes a file llama-perplexity's `--kl-divergence` reads: header and tokens first, then scored rows."""

    def __init__(self, path: str | Path, n_ctx: int, n_vocab: int, n_chunk: int, tokens: np.ndarray):
        try:
            self._fh: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise InputError(f"--save-logits {path}: cannot write ({e.strerror})") from e
        self.n_vocab = n_vocab
        self._fh.write(MAGIC)
        self._fh.write(np.uint32(n_ctx).tobytes())
        self._fh.write(np.array([n_vocab, n_chunk], dtype="<i4").tobytes())
        self._fh.write(np.asarray(tokens[: n_chunk * n_ctx], dtype="<i4").tobytes())

    def write_rows(self, logits: np.ndarray) -> None:
        """Append the scored positions' logits [n, n_vocab] in stored form."""
        self._fh.write(quantize_log_probs(logits).astype("<u2").tobytes())

    def close(self) -> None:
        """Flush and close the file."""
        self._fh.close()


@dataclass
class LogitsBase:
    """A saved base: its chunking, tokens, and the stored rows of every scored position (memory-mapped)."""

    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray  # int32 [n_chunk * n_ctx]
    rows: np.ndarray  # uint16 [n_chunk * (n_ctx - 1 - n_ctx // 2), row_width(n_vocab)]

    @property
    def scored_per_chunk(self) -> int:
        """Positions stored per chunk."""
        return self.n_ctx - 1 - self.n_ctx // 2

    def chunk_log_probs(self, chunk: int) -> np.ndarray:
        """Log-probabilities float32 [scored_per_chunk, n_vocab] of chunk `chunk`."""
        k = self.scored_per_chunk
        return stored_log_probs(np.asarray(self.rows[chunk * k : (chunk + 1) * k]), self.n_vocab)


def read_logits_base(path: str | Path) -> LogitsBase:
    """Open a base file (InputError naming the file and what is wrong with it)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(20)
    except OSError as e:
        raise InputError(f"--kl-base {path}: cannot read ({e.strerror})") from e
    if len(head) < 20 or head[:8] != MAGIC:
        raise InputError(f"--kl-base {path}: not a file of saved log-probabilities (expected '_logits_' header)")
    n_ctx = int(np.frombuffer(head, dtype="<u4", count=1, offset=8)[0])
    n_vocab, n_chunk = (int(v) for v in np.frombuffer(head, dtype="<i4", count=2, offset=12))
    if n_ctx < 4 or n_vocab < 1 or n_chunk < 1:
        raise InputError(f"--kl-base {path}: bad header (n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk})")
    n_tokens = n_chunk * n_ctx
    per_chunk = n_ctx - 1 - n_ctx // 2
    expected = 20 + 4 * n_tokens + 2 * n_chunk * per_chunk * row_width(n_vocab)
    if size != expected:
        raise InputError(f"--kl-base {path}: {size} bytes, expected {expected} for {n_chunk} chunks of {n_ctx} "
                         f"tokens and a vocabulary of {n_vocab} (truncated or not a saved base?)")
    tokens = np.fromfile(path, dtype="<i4", count=n_tokens, offset=20).astype(np.int32)
    rows = np.memmap(path, dtype="<u2", mode="r", offset=20 + 4 * n_tokens,
                     shape=(n_chunk * per_chunk, row_width(n_vocab)))
    return LogitsBase(n_ctx, n_vocab, n_chunk, tokens, rows)
