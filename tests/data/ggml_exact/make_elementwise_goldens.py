"""Record llama.cpp's CPU results for ggml_exact's elementwise ops (dev machine only; needs llama-cpp-python).

Run: .venv/bin/python tests/data/ggml_exact/make_elementwise_goldens.py [DUMP_DIR]

Random cases (fixed seed, the real models' shapes: n_embd 576/640/896, head_dim 64/256, n_ff
1536/2048/4864, plus odd lengths for SIMD tails) are computed by ggml itself, one op per ggml graph
(ggml_graph_oracle.py), and saved with their inputs to elementwise.npz, together with the CPU
backend's float16 GELU table. With DUMP_DIR (the output folder of
tests/data/models/dump_llama_cpp_tensors.py runs named {gemma,smol,qwen}_{b,d}.npz), slices of the real
models' tensors are added as cases whose expected output is what the llama.cpp run itself produced.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "elementwise.npz"
SEED = 20250611

Case = tuple[str, str, dict[str, np.ndarray], dict]


def _rows(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n rows of k normals, each row at its own magnitude (1e-3 .. 3e2) so sums span many exponents."""
    mags = np.float32(10.0) ** rng.uniform(-3, 2.5, size=(n, 1))
    return (rng.standard_normal((n, k)) * mags).astype(np.float32)


