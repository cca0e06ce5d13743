"""Embeddings: pooling/normalisation/batching units, MiniLM vs sentence-transformers, decoder pooling, CLI.

Reference vectors: tests/data/embed/ (600 stdlib docstring paragraphs embedded by sentence-transformers,
unnormalised; see the README there). Tolerances: cosine >= 0.99999 for f32/f16 conversions and
>= 0.999 for q8_0 (issue 6), on every text; unit pieces vs float64 numpy at 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedkit.convert import convert_hf_to_gguf
from embedkit.embed import Embedder, l2_normalize, pool
from embedkit.embed.batching import pad_batch, plan_batches
from embedkit.errors import InputError

DATA = Path(__file__).parent / "data" / "embed"
COSINE_MIN = {"f32": 0.99999, "f16": 0.99999, "q8_0": 0.999}


@pytest.fixture(scope="session")
def reference() -> tuple[list[str], np.ndarray]:
    """The committed texts and their sentence-transformers vectors."""
    texts = json.loads((DATA / "texts.json").read_text())
    vecs = np.load(DATA / "minilm_reference.npy")
    assert len(texts) == vecs.shape[0] >= 500
    return texts, vecs


@pytest.fixture(scope="session")
def minilm_files(minilm_gguf_path: Path, minilm_hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """MiniLM as f32 (the catalog's default model), f16 and q8_0 (converted here)."""
    out = tmp_path_factory.mktemp("minilm-gguf")
    files = {"f32": minilm_gguf_path}
    for outtype in ("f16", "q8_0"):
        files[outtype] = convert_hf_to_gguf(minilm_hf_dir, out / f"minilm-{outtype}.gguf", outtype)
    return files


@pytest.fixture(scope="session")
def minilm(minilm_gguf_path: Path) -> Embedder:
    """The default embedding model, normalised vectors."""
    return Embedder(minilm_gguf_path)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / np.linalg.norm(a64, axis=1) / np.linalg.norm(b64, axis=1)


# -- units ------------------------------------------------------------------------------------
def test_pool_matches_float64() -> None:
    """mean/cls/last pooling over right-padded batches equals a float64 loop over the real tokens."""
    rng = np.random.default_rng(3)
    hidden = rng.standard_normal((5, 9, 16)).astype(np.float32)
    lengths = [9, 1, 4, 7, 2]
    mask = np.zeros((5, 9), dtype=np.uint8)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    h64 = hidden.astype(np.float64)
    want = {
        "mean": np.stack([h64[i, :n].mean(0) for i, n in enumerate(lengths)]),
        "cls": h64[:, 0],
        "last": np.stack([h64[i, n - 1] for i, n in enumerate(lengths)]),
    }
    for method, ref in want.items():
        got = pool(hidden, mask, method)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=method)
    with pytest.raises(InputError, match="pooling"):
        pool(hidden, mask, "max")


def test_l2_normalize() -> None:
    """Unit norms, same directions, zero rows stay zero."""
    x = np.random.default_rng(4).standard_normal((6, 10)).astype(np.float32) * 7
    x[2] = 0
    y = l2_normalize(x)
    norms = np.linalg.norm(y.astype(np.float64), axis=1)
    np.testing.assert_allclose(np.delete(norms, 2), 1.0, atol=1e-6)
    assert not y[2].any()
    np.testing.assert_allclose(_cosines(np.delete(x, 2, 0), np.delete(y, 2, 0)), 1.0, atol=1e-6)


def test_plan_batches_covers_each_text_once() -> None:
    """Batches are sorted longest first, respect both limits, and cover every index exactly once."""
    lengths = np.random.default_rng(5).integers(1, 300, 101)
    batches = list(plan_batches(lengths, batch_size=8, max_tokens=1000))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(101))
    assert all(len(b) <= 8 and (len(b) == 1 or len(b) * lengths[b].max() <= 1000) for b in batches)
    assert np.all(np.diff(lengths[flat]) <= 0)
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    np.testing.assert_array_equal(ids, [[5, 6, 7], [8, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0]])


