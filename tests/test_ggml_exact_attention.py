"""Bit-exact llama.cpp attention (flash attention off, F16 KV cache): ggml_exact.attention and its kernels.

Compared, with zero tolerance (float32 bit patterns must be identical):
- against tests/data/ggml_exact/attention.npz (made by make_attention_goldens.py from ggml itself):
  the K.Q scores (`kq`), soft_max_ext output (`kq_soft_max`) and attention output (`kqv_out`) of
  random Gemma-3-like (4 heads : 1 KV head, head_dim 256, q pre-scaled), SmolLM2-like (9 : 3, 64)
  and other shapes, in batch (tinyBLAS) and single-token decode (ggml_vec_dot_f16) steps, with
  sliding windows and with the graph's n_kv at 256 and 512; the same tensors taken from llama.cpp
  running Gemma 3 270M and SmolLM2-135M; and the single kernels ggml_vec_dot_f16, llamafile_sgemm
  (F16 x F16) and ggml_vec_soft_max_f32 (whose exp is ggml_v_expf's AVX2 polynomial);
- when llama_cpp is importable, the same kernels and whole attention graphs on fresh random inputs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from embedkit.kernels.cpu.ggml_exact.attention import (
    attention,
    attention_stages,
    cache_cells,
    graph_n_kv,
    new_cache,
)
from embedkit.kernels.cpu.ggml_exact.elementwise import scale
from embedkit.kernels.cpu.ggml_exact.f16_matmul import mul_mat_f16, vec_dot_f16
from embedkit.kernels.cpu.ggml_exact.softmax import soft_max_ext, vec_soft_max

DATA = Path(__file__).parent / "data" / "ggml_exact"
GOLDEN = np.load(DATA / "attention.npz")
CASE_NAMES = sorted({k.split("/")[0] for k in GOLDEN.files if k.endswith("/params")})


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _assert_bits(actual, expected, what: str) -> None:
    actual, expected = np.asarray(actual, dtype=np.float32), np.asarray(expected, dtype=np.float32)
    assert actual.shape == expected.shape, what
    diff = np.count_nonzero(_bits(actual) != _bits(expected))
    assert diff == 0, f"{what}: {diff} of {actual.size} values differ"


def _run_case(get, params):
    """Fill a cache with the case's past keys/values, then run attention_stages and attention on copies."""
    n_head, n_head_kv, hd, n_ctx, pos0, n, window, kq_scale, q_scale = params
    n_head, n_head_kv, hd, n_ctx, pos0, n, window = (int(x) for x in (n_head, n_head_kv, hd, n_ctx, pos0, n, window))
    q_scale = None if np.isnan(q_scale) else float(q_scale)
    window = window or None
    q = get("q") if q_scale is None else scale(get("q"), q_scale)  # Gemma's ggml_scale of Qcur, as the model does
    k_cache, v_cache = new_cache(n_ctx, n_head_kv, hd)
    if pos0:
        past_q = np.ones((pos0, n_head, hd), dtype=np.float32)
        k_past, v_past = get("k_past").astype(np.float32), get("v_past").astype(np.float32)
        attention(past_q, k_cache, v_cache, k_past, v_past, 0, kq_scale, window)
    k2, v2 = k_cache.copy(), v_cache.copy()
    args = (q, get("k_new"), get("v_new"), pos0, kq_scale, window)
    kq, sm, out = attention_stages(args[0], k_cache, v_cache, *args[1:])
    fast = attention(args[0], k2, v2, *args[1:])
    assert np.array_equal(k_cache, k2) and np.array_equal(v_cache, v2)
    return kq, sm, out, fast


@pytest.mark.parametrize("name", CASE_NAMES)
def test_attention_matches_ggml_goldens(name):
    """kq, kq_soft_max and kqv_out of each stored case equal ggml's bit for bit (columns past the last key: 0)."""

    def get(key):
        return GOLDEN[f"{name}/{key}"]

    kq, sm, out, fast = _run_case(get, get("params"))
    width = get("kq").shape[2]
    _assert_bits(kq[:, :, :width], get("kq"), f"{name} kq")
    _assert_bits(sm[:, :, :width], get("kq_soft_max"), f"{name} kq_soft_max")
    assert not np.any(kq[:, :, width:]) and not np.any(sm[:, :, width:])
    _assert_bits(out, get("kqv_out"), f"{name} kqv_out")
    _assert_bits(fast, get("kqv_out"), f"{name} attention()")


