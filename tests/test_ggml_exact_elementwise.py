"""ggml_exact's elementwise ops equal llama.cpp's CPU backend bit for bit (tolerance zero).

Compared: get_rows (Q8_0, Q5_0), scale, add (residual and bias), mul, rms_norm, rms_norm + weight mul
(the pair ggml's CPU backend fuses), rope (norm and neox, Gemma's local/global bases, partial n_rot,
freq_scale), geglu (float16 GELU table) and swiglu (ggml_v_expf), against
- tests/data/ggml_exact/elementwise.npz: random inputs of the real models' shapes run through ggml itself
  (make_elementwise_goldens.py), slices of real Gemma 3 / SmolLM2 / Qwen2 tensors with the llama.cpp
  run's own outputs, and the CPU backend's float16 GELU table;
- when llama_cpp is importable, ggml itself on fresh random inputs (a new seed each run, printed on failure).
Every comparison is np.array_equal on the float32 bit patterns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from embedkit.kernels.cpu.ggml_exact import elementwise, glu, rope

DATA = Path(__file__).parent / "data" / "ggml_exact"
GOLDENS = np.load(DATA / "elementwise.npz")


def run_ours(op: str, inputs: dict[str, np.ndarray], params: dict) -> np.ndarray:
    """ggml_exact's result for one golden case."""
    if op == "rms_norm":
        return elementwise.rms_norm(inputs["x"], params["eps"])
    if op == "rms_norm_mul":
        return elementwise.rms_norm_mul(inputs["x"], inputs["w"], params["eps"])
    if op == "rope":
        return rope.rope(inputs["x"], inputs["positions"], params["n_rot"], params["base"], params["style"],
                         params["freq_scale"])
    if op == "geglu":
        return glu.geglu(inputs["gate"], inputs["up"])
    if op == "swiglu":
        return glu.swiglu(inputs["gate"], inputs["up"])
    if op == "add":
        return elementwise.add(inputs["a"], inputs["b"])
    if op == "mul":
        return elementwise.mul(inputs["a"], inputs["b"])
    if op == "scale":
        return elementwise.scale(inputs["x"], params["s"])
    if op == "get_rows":
        return elementwise.get_rows(inputs["raw"], params["type"], inputs["ids"], params["n_cols"])
    raise ValueError(op)


def _case(name: str) -> tuple[str, dict[str, np.ndarray], dict, np.ndarray]:
    prefix = f"{name}/in/"
    inputs = {k[len(prefix):]: GOLDENS[k] for k in GOLDENS.files if k.startswith(prefix)}
    return str(GOLDENS[f"{name}/op"]), inputs, json.loads(str(GOLDENS[f"{name}/params"])), GOLDENS[f"{name}/out"]


def _assert_bits(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert ours.dtype == np.float32 and ours.shape == ref.shape, (what, ours.dtype, ours.shape, ref.shape)
    diff = ours.view(np.uint32) != ref.view(np.uint32)
    assert not diff.any(), f"{what}: {int(diff.sum())} of {ref.size} values differ"


@pytest.mark.parametrize("name", [str(n) for n in GOLDENS["cases"]])
def test_golden_bit_exact(name: str) -> None:
    op, inputs, params, ref = _case(name)
    _assert_bits(run_ours(op, inputs, params), ref, name)


def test_golden_cases_cover_real_models() -> None:
    names = [str(n) for n in GOLDENS["cases"]]
    assert any(n.startswith("real_gemma") for n in names), "goldens were made without the real-model dumps"
    fused = [json.loads(str(GOLDENS[f"{n}/params"])).get("fused") for n in names if n.startswith("rms_norm_mul_")]
    assert fused and all(fused), "the oracle did not take ggml's fused rms_norm+mul path"


def test_gelu_table_equals_ggml() -> None:
    assert np.array_equal(glu.GELU_TABLE, GOLDENS["gelu_table_f16"])


def test_rope_keeps_unrotated_tail_and_rejects_bad_style() -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 64)).astype(np.float32)
    out = rope.rope(x, np.array([0, 5], np.int32), 32, 10000.0, "neox")
    assert np.array_equal(out[:, :, 32:], x[:, :, 32:]) and np.array_equal(out[0], x[0])
    with pytest.raises(ValueError):
        rope.rope(x, np.array([0, 5], np.int32), 32, 10000.0, "gptj")


def test_live_against_llama_cpp() -> None:
    """Seeded random cases through ggml itself (skipped without llama_cpp)."""
    pytest.importorskip("llama_cpp")
    sys.path.insert(0, str(DATA))
    from ggml_graph_oracle import Oracle
    from make_elementwise_goldens import oracle_run, random_cases

    oracle = Oracle()
    for seed in range(10):
        rng = np.random.default_rng(seed)
        for name, op, inputs, params in random_cases(rng):
            ref = oracle_run(oracle, op, inputs, params)
            _assert_bits(run_ours(op, inputs, params), ref, f"{name} (seed {seed})")
