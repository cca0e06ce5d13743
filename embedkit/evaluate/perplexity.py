"""Perplexity over a text as llama.cpp's `llama-perplexity` computes it, and KL divergence to a saved base.

The text is tokenized once (BOS first when the model adds one) and cut into chunks of n_ctx tokens; each
chunk starts from an empty cache with its first token replaced by BOS (when the model adds one) and is
scored on its second half: positions n_ctx // 2 .. n_ctx - 2 predict the next token, so a chunk scores
n_ctx - 1 - n_ctx // 2 tokens and PPL = exp(mean negative log-likelihood). At least two chunks are needed.

With a base (llama.cpp's `--kl-divergence` file, see logits_file.py) the same positions' distributions are
compared to the base's: KL(base || model), "same top" (argmax agreement) and the change of the probability
of the actual next token, with llama.cpp's statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedkit.errors import InputError
from embedkit.evaluate.logits_file import LogitsBase, LogitsWriter

MIN_CTX = 4  # a chunk must score at least one token after its first half
ROW_BLOCK = 32  # positions whose float64 softmax is formed at once (bounds memory for large vocabularies)
KLD_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 10.0, 5.0, 1.0, 0.1)


def check_chunking(n_tokens: int, n_ctx: int, n_ctx_train: int) -> int:
    """Chunks of n_ctx tokens in n_tokens (InputError when n_ctx is out of range or fewer than 2 chunks fit)."""
    if n_ctx < MIN_CTX:
        raise InputError(f"-c {n_ctx}: expected at least {MIN_CTX} tokens per chunk")
    if n_ctx_train and n_ctx > n_ctx_train:
        raise InputError(f"-c {n_ctx}: the model was trained on at most {n_ctx_train} positions")
    if n_tokens < 2 * n_ctx:
        raise InputError(f"the text is {n_tokens} tokens; -c {n_ctx} needs at least {2 * n_ctx} (two chunks)")
    return n_tokens // n_ctx


def _mean_and_uncertainty(total: float, total2: float, count: int) -> tuple[float, float]:
    """llama.cpp's mean and its standard error from a sum and a sum of squares."""
    if count < 1:
        return 0.0, 0.0
    mean = total / count
    var = total2 / count - mean * mean
    return mean, (float(np.sqrt(var / (count - 1))) if var > 0 and count > 10 else 0.0)


@dataclass
class Accumulator:
    """Running sums over scored positions (negative log-likelihoods; with a base, KL and Δp too)."""

    nll: list[np.ndarray] = field(default_factory=list)
    nll_base: list[np.ndarray] = field(default_factory=list)
    kld: list[np.ndarray] = field(default_factory=list)
    p_diff: list[np.ndarray] = field(default_factory=list)
    same_top: int = 0

    @property
    def count(self) -> int:
        """Positions scored so far."""
        return sum(len(a) for a in self.nll)

    def ppl(self) -> tuple[float, float]:
        """Perplexity so far and its uncertainty (llama.cpp's `PPL = x +/- y`)."""
        nll = np.concatenate(self.nll)
        mean, unc = _mean_and_uncertainty(float(nll.sum()), float((nll * nll).sum()), len(nll))
        return float(np.exp(mean)), float(np.exp(mean)) * unc


