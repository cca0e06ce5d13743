"""Bad and unusual input through the CLI: one clear line on stderr and a non-zero exit, never a traceback,
a hang or lost output. Run as subprocesses where the behaviour is the process's (pipes, signals, exit codes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from store_fixtures import *  # noqa: F403  (pg_home, fresh_collection)

REPO = Path(__file__).resolve().parents[1]


def start(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "embedkit.cli.main", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def without_context_warning(err: bytes) -> bytes:
    """stderr without the warning that -c 100000 exceeds the tiny model's trained context (128)."""
    lines = err.splitlines(keepends=True)
    assert sum(ln.startswith(b"warning: the context of 100000 tokens") for ln in lines) == 1, err
    return b"".join(ln for ln in lines if not ln.startswith(b"warning: the context"))


def run_cli(args, input=None):
    from embedkit.cli.main import cli

    return CliRunner().invoke(cli, args, input=input)


def one_error_line(capsys, args) -> str:
    """Run main(args), expect exit 1 and exactly one 'error: ...' line on stderr; return that line."""
    from embedkit.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 1, (args, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "internal error" not in err, (args, err)
    return lines[0]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from embedkit.testing.random_models import write_random_model

    return write_random_model(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf", "llama", "tiny")


def test_stdout_closed_early_exits_0_silently(tiny_llama: Path) -> None:
    """`embedkit generate ... | head -c 10`: click turned the broken pipe into a silent exit 1."""
    p = start("generate", "-m", str(tiny_llama), "-p", "a", "-n", "-1", "--ignore-eos", "-c", "100000",
              "--device", "cpu")
    try:
        assert len(p.stdout.read(10)) == 10
        p.stdout.close()  # the next write of the endless generation fails with EPIPE
        assert p.wait(timeout=120) == 0
        assert without_context_warning(p.stderr.read()) == b""
    finally:
        p.kill()


def test_ctrl_c_during_generate_is_exit_130_and_one_line(tiny_llama: Path) -> None:
    """SIGINT once gave click's blank line and 'aborted' (two lines)."""
    p = start("generate", "-m", str(tiny_llama), "-p", "a", "-n", "-1", "--ignore-eos", "-c", "100000",
              "--device", "cpu", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = os.read(p.stdout.fileno(), 1)  # generation has started
        assert first
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130
    assert without_context_warning(err) == b"interrupted\n"


def test_jsonl_that_is_not_utf8_names_the_file(tmp_path: Path, vocab_dir: Path, capsys) -> None:
    """`embed --jsonl` / `tokenize --jsonl` of a Latin-1 file ended in 'internal error (UnicodeDecodeError ...)'."""
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'"ok"\n"caf\xe9"\n')
    line = one_error_line(capsys, ["embed", "--jsonl", str(bad)])
    assert line == f"error: {bad}: not UTF-8 text; expected one JSON string per line"
    vocab = str(vocab_dir / "ggml-vocab-llama-spm.gguf")
    line = one_error_line(capsys, ["tokenize", "-m", vocab, "--jsonl", str(bad)])
    assert line == f"error: {bad}: not UTF-8 text; expected one JSON string per line"


def test_embed_npy_into_a_missing_folder_fails_before_embedding(tmp_path: Path, capsys, monkeypatch) -> None:
    """`embed --npy /missing/x.npy` embedded everything, then died in np.save with an internal error."""
    import embedkit.catalog

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded for a path that cannot be written")

    monkeypatch.setattr(embedkit.catalog, "resolve_model", no_model)
    target = tmp_path / "missing" / "x.npy"
    line = one_error_line(capsys, ["embed", "hi", "--npy", str(target)])
    assert line == f"error: --npy {target}: {str(target.parent)!r} is not an existing folder"


def test_tokenize_output_flags_that_exclude_each_other(vocab_dir: Path, tmp_path: Path, capsys) -> None:
    """--json with --pieces (or with --jsonl) silently dropped one of them."""
    vocab = str(vocab_dir / "ggml-vocab-llama-spm.gguf")
    assert "not both" in one_error_line(capsys, ["tokenize", "-m", vocab, "--json", "--pieces", "hi"])
    texts = tmp_path / "t.jsonl"
    texts.write_text('"hi"\n', encoding="utf-8")
    assert "drop --json" in one_error_line(capsys, ["tokenize", "-m", vocab, "--jsonl", str(texts), "--json"])


def test_index_refuses_an_empty_collection_name_before_any_work(tmp_path: Path, capsys, monkeypatch) -> None:
    """`index -c ''` created a collection named '' (listed as ', default, ...' in errors)."""
    monkeypatch.setenv("EMBEDKIT_DATABASE_URL", "postgresql://x@127.0.0.1:1/x")  # never reached
    (tmp_path / "a.txt").write_text("hello", encoding="utf-8")
    for name, msg in [("", "collection name '' is empty"), ("a\nb", "collection name 'a\\nb' has control")]:
        assert msg in one_error_line(capsys, ["index", "-q", "-c", name, str(tmp_path)])


def test_search_and_similar_refuse_meaningless_queries_before_any_work(capsys, monkeypatch) -> None:
    """An empty query returned arbitrary chunks; --min-score 2 or nan silently returned nothing; --min-score
    with --hybrid was silently ignored; `similar ''` said '.: not a document'."""
    monkeypatch.setenv("EMBEDKIT_DATABASE_URL", "postgresql://x@127.0.0.1:1/x")  # never reached
    for args, msg in [
        (["search", ""], "the query is empty"),
        (["search", "  \n"], "the query is empty"),
        (["search", "fox", "--min-score", "2"], "--min-score must be a cosine similarity in [-1, 1], got 2.0"),
        (["search", "fox", "--min-score", "nan"], "--min-score must be a cosine similarity in [-1, 1], got nan"),
        (["search", "fox", "--min-score", "0.3", "--hybrid"], "--min-score applies to vector search, not to --hybrid"),
        (["similar", ""], "the target is empty"),
    ]:
        assert msg in one_error_line(capsys, args), args


def test_data_folders_that_are_files_are_named(tmp_path: Path, capsys, monkeypatch) -> None:
    """EMBEDKIT_HOME or EMBEDKIT_MODELS naming a file ended every command in 'internal error (FileExistsError)'."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    monkeypatch.setenv("EMBEDKIT_MODELS", str(a_file))
    line = one_error_line(capsys, ["models"])
    assert line == f"error: EMBEDKIT_MODELS: {a_file} exists and is not a folder; expected a folder"
    monkeypatch.setenv("EMBEDKIT_MODELS", str(a_file / "sub"))
    assert "EMBEDKIT_MODELS: cannot create the folder" in one_error_line(capsys, ["models"])
    monkeypatch.delenv("EMBEDKIT_MODELS")
    monkeypatch.delenv("EMBEDKIT_DATABASE_URL", raising=False)
    monkeypatch.setenv("EMBEDKIT_HOME", str(a_file))
    line = one_error_line(capsys, ["db", "status"])
    assert line == f"error: EMBEDKIT_HOME: {a_file} exists and is not a folder; expected a folder"


def test_vocab_only_gguf_given_to_a_model_command(vocab_dir: Path, capsys) -> None:
    """A vocabulary-only GGUF (llama.cpp's tokenizer fixtures) was refused with "missing tensor
    'token_embd.weight'", which does not say what is wrong with the file."""
    for args, name in [(["generate", "-p", "hi", "-n", "1"], "ggml-vocab-llama-spm.gguf"),
                       (["embed", "hi"], "ggml-vocab-bert-bge.gguf"), (["embed", "hi"], "ggml-vocab-llama-spm.gguf")]:
        line = one_error_line(capsys, [*args, "-m", str(vocab_dir / name)])
        assert line.endswith(f"{name}: holds no tensors (a vocabulary-only GGUF?); expected a model with its "
                             "weights"), (args, line)


def test_search_when_the_collections_model_file_is_gone(tmp_path: Path) -> None:
    """A collection built with `-m some/file.gguf` whose file was later moved answered searches with
    "model '/abs/file.gguf' is neither an existing file nor a known model name", not saying why that model."""
    from embedkit.errors import ModelNotFoundError
    from embedkit.index.models import embedder_for_collection
    from embedkit.store.collections import CollectionInfo, ModelIdentity

    gone = str(tmp_path / "moved-away.gguf")
    model = ModelIdentity(gone, "moved-away.gguf", "0" * 64, "bert", 8, "mean", True)
    info = CollectionInfo(1, "notes", model, 256, 32)
    with pytest.raises(ModelNotFoundError, match=r"^collection 'notes' was built with the model '.*moved-away.gguf', "
                                                 r"which is no longer there; give the same model \(moved-away.gguf\)"):
        embedder_for_collection(info)


def _damaged_copy(src: Path, dst: Path, tensor: str, fill: bytes = b"\xff") -> Path:
    """`src` with `tensor`'s data overwritten by `fill` repeated (0xFF bytes: NaN as float32)."""
    from embedkit.gguf import GGUFFile

    data = bytearray(src.read_bytes())
    with GGUFFile(src) as f:
        t = f.tensor(tensor)
        start = f.data_offset + t.offset
        data[start:start + t.n_bytes] = (fill * t.n_bytes)[: t.n_bytes]
    dst.write_bytes(bytes(data))
    return dst


def test_embedding_model_with_nan_weights_is_one_clear_error(tmp_path: Path, capsys, monkeypatch) -> None:
    """`embed` printed '[NaN, NaN, ...]' (not JSON) with exit 0, and `index` ended in 'internal error
    (DataException: NaN not allowed in vector' over two lines, after a blank line left by the progress bar."""
    from embedkit.testing.random_models import write_random_model

    good = write_random_model(tmp_path / "bert.gguf", "bert", {"n_embd": 64, "n_head": 4, "n_ff": 128})
    bad = _damaged_copy(good, tmp_path / "damaged.gguf", "blk.0.ffn_down.weight")
    line = one_error_line(capsys, ["embed", "-q", "-m", str(bad), "hi", "there"])
    assert line == (f"error: {bad}: the model produced NaN or infinite values for 2 of 2 texts (the first is text "
                    "1); its weights are damaged or not computed right")


def test_index_with_nan_weights_is_one_line(tmp_path: Path, capsys, monkeypatch, pg_home, fresh_collection) -> None:
    """The same model given to `index`: 'internal error (DataException: NaN not allowed in vector' over two
    lines, after a blank line that the progress bar leaves where stderr is no terminal."""
    from embedkit.testing.random_models import write_random_model

    good = write_random_model(tmp_path / "bert.gguf", "bert", {"n_embd": 64, "n_head": 4, "n_ff": 128})
    bad = _damaged_copy(good, tmp_path / "damaged.gguf", "blk.0.ffn_down.weight")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("some words\n")
    monkeypatch.delenv("EMBEDKIT_DATABASE_URL", raising=False)
    monkeypatch.setenv("EMBEDKIT_HOME", str(pg_home))
    line = one_error_line(capsys, ["index", "-m", str(bad), "-c", fresh_collection, str(docs)])
    assert "the model produced NaN or infinite values for 1 of 1 texts" in line


def test_generate_with_nan_weights_prints_only_the_error(tiny_llama: Path, tmp_path: Path) -> None:
    """numpy's 'RuntimeWarning: invalid value encountered in matmul' (two lines) came before the error line."""
    inf = np.array([np.inf], dtype=np.float32).tobytes()
    bad = _damaged_copy(tiny_llama, tmp_path / "damaged.gguf", "blk.1.ffn_down.weight", inf)
    p = start("generate", "-m", str(bad), "-p", "ab", "-n", "3", "--seed", "1", "--device", "cpu")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1 and out == b""
    assert err.decode().splitlines() == ["error: the model produced NaN logits: its weights are damaged or not "
                                         "computed right (sampling from them would be meaningless)"]
