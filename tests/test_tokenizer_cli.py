"""`embedkit tokenize`: plain, --json, --pieces, --no-bos, --parse-special, --jsonl batches, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from embedkit.cli.main import cli
from embedkit.gguf import GGUFFile
from embedkit.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def qwen_vocab(vocab_dir: Path) -> Path:
    return vocab_dir / "ggml-vocab-qwen2.gguf"


def _run(*args: str, stdin: str | None = None):  # noqa: ANN202
    return CliRunner().invoke(cli, ["tokenize", *args], input=stdin)


def test_plain_and_json(qwen_vocab: Path) -> None:
    with GGUFFile(qwen_vocab) as f:
        tok = load_tokenizer(f)
    text = "Hello <|im_start|> 世界"
    r = _run("-m", str(qwen_vocab), text)
    assert r.exit_code == 0, r.output
    assert [int(x) for x in r.output.split()] == tok.encode(text)
    r = _run("-m", str(qwen_vocab), "--json", "--parse-special", text)
    out = json.loads(r.output)
    assert out["ids"] == tok.encode(text, parse_special=True) and out["n_tokens"] == len(out["ids"])
    assert "".join(out["pieces"]) == text


def test_no_bos_and_pieces(vocab_dir: Path) -> None:
    spm = str(vocab_dir / "ggml-vocab-llama-spm.gguf")
    with_bos = [int(x) for x in _run("-m", spm, "Hi there").output.split()]
    without = [int(x) for x in _run("-m", spm, "--no-bos", "Hi there").output.split()]
    assert with_bos[0] == 1 and with_bos[1:] == without
    lines = _run("-m", spm, "--pieces", "Hi").output.splitlines()
    assert lines[0].split()[0] == "1" and "'<s>'" in lines[0] and len(lines) == len(with_bos[:1]) + 1


def test_jsonl_batch_from_stdin(qwen_vocab: Path) -> None:
    with GGUFFile(qwen_vocab) as f:
        tok = load_tokenizer(f)
    texts = ["one line", "中文 text", "", "tabs\tand\nnewlines"]
    r = _run("-m", str(qwen_vocab), "--jsonl", "-", stdin="\n".join(json.dumps(t) for t in texts) + "\n")
    assert r.exit_code == 0, r.output
    got = [json.loads(line) for line in r.output.splitlines()]
    assert got == [tok.encode(t) for t in texts]


def _console(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real console entry point (error lines and exit codes come from embedkit.cli.main)."""
    cmd = [sys.executable, "-m", "embedkit.cli.main", "tokenize", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)


def test_jsonl_bad_line_is_one_clear_error(qwen_vocab: Path) -> None:
    r = _console("-m", str(qwen_vocab), "--jsonl", "-", stdin='"ok"\n{"not": "a string"}\n')
    assert r.returncode == 1
    assert r.stdout.splitlines() == ["[562]"]
    assert r.stderr.strip() == "error: <stdin>: line 2 holds a dict; expected a JSON string"


def test_unknown_model_path_is_an_error(tmp_path: Path) -> None:
    r = _console("-m", str(tmp_path / "missing.gguf"), "x")
    assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