@pytest.mark.parametrize("name", CASE_NAMES)
def test_soft_max_ext_matches_ggml_goldens(name):
    """soft_max_ext alone on each case's stored kq rows reproduces its kq_soft_max (causal / window mask ranges)."""
    params = GOLDEN[f"{name}/params"]
    kq, want = GOLDEN[f"{name}/kq"], GOLDEN[f"{name}/kq_soft_max"]
    n_head, n, width = kq.shape
    pos0, window = int(params[4]), int(params[6])
    hi = np.tile(pos0 + 1 + np.arange(n), n_head)
    lo = np.maximum(0, hi - window) if window else np.zeros_like(hi)
    got = soft_max_ext(kq.reshape(n_head * n, width), np.float32(params[7]), lo, hi)
    _assert_bits(got.reshape(kq.shape), want, f"{name} soft_max_ext")


def test_real_model_cases_present():
    """The goldens include llama.cpp's own tensors from Gemma 3 and SmolLM2 (generated on a dev machine)."""
    assert {"llama_gemma3_L5_decode", "llama_gemma3_L0_batch8", "llama_smollm2_L0_decode"} <= set(CASE_NAMES)


def test_kernels_match_ggml_goldens():
    """ggml_vec_dot_f16, llamafile_sgemm (F16) and ggml_vec_soft_max_f32 on stored random inputs."""
    for key in GOLDEN.files:
        if key.startswith("vec_dot/") and key.endswith("/x"):
            base = key[:-2]
            x, y = GOLDEN[key], GOLDEN[f"{base}/y"]
            got = vec_dot_f16(x, 0, y.view(np.float16).astype(np.float32), 0, x.size, 0, x.size & ~31)
            _assert_bits(got, GOLDEN[f"{base}/out"], base)
        elif key.startswith("sgemm/") and key.endswith("/a"):
            base = key[:-2]
            b = GOLDEN[f"{base}/b"].view(np.float16).astype(np.float32)
            _assert_bits(mul_mat_f16(GOLDEN[key], b), GOLDEN[f"{base}/out"], base)
    x = GOLDEN["soft_max/x"]
    y = np.empty_like(x)
    total = vec_soft_max(y, 0, x, 0, x.size, np.float32(0.0), 0, x.size)
    _assert_bits(y, GOLDEN["soft_max/y"], "soft_max")
    assert total == GOLDEN["soft_max/sum"]


def test_cache_layout_and_n_kv():
    """Cells are n_ctx padded to 256, V is transposed, and n_kv follows llama_kv_cache::get_n_kv."""
    k, v = new_cache(300, 2, 64)
    assert k.shape == (512, 2, 64) and v.shape == (2, 64, 512) and k.dtype == v.dtype == np.uint16
    assert cache_cells(256) == 256 and cache_cells(257) == 512
    assert graph_n_kv(512, 1) == 256 and graph_n_kv(512, 256) == 256 and graph_n_kv(512, 257) == 512
    assert graph_n_kv(4096, 1000) == 1024 and graph_n_kv(256, 200) == 256
    q = np.ones((1, 2, 64), dtype=np.float32)
    kv = np.full((1, 2, 64), 1.0 + 2.0**-11, dtype=np.float32)  # a tie: rounds to even, 1.0
    attention(q, k, v, kv, kv * 2, 5, 0.125)
    assert np.all(k[5] == 0x3C00) and np.all(v[:, :, 5] == 0x4000)  # 1.0 and 2.0
    with pytest.raises(ValueError):
        attention(q, k, v, kv, kv, 512, 0.125)


# -- live comparisons against ggml (dev machines with llama-cpp-python) ----------------------------


