"""Pure ranking logic: document-level collapse, reciprocal rank fusion, and the evaluation metrics against
values worked out by hand."""

from __future__ import annotations

import math

import pytest

from embedkit.errors import InputError
from embedkit.search.evaluation import evaluate_runs, mrr_at, ndcg_at, read_qrels, read_queries, recall_at
from embedkit.search.fusion import best_per_document, fuse_chunks, fuse_documents, rrf_scores
from embedkit.search.hits import ChunkHit


def hit(chunk: int, doc: int, score: float = 0.0) -> ChunkHit:
    return ChunkHit(f"doc{doc}", score, chunk, f"text {chunk}", doc, chunk % 10, 0, 1)


def test_best_per_document_keeps_first_chunk_of_each_document():
    hits = [hit(1, 10, 0.9), hit(2, 11, 0.8), hit(3, 10, 0.7), hit(4, 12, 0.6), hit(5, 11, 0.5)]
    assert [h.chunk_id for h in best_per_document(hits)] == [1, 2, 4]


def test_rrf_scores_by_hand():
    got = rrf_scores([[7, 8, 9], [9, 7]], rrf_k=60)
    assert got[7] == pytest.approx(1 / 61 + 1 / 62)
    assert got[8] == pytest.approx(1 / 62)
    assert got[9] == pytest.approx(1 / 63 + 1 / 61)


def test_fuse_chunks_orders_by_fused_score_and_breaks_ties_by_id():
    vec = [hit(1, 1), hit(2, 2), hit(3, 3)]
    kw = [hit(3, 3), hit(4, 4)]
    fused = fuse_chunks([vec, kw], k=10, rrf_k=60)
    assert [h.chunk_id for h in fused] == [3, 1, 2, 4]  # 3: 1/63 + 1/61 beats 1: 1/61; 2 and 4 tie at 1/62
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61)
    assert len(fuse_chunks([vec, kw], k=2)) == 2


def test_fuse_documents_ranks_documents_and_takes_the_best_fused_chunk_as_snippet():
    # vector: doc 1 (chunks 10, 11), doc 2; keyword: doc 2, doc 1 (chunk 11 first)
    vec = [hit(10, 1), hit(20, 2), hit(11, 1)]
    kw = [hit(20, 2), hit(11, 1)]
    fused = fuse_documents([vec, kw], k=5, rrf_k=60)
    # document ranks: vector 1, 2; keyword 2, 1 -> both 1/61 + 1/62, tie broken by document id
    assert [h.document_id for h in fused] == [1, 2]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    # chunk-level fused: 10 -> 1/61, 11 -> 1/63 + 1/62 (higher), so doc 1 shows chunk 11
    assert fused[0].chunk_id == 11
    assert fused[1].chunk_id == 20


def test_metrics_by_hand():
    judged = {"a": 2, "b": 1, "c": 0, "z": 1}
    ranked = ["c", "a", "x", "b"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at(ranked, judged) == pytest.approx(dcg / idcg)
    assert recall_at(ranked, judged) == pytest.approx(2 / 3)
    assert recall_at(ranked, judged, k=2) == pytest.approx(1 / 3)
    assert mrr_at(ranked, judged) == pytest.approx(1 / 2)
    assert mrr_at(["c", "x"], judged) == 0.0
    assert ndcg_at(["a", "b", "z"], judged) == pytest.approx(1.0)
    rep = evaluate_runs({"q1": ranked}, {"q1": judged, "q2": {"a": 1}})  # q2 has no run: zeros
    assert rep.queries == 2
    assert rep.ndcg_at_10 == pytest.approx(dcg / idcg / 2)
    assert rep.mrr_at_10 == pytest.approx(0.25)


def test_reading_beir_files(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"_id": "1", "text": "first"}\n\n{"_id": 2, "text": "second"}\n')
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t2\n2\td3\t0\n")
    assert read_queries(tmp_path / "q.jsonl") == {"1": "first", "2": "second"}
    assert read_qrels(tmp_path / "qrels.tsv") == {"1": {"d1": 1, "d2": 2}, "2": {"d3": 0}}
    (tmp_path / "bad.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\tx\n")
    with pytest.raises(InputError, match="bad.tsv:2"):
        read_qrels(tmp_path / "bad.tsv")
    (tmp_path / "bad.jsonl").write_text('{"text": "no id"}\n')
    with pytest.raises(InputError, match="bad.jsonl:1"):
        read_queries(tmp_path / "bad.jsonl")
    with pytest.raises(InputError, match="cannot read"):
        read_queries(tmp_path / "missing.jsonl")
