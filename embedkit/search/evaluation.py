"""Measuring retrieval on a BEIR-format test collection: queries (JSON lines with `_id` and `text`), relevance
judgments (qrels TSV: query-id, corpus-id, score, with a header line) and a collection whose documents are
stored under their corpus ids (`embedkit index --jsonl corpus.jsonl`).

Metrics as trec_eval/pytrec_eval compute them for BEIR: nDCG@10 with linear gain (the judged score) and log2
discount, against the ideal ordering of all judged documents; recall@100 over documents judged > 0; MRR@10
(reciprocal rank of the first document judged > 0 within the top 10). Each is averaged over the judged queries.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedkit.errors import InputError

NDCG_AT = 10
RECALL_AT = 100
MRR_AT = 10


def read_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """query id -> text from a BEIR `queries.jsonl`."""
    out: dict[str, str] = {}
    lines = _read_lines(path)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not JSON ({exc.msg}); expected one query object per line") from None
        if not isinstance(obj, dict) or "_id" not in obj or not isinstance(obj.get("text"), str):
            raise InputError(f'{path}:{n}: expected an object with "_id" and "text"')
        out[str(obj["_id"])] = obj["text"]
    return out


def read_qrels(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """query id -> {corpus id: relevance} from a BEIR qrels TSV (header line optional)."""
    out: dict[str, dict[str, int]] = {}
    lines = _read_lines(path)
    for n, line in enumerate(lines, 1):
        parts = line.split("\t") if "\t" in line else line.split()
        if not parts or not line.strip():
            continue
        if n == 1 and not parts[-1].lstrip("-").isdigit():
            continue  # header
        if len(parts) == 4:  # TREC style: qid iteration docid rel
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3 or not parts[2].strip().lstrip("-").isdigit():
            raise InputError(f"{path}:{n}: expected query-id, corpus-id and an integer score separated by tabs")
        out.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return out


def _read_lines(path: str | os.PathLike[str]) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None


def ndcg_at(ranked: Sequence[str], judged: dict[str, int], k: int = NDCG_AT) -> float:
    """nDCG@k with linear gain and log2(rank + 1) discount (trec_eval's ndcg_cut)."""
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((r for r in judged.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: Sequence[str], judged: dict[str, int], k: int = RECALL_AT) -> float:
    """Share of the documents judged > 0 found in the top k."""
    relevant = {d for d, r in judged.items() if r > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranked: Sequence[str], judged: dict[str, int], k: int = MRR_AT) -> float:
    """1 / rank of the first document judged > 0 within the top k (0 if none)."""
    for i, d in enumerate(ranked[:k]):
        if judged.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


@dataclass
class EvalReport:
    """Averaged metrics over the judged queries, and each query's values."""

    queries: int = 0
    ndcg_at_10: float = 0.0
    recall_at_100: float = 0.0
    mrr_at_10: float = 0.0
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The `--json` object (without the per-query values)."""
        return {"queries": self.queries, "ndcg@10": round(self.ndcg_at_10, 5),
                "recall@100": round(self.recall_at_100, 5), "mrr@10": round(self.mrr_at_10, 5)}


def evaluate_runs(runs: dict[str, Sequence[str]], qrels: dict[str, dict[str, int]]) -> EvalReport:
    """Metrics of ranked document-id lists (query id -> ids, best first) against qrels; a judged query
    without a run counts as an empty ranking."""
    rep = EvalReport()
    for qid, judged in qrels.items():
        ranked = list(runs.get(qid, []))
        rep.per_query[qid] = {"ndcg@10": ndcg_at(ranked, judged), "recall@100": recall_at(ranked, judged),
                              "mrr@10": mrr_at(ranked, judged)}
    n = len(rep.per_query)
    rep.queries = n
    if n:
        rep.ndcg_at_10 = sum(v["ndcg@10"] for v in rep.per_query.values()) / n
        rep.recall_at_100 = sum(v["recall@100"] for v in rep.per_query.values()) / n
        rep.mrr_at_10 = sum(v["mrr@10"] for v in rep.per_query.values()) / n
    return rep


def judged_queries(queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The qrels restricted to queries that have a text and at least one judgment; an InputError if none."""
    kept = {q: j for q, j in qrels.items() if q in queries and j}
    if not kept:
        raise InputError("no query of the qrels file is in the queries file; are they of the same collection?")
    return kept


def run_queries(search: Callable[[str, str], Sequence[str]], queries: dict[str, str], ids: Sequence[str],
                progress: Callable[[int], None] | None = None) -> dict[str, list[str]]:
    """query id -> ranked document ids from `search(query id, text)`, for each id in `ids`."""
    runs = {}
    for i, qid in enumerate(ids, 1):
        runs[qid] = list(search(qid, queries[qid]))
        if progress is not None:
            progress(i)
    return runs
