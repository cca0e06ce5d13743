"""`embedkit info` on real files, known names and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedkit.cli.main", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_info_json_on_gemma(gemma_path: Path) -> None:
    proc = run("info", str(gemma_path), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["architecture"] == "gemma3"
    assert info["layers"] == 18 and info["embedding_length"] == 640
    assert info["heads"] == 4 and info["kv_heads"] == 1
    assert info["vocab_size"] == 262144 and info["tokenizer_model"] == "llama"
    assert info["file_type"] == "Q4_K_M"
    assert info["license"] == "gemma" and info["license_status"].startswith("restricted")
    assert {m["type"] for m in info["quantization_mix"]} == {"Q8_0", "Q5_0", "Q4_K", "Q6_K", "F32"}
    assert sum(m["bytes"] for m in info["quantization_mix"]) == info["tensor_bytes"]
    assert 260e6 < info["parameters"] < 280e6


@pytest.mark.slow
def test_info_by_known_name_and_tensor_list(smollm_path: Path) -> None:
    proc = run("info", "smollm2-135m", "--tensors")
    assert proc.returncode == 0, proc.stderr
    assert "llama" in proc.stdout and "apache-2.0: open source (OSI)" in proc.stdout
    assert "blk.0.attn_q.weight" in proc.stdout
    assert any(line.split() == ["chat", "template", "yes"] for line in proc.stdout.splitlines())


def test_info_bad_input_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (1).to_bytes(4, "little") + bytes(16))
    for target, message in [(str(bad), "unsupported GGUF version 1"), (str(tmp_path / "missing.gguf"), "neither")]:
        proc = run("info", target)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_cli_starts_in_an_interpreter_without_site_imports() -> None:
    """A wheel install has no editable-install finder that imports importlib.util at startup; `python -S`
    reproduces that bare start (a missing `import importlib.util` once broke every command there)."""
    import os
    import sysconfig

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), sysconfig.get_path("purelib")])}
    code = "import sys; sys.argv = ['embedkit', '--help']; from embedkit.cli.main import main; main()"
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "search" in proc.stdout and "generate" in proc.stdout