def _log_softmax_parts(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: argmax and max + log(sum(exp(logit - max))), summed in float64 as llama.cpp does."""
    top = logits.argmax(axis=1)
    mx = logits[np.arange(len(logits)), top].astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1, dtype=np.float64))
    return top, mx + lse


def score_rows(acc: Accumulator, logits: np.ndarray, targets: np.ndarray, base: np.ndarray | None) -> None:
    """Add positions with float32 `logits` [n, n_vocab] predicting `targets` [n]; `base`: the base's
    log-probabilities [n, n_vocab] at the same positions (llama.cpp's KL sum skips base log p <= -16)."""
    for s in range(0, len(logits), ROW_BLOCK):
        lg = logits[s : s + ROW_BLOCK]
        tg = targets[s : s + ROW_BLOCK]
        top, norm = _log_softmax_parts(lg)
        rows = np.arange(len(lg))
        nll = norm - lg[rows, tg].astype(np.float64)
        acc.nll.append(nll)
        if base is None:
            continue
        bl = base[s : s + ROW_BLOCK].astype(np.float64)
        log_p = lg.astype(np.float64) - norm[:, None]
        kld = np.where(bl > -16.0, np.exp(bl) * (bl - log_p), 0.0).sum(axis=1)
        nll_base = -bl[rows, tg]
        acc.nll_base.append(nll_base)
        acc.kld.append(kld)
        acc.p_diff.append(np.exp(-nll) - np.exp(-nll_base))
        acc.same_top += int((top == bl.argmax(axis=1)).sum())


def chunk_logits(model: Any, ids: np.ndarray, n_batch: int, first: int) -> Iterator[np.ndarray]:
    """Logits float32 of positions first..len(ids)-1 of one chunk, run from an empty cache in batches of
    n_batch tokens; the output head runs only on those rows (llama.cpp's outputs)."""
    state = model.new_state(len(ids))
    be = model.placement.output
    for b0 in range(0, len(ids), n_batch):
        b1 = min(b0 + n_batch, len(ids))
        hidden = model.forward(ids[b0:b1], state, b0, output="hidden", all_positions=True)
        if b1 > first:
            rows = np.ascontiguousarray(hidden[max(first - b0, 0) :])
            yield np.asarray(be.to_host(model.head(be, be.take(rows))), dtype=np.float32)


@dataclass
class PerplexityResult:
    """What a run measured; `kl` only with a base."""

    ppl: float
    ppl_unc: float
    n_chunks: int
    tokens_scored: int
    chunk_ppl: list[float]
    kl: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """`--json`: ppl, n_chunks, tokens_scored (and the KL statistics with a base)."""
        out: dict[str, Any] = {"ppl": self.ppl, "n_chunks": self.n_chunks, "tokens_scored": self.tokens_scored}
        if self.kl is not None:
            out["kl"] = self.kl
        return out


def kl_statistics(acc: Accumulator) -> dict[str, Any]:
    """llama-perplexity's `--kl-divergence` summary: base PPL, KL mean and percentiles, Δp RMS, same top."""
    n = acc.count
    kld = np.sort(np.concatenate(acc.kld))
    p_diff = np.concatenate(acc.p_diff)
    nll_base = np.concatenate(acc.nll_base)
    mean_kld, unc_kld = _mean_and_uncertainty(float(kld.sum()), float((kld * kld).sum()), n)
    base_mean, _ = _mean_and_uncertainty(float(nll_base.sum()), float((nll_base**2).sum()), n)
    same = acc.same_top / n
    msd, _ = _mean_and_uncertainty(float((p_diff**2).sum()), float((p_diff**4).sum()), n)
    return {
        "ppl_base": float(np.exp(base_mean)),
        "kld_mean": mean_kld,
        "kld_mean_unc": unc_kld,
        "kld_max": float(kld[-1]),
        **{f"kld_p{p:g}": float(np.percentile(kld, p)) for p in KLD_PERCENTILES},
        "kld_median": float(np.median(kld)),
        "kld_min": float(kld[0]),
        "p_diff_rms": float(np.sqrt(msd)),
        "same_top": same,
        "same_top_unc": float(np.sqrt(same * (1 - same) / (n - 1))) if n > 1 else 0.0,
    }


def perplexity(
    model: Any,
    tokens: np.ndarray,
    n_ctx: int,
    n_batch: int,
    bos_id: int | None,
    n_chunks: int | None = None,
    save: LogitsWriter | None = None,
    base: LogitsBase | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> PerplexityResult:
    """Perplexity of `model` over `tokens` (already tokenized with BOS as the model asks) in chunks of n_ctx.

    bos_id: replaces each chunk's first token (None: the model adds no BOS). n_chunks caps the chunks (None:
    all that fit). save: also write every scored position's log-probabilities (llama.cpp's base format);
    base: compare with a saved base instead (its tokens, n_ctx and chunk count). progress(chunk, ppl so far).
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    total = len(tokens) // n_ctx if base is None else base.n_chunk
    n_chunk = total if n_chunks is None else max(1, min(n_chunks, total))
    first = n_ctx // 2
    acc = Accumulator()
    chunk_ppl = []
    for c in range(n_chunk):
        start = c * n_ctx
        ids = tokens[start : start + n_ctx].copy()
        if bos_id is not None:
            ids[0] = bos_id
        logits = np.concatenate(list(chunk_logits(model, ids, n_batch, first)))[:-1]  # the last row has no target
        targets = tokens[start + first + 1 : start + n_ctx]
        if save is not None:
            save.write_rows(logits)
        score_rows(acc, logits, targets, None if base is None else base.chunk_log_probs(c))
        chunk_ppl.append(acc.ppl()[0])
        if progress is not None:
            progress(c + 1, chunk_ppl[-1])
    ppl, unc = acc.ppl()
    kl = kl_statistics(acc) if base is not None else None
    return PerplexityResult(ppl, unc, n_chunk, acc.count, chunk_ppl, kl)


def evaluate_perplexity(
    model_path: str,
    text: str | None = None,
    n_ctx: int = 512,
    n_batch: int = 2048,
    n_chunks: int | None = None,
    save_logits: str | None = None,
    kl_base: str | None = None,
    placement: Any = None,
    progress: Callable[[int, float], None] | None = None,
) -> PerplexityResult:
    """`embedkit perplexity` as one call: load the model, tokenize `text` (or take a base's tokens), score it.

    save_logits writes the scored log-probabilities for a later `kl_base` comparison (llama-perplexity's
    `--kl-divergence-base` file; either tool reads the other's). With kl_base the text, n_ctx and chunks are
    the base's, and `text` must be None.
    """
    from embedkit.evaluate.logits_file import read_logits_base
    from embedkit.models import ENCODER_ARCHITECTURES, load_model
    from embedkit.tokenizer import load_tokenizer

    if save_logits is not None and kl_base is not None:
        raise InputError("--save-logits and --kl-base exclude each other: save a base first, then compare")
    if (text is None) == (kl_base is None):
        raise InputError("give the text to score (-f FILE), or --kl-base FILE (which holds its own tokens)")
    if n_batch < 1:
        raise InputError(f"-b {n_batch}: expected a positive number of tokens")
    base = read_logits_base(kl_base) if kl_base is not None else None
    model = load_model(model_path, placement)
    if model.file.architecture in ENCODER_ARCHITECTURES:
        raise InputError(f"{model_path}: {model.file.architecture} is an encoder; perplexity needs a text generator")
    tokenizer = load_tokenizer(model.file)
    n_vocab = model.params.n_vocab
    if base is not None:
        if base.n_vocab != n_vocab:
            raise InputError(f"--kl-base {kl_base}: its vocabulary has {base.n_vocab} tokens, the model's {n_vocab}")
        tokens, n_ctx = base.tokens, base.n_ctx
        check_chunking(len(tokens), n_ctx, model.params.n_ctx_train)
    else:
        tokens = np.asarray(tokenizer.encode(text, add_special=True), dtype=np.int32)
        check_chunking(len(tokens), n_ctx, model.params.n_ctx_train)
    bos_id = tokenizer.bos_id if tokenizer.add_bos and tokenizer.bos_id is not None else None
    total = len(tokens) // n_ctx if base is None else base.n_chunk
    n_chunk = total if n_chunks is None else max(1, min(n_chunks, total))
    save = LogitsWriter(save_logits, n_ctx, n_vocab, n_chunk, tokens) if save_logits is not None else None
    try:
        return perplexity(model, tokens, n_ctx, min(n_batch, n_ctx), bos_id, n_chunk, save, base, progress)
    finally:
        if save is not None:
            save.close()
