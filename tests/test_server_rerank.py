"""POST /v1/rerank on the real `embedkit serve` subprocess, through httpx: llama-server's (Jina/Cohere) request
and response shape, scores equal to the library's cross-encoder, and each bad request a 4xx in OpenAI's error
shape. The cross-encoder is a BertForSequenceClassification with random weights in real shapes, converted."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_fixtures import free_port, server_env, start_server, stop_server
from store_fixtures import *  # noqa: F403  (pg_home)
from test_rerank import tiny_cross_encoder

QUERY = "protein binds dna"
DOCS = ["the protein binds the dna", "a river flows to the sea", "cells", "stone stones . , dna binding",
        "the sea"]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory) -> Path:
    from embedkit.convert import convert_hf_to_gguf

    root = tmp_path_factory.mktemp("ce")
    tiny_cross_encoder(root / "hf", 1)
    return convert_hf_to_gguf(root / "hf", root / "tiny-ce.gguf")


@pytest.fixture(scope="module")
def rerank_server(cross_encoder, pg_home, tmp_path_factory):
    log = tmp_path_factory.mktemp("rerank-log") / "serve.log"
    srv = start_server(server_env(pg_home, cross_encoder.parent), log, "--embed-model", "none", "--rerank-model",
                       str(cross_encoder))
    yield srv
    stop_server(srv)


def error_of(r, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    return err


def test_rerank_answers_in_llama_servers_shape(rerank_server, cross_encoder):
    from embedkit.embed.reranker import Reranker

    ce = Reranker(cross_encoder)
    want = ce.scores(QUERY, DOCS)
    tokens = sum(len(ids) for ids, _ in ce.pairs(QUERY, DOCS))
    with rerank_server.client() as c:
        r = c.post("/v1/rerank", json={"model": "tiny-ce", "query": QUERY, "documents": DOCS})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"model", "object", "usage", "results"}
        assert body["model"] == "tiny-ce" and body["object"] == "list"
        assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
        res = body["results"]
        assert all(set(x) == {"index", "relevance_score"} for x in res)
        assert sorted(x["index"] for x in res) == list(range(len(DOCS)))
        scores = [x["relevance_score"] for x in res]
        assert scores == sorted(scores, reverse=True)
        for x in res:
            assert x["relevance_score"] == pytest.approx(want[x["index"]], abs=1e-5)

        top = c.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 2}).json()["results"]
        assert top == res[:2]
        big = c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 50}).json()["results"]
        assert big == res  # top_n beyond the documents: all of them, as llama-server
        objs = c.post("/v1/rerank", json={"query": QUERY, "documents": [{"text": d} for d in DOCS], "top_n": 1,
                                          "return_documents": True}).json()["results"]
        assert objs == [{**res[0], "document": {"text": DOCS[res[0]["index"]]}}]

        models = c.get("/v1/models").json()["data"]
        assert [(m["id"], m["embedkit"]["kind"]) for m in models] == [("tiny-ce", "rerank")]


@pytest.mark.parametrize("body,status,param,code", [
    ({"query": QUERY, "documents": []}, 400, "documents", "invalid_value"),
    ({"query": "  ", "documents": DOCS}, 400, "query", "invalid_value"),
    ({"documents": DOCS}, 400, "query", "missing_required_parameter"),
    ({"query": QUERY}, 400, "documents", "missing_required_parameter"),
    ({"query": QUERY, "documents": ["a"] * 1001}, 400, "documents", "too_many_inputs"),
    ({"query": QUERY, "documents": DOCS, "top_n": 0}, 400, "top_n", "invalid_value"),
    ({"query": QUERY, "documents": DOCS, "top_n": -3}, 400, "top_n", "invalid_value"),
    ({"query": QUERY, "documents": DOCS, "top_n": "two"}, 400, "top_n", "invalid_value"),
    ({"query": QUERY, "documents": [1, 2]}, 400, "documents.0", "invalid_value"),
    ({"query": QUERY, "documents": DOCS, "model": "no-such-model"}, 404, "model", "model_not_found"),
])
def test_bad_rerank_requests_are_4xx_in_openais_shape(rerank_server, body, status, param, code):
    with rerank_server.client() as c:
        err = error_of(c.post("/v1/rerank", json=body), status)
    assert (err["param"], err["code"]) == (param, code), err


def test_malformed_json_is_400(rerank_server):
    with rerank_server.client() as c:
        err = error_of(c.post("/v1/rerank", content=b'{"query": "x", "documents": [', headers={
            "Content-Type": "application/json"}), 400)
    assert err["code"] == "invalid_json"


def test_a_rerank_model_that_is_no_cross_encoder_is_one_line(pg_home, tmp_path):
    import subprocess
    import sys

    from embedkit.testing.random_models import write_random_model

    bert = write_random_model(tmp_path / "bert.gguf", "bert", {"n_embd": 64, "n_head": 4, "n_ff": 128})
    p = subprocess.run([sys.executable, "-m", "embedkit.cli.main", "serve", "--embed-model", "none",
                        "--rerank-model", str(bert), "--port", str(free_port())], env=server_env(pg_home, tmp_path),
                       capture_output=True, text=True, timeout=120)
    lines = p.stderr.splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "not a cross-encoder" in lines[0], p.stderr


def test_no_rerank_model_loaded_is_404(pg_home, tmp_path):
    from embedkit.testing.random_models import write_random_model

    bert = write_random_model(tmp_path / "bert.gguf", "bert", {"n_embd": 64, "n_head": 4, "n_ff": 128})
    srv = start_server(server_env(pg_home, tmp_path), tmp_path / "serve.log", "--embed-model", str(bert))
    try:
        with srv.client() as c:
            err = error_of(c.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}), 404)
    finally:
        stop_server(srv)
    assert err["code"] == "model_not_found" and "--rerank-model" in err["message"], err