def _f16_ties(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """float32 values halfway between neighbouring float16 values (round-to-nearest-even ties)."""
    h = rng.uniform(lo, hi, n).astype(np.float16)
    up = np.nextafter(h, np.float16(np.inf))
    return ((h.astype(np.float64) + up.astype(np.float64)) / 2).astype(np.float32)


def _quant_matrix(rng: np.random.Generator, ggml_type: int, n_rows: int, n_cols: int) -> np.ndarray:
    """Random raw Q8_0 / Q5_0 rows (uint8 [n_rows, row_bytes]) with finite float16 scales."""
    block = {8: 34, 6: 22}[ggml_type]
    nb = n_cols // 32
    raw = rng.integers(0, 256, size=(n_rows, nb, block), dtype=np.uint8)
    d = (rng.uniform(1e-4, 5e-2, size=(n_rows, nb)) * rng.choice([-1, 1], size=(n_rows, nb))).astype(np.float16)
    raw[:, :, :2] = d.view(np.uint8).reshape(n_rows, nb, 2)
    return raw.reshape(n_rows, nb * block)


def random_cases(rng: np.random.Generator) -> list[Case]:
    """Inputs and parameters of one round of random cases (name, op, inputs, params)."""
    cases: list[Case] = []
    for k, eps in ((640, 1e-6), (576, 1e-5), (896, 1e-6), (256, 1e-6), (37, 1e-5)):
        x = _rows(rng, 3, k)
        w = (rng.standard_normal(k) * 2).astype(np.float32)
        cases.append((f"rms_norm_{k}", "rms_norm", {"x": x}, {"eps": eps}))
        cases.append((f"rms_norm_mul_{k}", "rms_norm_mul", {"x": _rows(rng, 3, k), "w": w}, {"eps": eps}))
    rope_cfgs = [
        ("gemma_local", 4, 256, 256, 10000.0, "neox", 1.0),
        ("gemma_global", 1, 256, 256, 1e6, "neox", 1.0),
        ("smollm2", 9, 64, 64, 1e5, "norm", 1.0),
        ("qwen2", 14, 64, 64, 1e6, "neox", 1.0),
        ("partial_norm", 2, 64, 32, 10000.0, "norm", 0.25),
        ("partial_neox", 2, 64, 32, 10000.0, "neox", 0.25),
    ]
    for name, heads, hd, n_rot, base, style, fs in rope_cfgs:
        pos = np.concatenate([rng.integers(0, 8, 1), rng.integers(8, 512, 1), rng.integers(512, 32768, 1)])
        x = rng.standard_normal((3, heads, hd)).astype(np.float32)
        params = {"n_rot": n_rot, "base": base, "style": style, "freq_scale": fs}
        cases.append((f"rope_{name}", "rope", {"x": x, "positions": pos.astype(np.int32)}, params))
    for k in (2048, 13):
        gate = (rng.standard_normal((2, k)) * 4).astype(np.float32)
        gate[0, : min(k, 8)] = np.array([-10, 10, -10.001, 10.001, -9.999, 9.999, 0.0, -0.0], np.float32)[: min(k, 8)]
        gate[1, : k // 2] = _f16_ties(rng, k // 2, -9.9, 9.9)
        up = _rows(rng, 2, k)
        cases.append((f"geglu_{k}", "geglu", {"gate": gate, "up": up}, {}))
    for k in (4864, 1536, 13):
        gate = (rng.standard_normal((1, k)) * 8).astype(np.float32)
        extremes = np.array([-88.0, -90.0, -100.0, -130.0, -150.0, -200.0, 87.0, 0.0], np.float32)
        gate[0, -8:] = extremes
        cases.append((f"swiglu_{k}", "swiglu", {"gate": gate, "up": _rows(rng, 1, k)}, {}))
    for k in (640, 896, 11):
        a, b = _rows(rng, 2, k), _rows(rng, 2, k)
        bias = rng.standard_normal(k).astype(np.float32)
        cases.append((f"add_{k}", "add", {"a": a, "b": b}, {}))
        cases.append((f"add_bias_{k}", "add", {"a": a, "b": bias}, {}))
        cases.append((f"mul_{k}", "mul", {"a": a, "b": b}, {}))
        cases.append((f"scale_{k}", "scale", {"x": a}, {"s": float(np.sqrt(np.float32(k)))}))
    for ggml_type, k in ((8, 640), (6, 896), (8, 576)):
        raw = _quant_matrix(rng, ggml_type, 24, k)
        ids = rng.integers(0, 24, 5).astype(np.int32)
        params = {"type": ggml_type, "n_cols": k}
        cases.append((f"get_rows_{ggml_type}_{k}", "get_rows", {"raw": raw, "ids": ids}, params))
    return cases


def oracle_run(oracle, op: str, inputs: dict[str, np.ndarray], params: dict) -> np.ndarray:
    """llama.cpp's result for one case."""
    from ggml_graph_oracle import ROPE_NEOX, ROPE_NORMAL

    if op == "rms_norm":
        return oracle.rms_norm(inputs["x"], params["eps"])
    if op == "rms_norm_mul":
        out, fused = oracle.rms_norm_mul(inputs["x"], inputs["w"], params["eps"])
        params["fused"] = fused
        return out
    if op == "rope":
        mode = ROPE_NEOX if params["style"] == "neox" else ROPE_NORMAL
        return oracle.rope(inputs["x"], inputs["positions"], params["n_rot"], params["base"], mode,
                           params["freq_scale"])
    if op in ("geglu", "swiglu"):
        return oracle.glu(op, inputs["gate"], inputs["up"])
    if op in ("add", "mul"):
        b = inputs["b"] if inputs["b"].ndim == 2 else inputs["b"][None, :]
        return oracle.binary(op, inputs["a"], b)
    if op == "scale":
        return oracle.scale(inputs["x"], params["s"])
    if op == "get_rows":
        return oracle.get_rows(inputs["raw"], params["type"], params["n_cols"], inputs["ids"])
    raise ValueError(op)


def _dump_cases(dump_dir: Path) -> list[tuple[Case, np.ndarray]]:
    """Slices of real llama.cpp tensors: (case, llama.cpp's own output)."""
    import gguf

    models = Path("/root/.local/share/embedkit/models")
    found = []

    def weights(name: str) -> dict[str, np.ndarray]:
        r = gguf.GGUFReader(str(models / name))
        return {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in r.tensors if t.tensor_type == 0}

    def t(d, key: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.ascontiguousarray(d[key].reshape(shape), dtype=np.float32)

    w = weights("gemma-3-270m-q4_k_m.gguf")
    for mode in ("d", "b"):
        d = np.load(dump_dir / f"gemma_{mode}.npz")
        n = len(d["tokens"])
        nt = 1 if mode == "d" else 8
        pos = np.arange(n - nt, n, dtype=np.int32) if mode == "d" else np.arange(nt, dtype=np.int32)
        sl = slice(-nt, None) if mode == "d" else slice(0, nt)
        for layer, base in ((5, 1e6), (4, 10000.0)):
            x = t(d, f"Kcur_normed-{layer}", (-1, 1, 256))[sl]
            p = {"n_rot": 256, "base": base, "style": "neox", "freq_scale": 1.0}
            found.append(((f"real_gemma{mode}_rope_k{layer}", "rope", {"x": x, "positions": pos}, p),
                          t(d, f"Kcur-{layer}#2", (-1, 1, 256))[sl]))
        if mode == "d":
            q = t(d, "Qcur-5#1", (4, 256))
            found.append((("real_gemma_qnorm5", "rms_norm_mul", {"x": q, "w": w["blk.5.attn_q_norm.weight"]},
                           {"eps": 1e-6}), t(d, "Qcur_normed-5", (4, 256))))
            found.append((("real_gemma_geglu5", "geglu", {"gate": t(d, "ffn_gate-5", (1, -1)),
                                                         "up": t(d, "ffn_up-5", (1, -1))}, {}),
                          t(d, "ffn_geglu-5", (1, -1))))
            found.append((("real_gemma_ffn_norm5", "rms_norm_mul", {"x": t(d, "sa_out-5", (1, -1)),
                                                                   "w": w["blk.5.ffn_norm.weight"]}, {"eps": 1e-6}),
                          t(d, "ffn_norm-5", (1, -1))))
            found.append((("real_gemma_result_norm", "rms_norm_mul", {"x": t(d, "l_out-17", (1, -1)),
                                                                     "w": w["output_norm.weight"]}, {"eps": 1e-6}),
                          t(d, "result_norm", (1, -1))))
    w = weights("SmolLM2-135M-Instruct.Q4_1.gguf")
    d = np.load(dump_dir / "smol_d.npz")
    n = len(d["tokens"])
    found.append((("real_smol_rope_q15", "rope", {"x": t(d, "Qcur-15#1", (1, 9, 64)),
                                                  "positions": np.array([n - 1], np.int32)},
                   {"n_rot": 64, "base": 1e5, "style": "norm", "freq_scale": 1.0}), t(d, "Qcur-15#2", (1, 9, 64))))
    found.append((("real_smol_swiglu15", "swiglu", {"gate": t(d, "ffn_gate-15", (1, -1)),
                                                    "up": t(d, "ffn_up-15", (1, -1))}, {}),
                   t(d, "ffn_swiglu-15", (1, -1))))
    found.append((("real_smol_ffn_norm15", "rms_norm_mul", {"x": t(d, "ffn_inp-15", (1, -1)),
                                                            "w": w["blk.15.ffn_norm.weight"]}, {"eps": 1e-5}),
                   t(d, "ffn_norm-15", (1, -1))))
    w = weights("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    d = np.load(dump_dir / "qwen_d.npz")
    n = len(d["tokens"])
    found.append((("real_qwen_bias_q12", "add", {"a": t(d, "Qcur-12", (1, -1)), "b": w["blk.12.attn_q.bias"]}, {}),
                   t(d, "Qcur-12#1", (1, -1))))
    found.append((("real_qwen_rope_q12", "rope", {"x": t(d, "Qcur-12#2", (1, 14, 64)),
                                                  "positions": np.array([n - 1], np.int32)},
                   {"n_rot": 64, "base": 1e6, "style": "neox", "freq_scale": 1.0}), t(d, "Qcur-12#3", (1, 14, 64))))
    found.append((("real_qwen_swiglu12", "swiglu", {"gate": t(d, "ffn_gate-12", (1, -1)),
                                                    "up": t(d, "ffn_up-12", (1, -1))}, {}),
                   t(d, "ffn_swiglu-12", (1, -1))))
    found.append((("real_qwen_residual12", "add", {"a": t(d, "ffn_out-12", (1, -1)), "b": t(d, "ffn_inp-12", (1, -1))},
                   {}), t(d, "l_out-12", (1, -1))))
    return found


def main() -> None:
    sys.path.insert(0, str(HERE))
    from ggml_graph_oracle import Oracle

    oracle = Oracle()
    arrays: dict[str, np.ndarray] = {"gelu_table_f16": oracle.gelu_table()}
    names = []
    cases = random_cases(np.random.default_rng(SEED))
    results = [(case, oracle_run(oracle, case[1], case[2], case[3])) for case in cases]
    if len(sys.argv) > 1:
        results += _dump_cases(Path(sys.argv[1]))
    for (name, op, inputs, params), out in results:
        names.append(name)
        arrays[f"{name}/op"] = np.array(op)
        arrays[f"{name}/params"] = np.array(json.dumps(params))
        arrays[f"{name}/out"] = out
        for key, value in inputs.items():
            arrays[f"{name}/in/{key}"] = value
    arrays["cases"] = np.array(names)
    np.savez_compressed(OUT, **arrays)
    print(f"{OUT}: {len(names)} cases, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
