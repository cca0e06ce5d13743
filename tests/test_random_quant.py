"""embedkit.testing.random_quant (the GPU tests' and benchmarks' random models) on the CPU, and `embedkit info`
on such a model in-process: the fast counterparts of the GPU and real-model tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedkit import kernels
from embedkit.testing.random_quant import bert_spec, gemma3_spec, llama_spec, random_tensor_bytes, write_random_gguf


@pytest.mark.parametrize("gtype", ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q6_K"])
def test_random_bytes_dequantize_near_the_scale(gtype: str) -> None:
    rng = np.random.default_rng(31)
    w = kernels.dequantize(random_tensor_bytes(gtype, 16, 256, rng, scale=0.02), gtype, (16, 256))
    assert np.isfinite(w).all()
    assert 0.002 < np.abs(w).mean() < 0.2, np.abs(w).mean()


@pytest.mark.parametrize(
    "arch,spec",
    [
        ("llama", llama_spec(64, 2, 4, 2, 128, 96, "Q4_0", 64)),
        ("gemma3", gemma3_spec(256, 2, 2, 1, 128, 256, 96, "Q4_K", 3)),
        ("bert", bert_spec(64, 2, 2, 128, 96)),
    ],
)
def test_random_models_load_and_run(tmp_path: Path, arch: str, spec: tuple) -> None:
    from embedkit.models import load_model

    path = write_random_gguf(tmp_path / f"{arch}.gguf", arch, *spec, seed=7)
    model = load_model(path)
    ids = np.array([1, 5, 9, 2], dtype=np.int32)
    if arch == "bert":
        out = model.encode(ids[None], np.ones((1, 4), dtype=np.uint8))
    else:
        out = model.forward(ids, model.new_state(16), 0, output="logits")
    assert np.isfinite(out).all() and out.shape[-1] in (64, 96)


def test_info_on_a_random_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from embedkit.cli.main import main

    path = write_random_gguf(tmp_path / "llama.gguf", "llama", *llama_spec(64, 2, 4, 2, 128, 96, "Q8_0", 64), seed=3)
    with pytest.raises(SystemExit) as e:
        main(["info", str(path), "--json", "--tensors"])
    assert e.value.code == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "llama" and info["layers"] == 2 and info["heads"] == 4 and info["kv_heads"] == 2
    assert {m["type"] for m in info["quantization_mix"]} == {"F32", "Q8_0"}
    assert len(info["tensor_list"]) == 3 + 2 * 9
    with pytest.raises(SystemExit) as e:
        main(["info", str(path)])
    assert e.value.code == 0
    assert "quantization mix:" in capsys.readouterr().out
