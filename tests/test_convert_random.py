"""HF -> GGUF conversion and embedding of a tiny random-weight BERT: the fast counterpart of the MiniLM tests.

The folder is what sentence-transformers saves (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, modules.json, 1_Pooling/config.json, sentence_bert_config.json), made here with
`transformers` and `tokenizers` from seeded random weights. The converted file must give Hugging Face's token
ids, and its mean-pooled, normalised embeddings must match `transformers` on the same ids (f32: 1e-5; f16
and q8_0, whose weights are rounded: cosine >= 0.999).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedkit.convert import convert_hf_to_gguf
from embedkit.errors import ConversionError

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away", "quick", "brown", "fox", "jump", "over",
         "lazy", "##s", "##ed", "##ing", "a", "and", "to", ",", ".", "!", "?"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEXTS = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dogs!", "dog", "Ran far, far away?"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(
        tokenizer_object=BertWordPieceTokenizer(vocab, lowercase=True)._tokenizer, do_lower_case=True,
        unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
    ).save_pretrained(out)  # fmt: skip
    torch.manual_seed(1234)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    model = BertModel(config, add_pooling_layer=False)
    with torch.no_grad():  # the default init is too small to exercise much: widen it
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(out, safe_serialization=True)
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))  # fmt: skip
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    return out


def _reference(hf_dir: Path, ids: list[list[int]]) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states from transformers, one text at a time (no padding)."""
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(hf_dir, add_pooling_layer=False).eval()
    vecs = []
    with torch.no_grad():
        for seq in ids:
            h = model(torch.tensor([seq])).last_hidden_state[0].double().numpy()
            v = h.mean(axis=0)
            vecs.append(v / np.linalg.norm(v))
    return np.stack(vecs)


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_converted_tiny_bert_embeds_like_transformers(hf_dir: Path, tmp_path: Path, outtype: str) -> None:
    from tokenizers import Tokenizer

    from embedkit.embed import Embedder

    path = convert_hf_to_gguf(hf_dir, tmp_path / f"tiny-{outtype}.gguf", outtype)
    with Embedder(path) as emb:
        ours = [emb.tokenizer.encode(t, add_special=True) for t in TEXTS]
        hf = [e.ids for e in Tokenizer.from_file(str(hf_dir / "tokenizer.json")).encode_batch(TEXTS)]
        assert ours == hf
        assert emb.pooling == "mean" and emb.max_tokens == 32
        got = emb.embed(TEXTS, batch_size=3)
    ref = _reference(hf_dir, hf)
    if outtype == "f32":
        np.testing.assert_allclose(got, ref, atol=1e-5)
    else:
        assert (np.sum(got * ref, axis=1) >= 0.999).all()


def test_cli_convert_and_embed(hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from embedkit.cli.main import main
    from embedkit.embed import Embedder
    from embedkit.gguf import GGUFFile

    out = tmp_path / "tiny.gguf"
    with pytest.raises(SystemExit) as e:
        main(["convert", str(hf_dir), str(out), "--outtype", "q8_0", "--json"])
    assert e.value.code == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "bert"
    with GGUFFile(out) as f:
        assert f.tensor("blk.0.ffn_up.weight").ggml_type.name == "Q8_0"
    with pytest.raises(SystemExit) as e:
        main(["embed", "-m", str(out), "the cat", "a lazy dog", "--threads", "1"])
    assert e.value.code == 0
    got = np.array([json.loads(line) for line in capsys.readouterr().out.splitlines()], dtype=np.float32)
    with Embedder(out) as emb:
        np.testing.assert_allclose(got, emb.embed(["the cat", "a lazy dog"]), atol=1e-6)


def test_convert_refuses_what_it_cannot_convert(hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="outtype"):
        convert_hf_to_gguf(hf_dir, tmp_path / "x.gguf", "q3_k")
    with pytest.raises(ConversionError, match="not a GGUF file"):
        convert_hf_to_gguf(hf_dir, hf_dir / "config.json", "f32")
    config = json.loads((hf_dir / "config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2Model"], "model_type": "gpt2"}))
    with pytest.raises(ConversionError, match="only BERT"):
        convert_hf_to_gguf(other, tmp_path / "y.gguf")
