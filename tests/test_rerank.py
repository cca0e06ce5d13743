"""Cross-encoder reranking: a BertForSequenceClassification with random weights in real shapes, converted to
GGUF, gives the logits transformers gives for the same (query, document) pairs."""

from __future__ import annotations

import numpy as np
import pytest
from store_fixtures import *  # noqa: F403

WORDS = ["the", "river", "stone", "flows", "to", "sea", "cell", "protein", "binds", "dna", "##s", "##ing", "a"]


def tiny_cross_encoder(root, num_labels: int):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(root / "vocab.txt"))
    tok.save_pretrained(root)
    torch.manual_seed(17)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=96, max_position_embeddings=40, num_labels=num_labels)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # make the segment embeddings differ clearly, as trained ones do
        model.bert.embeddings.token_type_embeddings.weight.normal_(0, 0.5)
    model.save_pretrained(root, safe_serialization=True)
    return model, tok


@pytest.mark.parametrize("num_labels", [1, 2])
def test_rerank_logits_match_transformers(tmp_path, num_labels):
    import torch

    from embedkit.convert import convert_hf_to_gguf
    from embedkit.embed.reranker import Reranker, rerank
    from embedkit.gguf import GGUFFile

    model, tok = tiny_cross_encoder(tmp_path / "hf", num_labels)
    path = convert_hf_to_gguf(tmp_path / "hf", tmp_path / "ce.gguf")
    with GGUFFile(path) as f:
        assert f.get("bert.pooling_type") == 4  # llama.cpp's rank pooling
        assert {"cls.weight", "cls.bias", "cls.output.weight", "cls.output.bias"} <= set(f.tensors)
    query = "protein binds dna"
    docs = ["the protein binds the dna", "a river flows to the sea", "cells", "stone stones . , dna binding",
            " ".join(["river"] * 60)]  # longer than the window: truncated like transformers' only_second
    enc = tok([query] * len(docs), docs, padding=True, truncation="only_second", max_length=40,
              return_tensors="pt")
    with torch.no_grad():
        want = model(**enc).logits.numpy()
    r = Reranker(path)
    got = r.logits(query, docs, batch_size=2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert rerank(r, query, docs) == pytest.approx(list(want[:, 0]), abs=1e-4)
    assert r.logits(query, []).shape == (0, num_labels)


def test_reranker_refuses_an_embedding_model(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from embedkit.convert import convert_hf_to_gguf
    from embedkit.embed.reranker import Reranker
    from embedkit.errors import UnsupportedModelError

    root = tmp_path / "emb"
    root.mkdir()
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(root)
    BertModel(BertConfig(vocab_size=18, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16)).save_pretrained(root)
    path = convert_hf_to_gguf(root, tmp_path / "emb.gguf")
    with pytest.raises(UnsupportedModelError, match="not a cross-encoder"):
        Reranker(path)


def test_search_and_cli_rerank(store, tmp_path, fresh_collection):
    import json

    from click.testing import CliRunner
    from store_fixtures import HashEmbedder

    from embedkit.cli.main import cli
    from embedkit.convert import convert_hf_to_gguf
    from embedkit.embed.reranker import rerank
    from embedkit.index import index_paths
    from embedkit.search import search

    tiny_cross_encoder(tmp_path / "hf", 1)
    path = convert_hf_to_gguf(tmp_path / "hf", tmp_path / "ce.gguf")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(["the protein binds dna", "a river flows to the sea", "dna . the river stone",
                              "protein protein protein"]):
        (docs / f"d{i}.txt").write_text(text)
    emb = HashEmbedder()
    index_paths(store, [str(docs)], emb, emb.identity(), collection=fresh_collection)
    query = "protein dna river"
    plain = search(query, k=4, collection=fresh_collection, store=store, keyword=True)
    got = search(query, k=4, collection=fresh_collection, store=store, keyword=True, rerank=str(path), rerank_top=3)
    scores = rerank(str(path), query, [h.text for h in plain[:3]])
    want = sorted(zip(scores, [h.chunk_id for h in plain[:3]], strict=True), key=lambda x: -x[0])
    assert [h.chunk_id for h in got[:3]] == [c for _, c in want]
    assert [h.score for h in got[:3]] == pytest.approx([s for s, _ in want])
    assert got[3:] == plain[3:]
    out = CliRunner().invoke(cli, ["rerank", "-m", str(path), query, "--json"],
                             input="the protein binds dna\n\n" + json.dumps({"text": "a river flows"}) + "\n")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)["results"]
    assert sorted(r["index"] for r in rows) == [0, 1]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