def _oracle():
    pytest.importorskip("llama_cpp")
    spec = importlib.util.spec_from_file_location("attn_goldens", DATA / "make_attention_goldens.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Oracle()


@pytest.fixture(scope="module")
def oracle():
    return _oracle()


def test_live_kernels(oracle):
    """Seeded random vec_dot_f16 / sgemm / soft_max inputs of real sizes against libggml-cpu."""
    rng = np.random.default_rng(2026)
    for n in (64, 256, 72, 100, 512, 33, 1024):
        for _ in range(5):
            x = (rng.standard_normal(n) * rng.choice([0.01, 1.0, 30.0])).astype(np.float16).view(np.uint16)
            y = (rng.standard_normal(n) * rng.choice([0.01, 1.0, 30.0])).astype(np.float16)
            got = vec_dot_f16(x, 0, y.astype(np.float32), 0, n, 0, n & ~31)
            _assert_bits(got, oracle.vec_dot_f16(x, y.view(np.uint16)), f"vec_dot {n}")
    for m, n, k in ((256, 32, 256), (64, 9, 256), (256, 31, 64), (512, 4, 64), (72, 2, 512)):
        a = (rng.standard_normal((m, k)) * 1.5).astype(np.float16).view(np.uint16)
        b = rng.standard_normal((n, k)).astype(np.float32)
        _assert_bits(mul_mat_f16(a, b), oracle.sgemm_f16(a, oracle.fp32_to_fp16(b)), f"sgemm {m}x{n}x{k}")
    x = np.concatenate([rng.uniform(-110.0, 0.0, 20000), rng.standard_normal(5000) * 4.0]).astype(np.float32)
    x = x[: x.size - 3]
    mx = np.float32(x.max())
    y = np.empty_like(x)
    total = vec_soft_max(y, 0, x, 0, x.size, mx, 0, x.size)
    want, want_total = oracle.vec_soft_max_f32(x, mx)
    _assert_bits(y, want, "soft_max")
    assert total == want_total


def test_live_attention_graphs(oracle):
    """Random shapes, positions, windows and scales: the whole graph (kq, kq_soft_max, kqv_out) against ggml."""
    rng = np.random.default_rng(2027)
    shapes = [(4, 1, 256), (9, 3, 64), (14, 2, 64), (8, 8, 128), (2, 1, 80), (2, 2, 40)]
    for _ in range(12):
        n_head, n_head_kv, hd = shapes[rng.integers(len(shapes))]
        n_ctx = int(rng.choice([256, 512, 700]))
        n = int(rng.choice([1, 1, 2, 5, 17]))
        pos0 = int(rng.integers(0, cache_cells(n_ctx) - n + 1))
        window = [None, int(rng.integers(1, 64)), 512][rng.integers(3)]
        kq_scale = float(rng.choice([1.0, 0.125, rng.uniform(0.01, 1.0)]))
        q_scale = [None, 0.0625][rng.integers(2)]
        q = (rng.standard_normal((n, n_head, hd)) * rng.choice([0.1, 1.0, 20.0])).astype(np.float32)
        k_all = rng.standard_normal((pos0 + n, n_head_kv, hd)).astype(np.float32)
        v_all = (rng.standard_normal((pos0 + n, n_head_kv, hd)) * rng.choice([0.01, 1.0, 100.0])).astype(np.float32)
        k_past = k_all[:pos0].astype(np.float16)
        v_past = v_all[:pos0].astype(np.float16)
        params = (n_head, n_head_kv, hd, n_ctx, pos0, n, window or 0, kq_scale, np.nan if q_scale is None else q_scale)
        inputs = {"q": q, "k_past": k_past, "v_past": v_past, "k_new": k_all[pos0:], "v_new": v_all[pos0:]}
        kq, sm, out, fast = _run_case(inputs.__getitem__, params)
        want = oracle.attention(
            q, k_past.astype(np.float32), v_past.astype(np.float32), k_all[pos0:], v_all[pos0:],
            n_ctx, kq_scale, window, q_scale,
        )  # fmt: skip
        what = f"{params}"
        _assert_bits(kq, want["kq"], f"kq {what}")
        _assert_bits(sm, want["kq_soft_max"], f"kq_soft_max {what}")
        _assert_bits(out, want["kqv_out"], f"kqv_out {what}")
        _assert_bits(fast, want["kqv_out"], f"attention() {what}")