# -- MiniLM vs sentence-transformers ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_minilm_matches_sentence_transformers(minilm_files: dict, reference, outtype: str) -> None:
    """Every one of the 600 reference texts: cosine >= 0.99999 (f32, f16) / 0.999 (q8_0)."""
    texts, ref = reference
    emb = Embedder(minilm_files[outtype], normalize=False, max_tokens=256)  # ST's max_seq_length
    assert emb.pooling == "mean" and emb.dim == 384
    got = emb.embed(texts, batch_size=32)
    cos = _cosines(got, ref)
    assert cos.min() >= COSINE_MIN[outtype], (outtype, float(cos.min()), int(cos.argmin()))
    if outtype == "f32":  # unnormalised: the lengths agree too
        ratio = np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        np.testing.assert_allclose(ratio, 1.0, atol=1e-4)
    assert emb.stats.texts == len(texts) and emb.stats.truncated == 0


@pytest.mark.slow
def test_batching_does_not_change_vectors(minilm: Embedder, reference) -> None:
    """Padding and order: batch size 1 and 7 give the same vectors, in input order, unit length."""
    texts = reference[0][:15]
    one = minilm.embed(texts, batch_size=1)
    seven = minilm.embed(texts, batch_size=7)
    np.testing.assert_allclose(one, seven, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(_cosines(one, reference[1][:15]), 1.0, atol=1e-5)


@pytest.mark.slow
def test_concurrent_batches_match_one_at_a_time(minilm: Embedder, reference, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches run side by side on the kernel threads give the vectors of one-at-a-time runs (2e-6), in order."""
    import embedkit.embed.embedder as embedder_module

    texts = reference[0][:24]
    assert all(be.forward_threads() >= 1 for be in minilm.model.placement.backends)
    monkeypatch.setattr(embedder_module, "CONCURRENT_BATCHES", False)
    serial = minilm.embed(texts, batch_size=3)
    monkeypatch.setattr(embedder_module, "CONCURRENT_BATCHES", True)
    monkeypatch.setattr(embedder_module, "CONCURRENT_BATCH_TOKENS", 64)  # several batches even of short texts
    seen: list[int] = []
    side_by_side = minilm.embed(texts, batch_size=3, progress=seen.append)
    assert sum(seen) == len(texts)
    np.testing.assert_allclose(side_by_side, serial, atol=2e-6)
    np.testing.assert_allclose(_cosines(side_by_side, reference[1][:24]), 1.0, atol=1e-5)


@pytest.mark.slow
def test_truncation_is_counted(minilm_gguf_path: Path) -> None:
    """Texts over max_tokens keep [CLS] + the first tokens + [SEP]; the stats count them."""
    emb = Embedder(minilm_gguf_path, max_tokens=12)
    long_text = "The quick brown fox jumps over the lazy dog near the quiet river bank today. " * 3
    ids = emb.tokenizer.encode(long_text)
    assert emb.count_tokens(long_text) == len(ids) > 12
    got = emb.embed([long_text, "short text"])
    assert emb.stats.truncated == 1
    cut = np.array([ids[:11] + [ids[-1]]])
    hidden = emb.model.encode(cut, np.ones_like(cut))
    want = l2_normalize(pool(hidden, np.ones_like(cut), "mean"))
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)


@pytest.mark.slow
def test_long_texts_truncate_like_sentence_transformers(minilm: Embedder, minilm_hf_dir: Path) -> None:
    """The default limit is sentence-transformers' max_seq_length (256, recorded by the converter), not
    the 512 positions of the model, so long texts embed as sentence-transformers embeds them."""
    from sentence_transformers import SentenceTransformer

    rng = np.random.default_rng(1601)
    words = json.loads((DATA / "texts.json").read_text())
    long_texts = [" ".join(rng.choice(words, size=40)) for _ in range(3)]
    assert all(minilm.count_tokens(t) > 300 for t in long_texts)
    assert minilm.max_tokens == 256
    ours = minilm.embed(long_texts)
    st = SentenceTransformer(str(minilm_hf_dir), device="cpu")
    ref = st.encode(long_texts, normalize_embeddings=True, convert_to_numpy=True)
    assert _cosines(ours, ref).min() >= COSINE_MIN["f32"]


@pytest.mark.slow
def test_pooling_override(minilm_gguf_path: Path) -> None:
    """--pooling cls gives the [CLS] hidden state, different from mean."""
    cls = Embedder(minilm_gguf_path, pooling="cls", normalize=False)
    ids = np.array([cls.tokenizer.encode("pooling override")])
    hidden = cls.model.encode(ids, np.ones_like(ids))
    np.testing.assert_allclose(cls.embed(["pooling override"])[0], hidden[0, 0], atol=1e-6)
    with pytest.raises(InputError, match="pooling"):
        Embedder(minilm_gguf_path, pooling="max")


# -- decoder models ---------------------------------------------------------------------------
@pytest.mark.slow
def test_decoder_embeddings(smollm_path: Path) -> None:
    """A llama-family GGUF embeds via its final-normed hidden states, mean- or last-token pooled."""
    emb = Embedder(smollm_path, max_tokens=64)
    assert emb.pooling == "mean" and emb.architecture == "llama"
    texts = ["The cat sat on the mat.", "Databases store rows in tables."]
    ids = np.asarray(emb.tokenizer.encode(texts[1]), dtype=np.int32)
    hidden = emb.model.forward(ids, emb.model.new_state(64), 0, output="hidden", all_positions=True)
    for pooling, want in (("mean", hidden.astype(np.float64).mean(0)), ("last", hidden[-1])):
        emb.pooling = pooling
        got = emb.embed(texts)
        assert got.shape == (2, emb.dim)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert _cosines(got[1:], want[None].astype(np.float32))[0] >= 1 - 1e-5, pooling
        assert _cosines(got[:1], got[1:])[0] < 0.999  # different texts, different vectors


# -- CLI --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_embed(
    minilm_gguf_path: Path, minilm: Embedder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Arguments and --jsonl: one JSON array per line in input order; --npy; bad input -> one error line."""
    from embedkit.cli.main import main

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('"third text"\n\n"fourth, from a file"\n')
    with pytest.raises(SystemExit) as e:
        main(["embed", "-m", str(minilm_gguf_path), "first", "second one", "--jsonl", str(jsonl), "--threads", "1"])
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    got = np.array([json.loads(line) for line in lines], dtype=np.float32)
    want = minilm.embed(["first", "second one", "third text", "fourth, from a file"])
    np.testing.assert_allclose(got, want, atol=1e-6)

    npy = tmp_path / "v.npy"
    with pytest.raises(SystemExit) as e:
        main(["embed", "-m", str(minilm_gguf_path), "first", "--npy", str(npy), "--no-normalize", "-q"])
    assert e.value.code == 0
    assert capsys.readouterr().out == ""
    assert np.load(npy).shape == (1, 384) and abs(np.linalg.norm(np.load(npy)) - 1.0) > 1e-3

    jsonl.write_text('{"not": "a string"}\n')
    with pytest.raises(SystemExit) as e:
        main(["embed", "-m", str(minilm_gguf_path), "--jsonl", str(jsonl)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "in.jsonl:1" in err


def test_cli_models(capsys: pytest.CaptureFixture[str]) -> None:
    """`embedkit models --json` lists the known models with the embedding default among them."""
    from embedkit.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["models", "--json"])
    assert e.value.code == 0
    rows = json.loads(capsys.readouterr().out)
    minilm = next(r for r in rows if r["name"] == "all-minilm-l6-v2")
    assert minilm["kind"] == "embed" and minilm["default"]
