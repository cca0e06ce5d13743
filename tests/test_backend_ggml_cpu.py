"""Which arithmetic a decoder gets on the CPU: float32 by default; with `ggml` (--cpu-math or EMBEDKIT_CPU_MATH)
llama.cpp's (GGMLCPUBackend) for quantized files whose matrix types all have exact kernels, float32 otherwise;
bad values are one clear error.
(That the llama.cpp arithmetic equals llama.cpp's logits is tests/test_models_real.py and test_models_random.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedkit.backend import cpu_placement, make_placement
from embedkit.backend.cpu import CPUBackend
from embedkit.backend.ggml_cpu import GGMLCPUBackend, cpu_math
from embedkit.errors import InputError
from embedkit.gguf.types import GGMLType
from embedkit.models import load_model


@pytest.fixture(scope="module")
def tiny_q8(tmp_path_factory) -> Path:
    from embedkit.testing.random_models import write_random_model

    return write_random_model(tmp_path_factory.mktemp("tiny") / "tiny-q8.gguf", "llama", "tiny", "Q8_0", seed=3)


def test_cpu_math_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBEDKIT_CPU_MATH", raising=False)
    assert cpu_math() == "float32"
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "ggml")
    assert cpu_math() == "ggml"
    assert cpu_math("float32") == "float32"  # the option wins over the variable
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "fp64")
    with pytest.raises(InputError, match="EMBEDKIT_CPU_MATH='fp64'"):
        cpu_math()
    with pytest.raises(InputError, match="--cpu-math 'llama.cpp'"):
        cpu_math("llama.cpp")


def test_placement_for_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBEDKIT_CPU_MATH", raising=False)
    quantized = {int(GGMLType.Q4_K), int(GGMLType.Q6_K), int(GGMLType.Q5_0), int(GGMLType.Q8_0)}
    assert type(cpu_placement(2).for_decoder(quantized).layer(1)) is CPUBackend  # float32 by default
    assert type(make_placement("cpu", cpu_math="ggml")(2).for_decoder(quantized).layer(1)) is GGMLCPUBackend
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "ggml")
    assert type(cpu_placement(2).for_decoder(quantized).layer(1)) is GGMLCPUBackend
    # float weights (and types without exact kernels) keep float32, closest to the model itself
    assert type(cpu_placement(2).for_decoder({int(GGMLType.F32)}).layer(0)) is CPUBackend
    assert type(cpu_placement(2).for_decoder(quantized | {int(GGMLType.Q5_1)}).layer(0)) is CPUBackend
    assert type(make_placement("cpu", cpu_math="float32")(2).for_decoder(quantized).layer(0)) is CPUBackend


def test_both_arithmetics_give_close_logits(tiny_q8: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two CPU arithmetics differ by llama.cpp's roundings only (8-bit activations, float16 KV cache)."""
    ids = np.random.default_rng(5).integers(3, 320, size=12).astype(np.int32)
    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "ggml")
    exact = load_model(tiny_q8)
    assert type(exact.placement.layer(0)) is GGMLCPUBackend
    a = exact.forward(ids, exact.new_state(32), 0, all_positions=True)
    monkeypatch.delenv("EMBEDKIT_CPU_MATH")
    plain = load_model(tiny_q8)
    assert type(plain.placement.layer(0)) is CPUBackend
    b = plain.forward(ids, plain.new_state(32), 0, all_positions=True)
    rel = np.abs(a - b).max() / np.abs(b).max()
    assert 0 < rel < 3e-2, rel


def test_bad_cpu_math_is_one_line_error(tiny_q8: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedkit.cli.main import main

    monkeypatch.setenv("EMBEDKIT_CPU_MATH", "fast")
    with pytest.raises(SystemExit) as e:
        main(["generate", "-m", str(tiny_q8), "-p", "hello", "-n", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert err.splitlines() == [err.strip()] and "EMBEDKIT_CPU_MATH='fast'" in err, err


def test_bad_cpu_math_option_is_one_line_error(tiny_q8: Path, capsys) -> None:
    from embedkit.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["generate", "-m", str(tiny_q8), "-p", "hello", "-n", "2", "--device", "cpu", "--cpu-math", "fast"])
    err = capsys.readouterr().err
    assert e.value.code != 0 and "--cpu-math" in err and "Traceback" not in err, err


@pytest.mark.parametrize("math", ["ggml", "float32"])
def test_cpu_math_option_runs(tiny_q8: Path, capsys, math: str) -> None:
    from embedkit.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["generate", "-m", str(tiny_q8), "-p", "hello", "-n", "2", "--device", "cpu", "--cpu-math", math,
              "--temp", "0", "-q"])
    assert e.value.code == 0, capsys.readouterr().err
