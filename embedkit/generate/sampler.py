"""Token sampling with llama.cpp's semantics and order.

The chain mirrors llama.cpp's default (`common/sampling.cpp`, `src/llama-sampling.cpp`):

    penalties -> top-k -> top-p -> min-p -> temperature -> draw

Temperature comes *after* the truncation samplers, so top-p sees probabilities at temperature 1, as in
llama.cpp (and unlike Hugging Face). ``temp <= 0`` keeps only the most likely token (greedy), after penalties.
Every step is vectorised over the vocabulary: on a 262k-entry vocabulary the truncations use
``argpartition`` and sort only the few survivors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedkit.errors import GenerationError

# Candidates examined before falling back to a full sort when only top-p truncates.
_TOP_P_PARTIAL = 1024


@dataclass(frozen=True)
class SamplerParams:
    """Sampling settings; defaults are llama.cpp's (``common_params_sampling``)."""

    temp: float = 0.8
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # >= 1: off
    min_p: float = 0.05  # <= 0: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64  # tokens of history the penalties look at; 0: off, -1: all
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # None or -1 (llama.cpp's LLAMA_DEFAULT_SEED): a fresh random seed

    def check(self) -> None:
        """Raise GenerationError for settings that make no sense."""
        if not np.isfinite(self.temp):
            raise GenerationError(f"temperature must be a finite number, got {self.temp}")
        if not 0.0 <= self.top_p or np.isnan(self.top_p):
            raise GenerationError(f"top-p must be >= 0, got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise GenerationError(f"min-p must be in [0, 1], got {self.min_p}")
        if not self.repeat_penalty > 0.0 or not np.isfinite(self.repeat_penalty):
            raise GenerationError(f"repeat penalty must be a finite number > 0, got {self.repeat_penalty}")
        for name, value in (("presence", self.presence_penalty), ("frequency", self.frequency_penalty)):
            if not np.isfinite(value):
                raise GenerationError(f"{name} penalty must be a finite number, got {value}")
        if self.seed is not None and not -1 <= self.seed < 2**64:
            raise GenerationError(f"seed must be in [0, 2**64) or -1 (random), got {self.seed}")
        if self.repeat_last_n < -1:
            raise GenerationError(f"repeat-last-n must be >= -1, got {self.repeat_last_n}")

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax (after penalties)."""
        return self.temp <= 0.0


def apply_penalties(logits: np.ndarray, history: Sequence[int] | np.ndarray, params: SamplerParams) -> None:
    """Penalise tokens seen in the last ``repeat_last_n`` of ``history``, in place (llama.cpp's penalties).

    Repetition: a positive logit is divided by the penalty, a negative one multiplied. Then
    ``logit -= count * frequency_penalty + (count > 0) * presence_penalty``.
    """
    last_n = params.repeat_last_n
    if last_n == 0 or len(history) == 0:
        return
    if params.repeat_penalty == 1.0 and params.frequency_penalty == 0.0 and params.presence_penalty == 0.0:
        return
    window = np.asarray(history, dtype=np.int64)
    if last_n > 0:
        window = window[-last_n:]
    ids, counts = np.unique(window, return_counts=True)
    keep = (ids >= 0) & (ids < logits.shape[0])
    ids, counts = ids[keep], counts[keep]
    vals = logits[ids]
    rp = np.float32(params.repeat_penalty)
    vals = np.where(vals <= 0, vals * rp, vals / rp)
    vals = vals - counts.astype(np.float32) * np.float32(params.frequency_penalty)
    vals = vals - np.float32(params.presence_penalty)
    logits[ids] = vals


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(), dtype=np.float64)
    return e / e.sum()


def top_k_ids(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits (unordered), in O(n).

    A cheap mask ``logit >= max - c`` usually leaves a few hundred candidates; when it keeps at least k,
    the k largest are certainly among them, and only those are partitioned.
    """
    n = logits.shape[0]
    mx = logits.max()
    for margin in (8.0, 16.0, 32.0):
        sub = np.flatnonzero(logits >= mx - np.float32(margin))
        if sub.shape[0] >= k:
            if sub.shape[0] == k:
                return sub
            return sub[np.argpartition(logits[sub], sub.shape[0] - k)[sub.shape[0] - k :]]
    return np.argpartition(logits, n - k)[n - k :]


def candidates(logits: np.ndarray, params: SamplerParams) -> tuple[np.ndarray, np.ndarray]:
    """Run the truncation samplers on (already penalised) logits.

    Returns ``(ids, logits)`` of the surviving tokens, sorted by logit descending, *before* temperature.
    """
    n = logits.shape[0]
    if n == 0:
        raise GenerationError("the model returned an empty logits vector")
    ids: np.ndarray | None = None  # None: every token (no index array is built for the full vocabulary)
    vals = logits
    k = params.top_k
    if 0 < k < n:
        ids = top_k_ids(logits, k)
        vals = logits[ids]
    # Normaliser of the top-p softmax: over all top-k survivors (top-p comes before min-p).
    mx = float(vals.max())
    z = float(np.exp(vals.astype(np.float64) - mx).sum()) if params.top_p < 1.0 else 1.0
    # min-p keeps logit >= max + log(min_p): a cheap O(n) filter that can be done before sorting,
    # since min-p's threshold does not depend on what top-p removes (the max survives top-p).
    if params.min_p > 0.0:
        keep = vals >= np.float32(mx + np.log(params.min_p))
        ids = np.flatnonzero(keep) if ids is None else ids[keep]
        vals = vals[keep]
    if ids is None:
        ids = np.arange(n)
    if params.top_p < 1.0 and vals.shape[0] > _TOP_P_PARTIAL:
        # Sort only the head; fall back to all when the head does not reach p.
        head = np.argpartition(vals, vals.shape[0] - _TOP_P_PARTIAL)[-_TOP_P_PARTIAL:]
        head = head[np.argsort(-vals[head], kind="stable")]
        cum = np.cumsum(np.exp(vals[head].astype(np.float64) - mx)) / z
        if cum[-1] >= params.top_p:
            ids, vals = ids[head], vals[head]
    order = np.argsort(-vals, kind="stable")
    ids, vals = ids[order], vals[order]
    if params.top_p < 1.0:
        cum = np.cumsum(np.exp(vals.astype(np.float64) - mx)) / z
        # keep up to and including the first token where the cumulative probability reaches p
        last = int(np.searchsorted(cum, params.top_p, side="left")) + 1
        ids, vals = ids[:last], vals[:last]
    return ids, vals


def _penalties_active(history: Sequence[int] | np.ndarray, p: SamplerParams) -> bool:
    if p.repeat_last_n == 0 or len(history) == 0:
        return False
    return p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def token_distribution(
    logits: np.ndarray, history: Sequence[int] | np.ndarray, params: SamplerParams
) -> tuple[np.ndarray, np.ndarray]:
    """The distribution the sampler draws from: ``(ids, probs)``, sorted by probability descending."""
    work = np.asarray(logits, dtype=np.float32)
    penalties = _penalties_active(history, params)
    if params.greedy and not penalties:
        # one pass over the vocabulary (a batched step samples each sequence's 150-260k logits): argmax gives the
        # first NaN if there is one, else the largest value, so its logit is what `max` would report
        best = int(np.argmax(work))
        _check_top(work[best])
        return np.array([best]), np.array([1.0])
    _check_top(work.max())  # NaN if any logit is NaN
    if penalties:
        work = work.copy()
        apply_penalties(work, history, params)
    if params.greedy:
        best = int(np.argmax(work))
        return np.array([best]), np.array([1.0])
    ids, vals = candidates(work, params)
    return ids, _softmax(vals.astype(np.float64) / params.temp)


def _check_top(top: np.float32) -> None:
    """Raise GenerationError unless the largest logit `top` is finite (NaN or infinite logits: broken weights)."""
    if not np.isfinite(top):
        what = "NaN" if np.isnan(top) else "infinite" if top > 0 else "only -infinity"
        raise GenerationError(f"the model produced {what} logits: its weights are damaged or not computed right "
                              "(sampling from them would be meaningless)")


class Sampler:
    """Chooses the next token from logits, with its own seeded random generator."""

    def __init__(self, params: SamplerParams | None = None) -> None:
        """Check ``params`` and seed the generator (``params.seed``; None or -1 draws a fresh seed)."""
        self.params = params or SamplerParams()
        self.params.check()
        seed = self.params.seed
        self.seed = seed if seed is not None and seed >= 0 else int(np.random.SeedSequence().entropy % 2**32)
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] | np.ndarray = ()) -> int:
        """Sample one token id from a [n_vocab] (or [1, n_vocab]) logits vector."""
        logits = np.asarray(logits).reshape(-1)
        ids, probs = token_distribution(logits, history, self.params)
        if ids.shape[0] == 1:
            return int(ids[0])
        u = self._rng.random()
        pick = int(np.searchsorted(np.cumsum(probs), u * probs.sum(), side="right"))
        return int(ids[min(pick, ids.shape[0] - 1)])
