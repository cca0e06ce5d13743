"""Query and document prefixes: recorded by the converter from sentence-transformers' prompts (or given),
read by the Embedder, recorded per collection, and prepended when indexing and searching."""

from __future__ import annotations

import json

import pytest
from store_fixtures import *  # noqa: F403
from store_fixtures import HashEmbedder

from embedkit.errors import CollectionMismatchError
from embedkit.gguf import GGUFFile
from embedkit.gguf.keys import DOCUMENT_PREFIX_KEY, QUERY_PREFIX_KEY
from embedkit.index import index_paths
from embedkit.search import search
from embedkit.store.collections import require_collection

WORDS = ["hello", "world", "query", "passage", "search", "river", "stone", "##s", "##ing"]


def tiny_bert_dir(root, prompts: dict | None):
    """A randomly initialised 2-layer BERT in Hugging Face layout, with a WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":"] + WORDS
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(root)
    torch.manual_seed(3)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(root, safe_serialization=True)
    if prompts is not None:
        (root / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts}))
    return root


def test_converter_records_prompts_and_overrides(tmp_path):
    from embedkit.convert import convert_hf_to_gguf
    from embedkit.embed import Embedder

    hf = tiny_bert_dir(tmp_path / "e5like", {"query": "query: ", "passage": "passage: "})
    out = convert_hf_to_gguf(hf, tmp_path / "a.gguf")
    with GGUFFile(out) as f:
        assert f.get(QUERY_PREFIX_KEY) == "query: " and f.get(DOCUMENT_PREFIX_KEY) == "passage: "
    emb = Embedder(out)
    assert (emb.query_prefix, emb.document_prefix) == ("query: ", "passage: ")
    out2 = convert_hf_to_gguf(hf, tmp_path / "b.gguf", query_prefix="search_query: ", document_prefix="")
    with GGUFFile(out2) as f:
        assert f.get(QUERY_PREFIX_KEY) == "search_query: " and f.get(DOCUMENT_PREFIX_KEY) is None
    plain = convert_hf_to_gguf(tiny_bert_dir(tmp_path / "plain", None), tmp_path / "c.gguf")
    assert (Embedder(plain).query_prefix, Embedder(plain).document_prefix) == ("", "")


class _Recording(HashEmbedder):
    """A HashEmbedder with a model's prefixes that remembers every text it embedded."""

    def __init__(self, query_prefix: str = "", document_prefix: str = "") -> None:
        super().__init__()
        self.query_prefix, self.document_prefix = query_prefix, document_prefix
        self.seen: list[str] = []

    def embed(self, texts, batch_size: int = 32, progress=None):
        self.seen.extend(texts)
        return super().embed(texts, batch_size, progress)


def test_collection_records_and_applies_prefixes(store, tmp_path, fresh_collection):
    (tmp_path / "a.txt").write_text("rivers and stones")
    emb = _Recording("query: ", "passage: ")
    index_paths(store, [str(tmp_path)], emb, emb.identity(), collection=fresh_collection)
    assert emb.seen and all(t.startswith("passage: ") for t in emb.seen)
    with store.connect() as conn:
        info = require_collection(conn, fresh_collection)
    assert (info.query_prefix, info.document_prefix) == ("query: ", "passage: ")
    emb.seen.clear()
    hits = search("stones", collection=fresh_collection, store=store, embedder=emb)
    assert emb.seen == ["query: stones"] and hits[0].text == "rivers and stones"  # stored text has no prefix
    # explicit prefixes are per collection: a different pair is refused, the same pair is fine
    with pytest.raises(CollectionMismatchError, match="prefix"):
        index_paths(store, [str(tmp_path)], emb, emb.identity(), collection=fresh_collection, query_prefix="")
    index_paths(store, [str(tmp_path)], emb, emb.identity(), collection=fresh_collection, query_prefix="query: ",
                document_prefix="passage: ")
    # settable per collection, whatever the model says
    other = fresh_collection + "_x"
    emb.seen.clear()
    index_paths(store, [str(tmp_path)], emb, emb.identity(), collection=other, query_prefix="", document_prefix="")
    assert emb.seen == ["rivers and stones"]
