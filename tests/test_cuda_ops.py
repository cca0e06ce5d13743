"""Every CUDA backend op against the CPU backend on fresh random data.

Runs on a CUDA GPU with numba-cuda, or (small sizes, slowly) under NUMBA_ENABLE_CUDASIM=1;
skipped elsewhere. Tolerances, as max |gpu - cpu| / max |cpu|:
- dequantization (get_rows): bit-exact against gguf-py's reference (float32).
- elementwise ops, norms, softmax, RoPE, attention: 1e-5 (float32, different summation order;
  RoPE angles in float64 on both sides).
- matvec on F32/F16: 1e-5.
- matvec on the quantized types: 1e-2 (the GPU's Q4_0/Q8_0 kernels and the CPU's decode kernels for
  every quantized type round activations to int8 blocks, as llama.cpp does).
- GEMM path (weights and activations rounded to float16, float32 accumulation): 5e-3.
"""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from embedkit.kernels.cuda import cuda_available, cuda_unavailable_reason

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason=cuda_unavailable_reason() or "no CUDA GPU"),
]

QUANT_TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K"]


@pytest.fixture(scope="module")
def backends():
    from embedkit.backend.cpu import CPUBackend
    from embedkit.backend.cuda import CUDABackend

    return CPUBackend(), CUDABackend()


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def _tensor(name, ggml_type, n_rows, n_cols, rng):
    from embedkit.gguf import GGMLType
    from embedkit.testing.random_quant import random_tensor_bytes

    raw = random_tensor_bytes(ggml_type, n_rows, n_cols, rng)
    return SimpleNamespace(
        name=name, ggml_type=GGMLType[ggml_type], np_shape=(n_rows, n_cols), data=raw.reshape(-1),
        rows_view=lambda: raw.reshape(n_rows, -1),
    )  # fmt: skip


def _vector(name, n, rng):
    from embedkit.gguf import GGMLType

    data = (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    return SimpleNamespace(name=name, ggml_type=GGMLType.F32, np_shape=(n,), data=data.view(np.uint8))


def _rel(got, ref):
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def _sim() -> bool:
    from numba.cuda import config

    return bool(config.ENABLE_CUDASIM)


@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_get_rows_bit_exact(backends, rng, qtype):
    """Against gguf-py's dequantize where installed, else the CPU backend (itself checked against it)."""
    cpu, gpu = backends
    t = _tensor("tok", qtype, 6, 256, rng)
    ids = rng.permutation(6)[:4]
    try:
        from gguf import GGMLQuantizationType, quants

        ref = quants.dequantize(t.data.reshape(6, -1), GGMLQuantizationType[qtype]).reshape(6, 256)[ids]
    except ImportError:  # the GPU machine has no gguf-py
        ref = cpu.get_rows(cpu.weight(t), ids)
    got = gpu.to_host(gpu.get_rows(gpu.weight(t), ids))
    np.testing.assert_array_equal(got, ref.astype(np.float32))


@pytest.mark.parametrize("qtype", QUANT_TYPES)
@pytest.mark.parametrize("n_tok", [1, 3])
def test_matvec_vs_cpu(backends, rng, qtype, n_tok):
    cpu, gpu = backends
    t = _tensor("w", qtype, 9, 256, rng)
    b = _vector("b", 9, rng)
    x = rng.standard_normal((n_tok, 256)).astype(np.float32)
    ref = cpu.matmul(x, cpu.weight(t), cpu.weight(b)).astype(np.float64)
    got = gpu.to_host(gpu.matmul(gpu.asarray(x), gpu.weight(t), gpu.weight(b)))
    tol = 1e-5 if qtype in ("F32", "F16") else 1e-2
    assert got.shape == ref.shape
    assert _rel(got, ref) < tol


def _int8_blocks(x: np.ndarray) -> np.ndarray:
    """x rounded to int8 blocks of 32 as the GPU's activation quantizer does (d = max|v| / 127)."""
    blocks = x.astype(np.float32).reshape(x.shape[0], -1, 32)
    d = np.abs(blocks).max(axis=2, keepdims=True) / np.float32(127.0)
    q = np.round(blocks / np.where(d == 0, 1, d))
    return (q * d).reshape(x.shape).astype(np.float64)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q4_1", "Q5_0", "Q5_1"])
@pytest.mark.parametrize("n_tok", [1, 2])
@pytest.mark.parametrize("rows_per_warp", [1, 2, 4])
def test_int8_matvec_vs_reference(backends, rng, qtype, n_tok, rows_per_warp, monkeypatch):
    """The dp4a decode kernels of the K-quants (quant_kmatvec) and of Q4_1/Q5_0/Q5_1 (quant_legacy) over
    rows of seven super-blocks (every lane's slice of each, a part-used last step of the K kernels' two or
    four super-blocks a step and of the legacy kernels' 32 blocks), with a bias, one, two or four rows a
    warp (37 or 5 rows: a partial last group): against the exactly dequantized weights times the
    int8-rounded activations in float64 (1e-5). With EMBEDKIT_KMV_INT8=0 the K-quants keep float32
    activations: against the CPU backend then (2e-3: it rounds to int16 blocks)."""
    from embedkit.kernels.cuda import quant_kmatvec, quant_legacy

    monkeypatch.setattr(quant_kmatvec, "ROWS_PER_WARP", rows_per_warp)
    monkeypatch.setattr(quant_legacy, "ROWS_PER_WARP", rows_per_warp)
    cpu, gpu = backends
    rows, cols = (37, 1792) if not _sim() else (5, 768)
    t = _tensor("w", qtype, rows, cols, rng)
    b = _vector("b", rows, rng)
    x = rng.standard_normal((n_tok, cols)).astype(np.float32)
    got = gpu.to_host(gpu.matmul(gpu.asarray(x), gpu.weight(t), gpu.weight(b)))
    if qtype in gpu.int8_matvecs:
        w = cpu.get_rows(cpu.weight(t), np.arange(rows)).astype(np.float64)
        ref = _int8_blocks(x) @ w.T + b.data.view(np.float32).astype(np.float64)
        tol = 1e-5
    else:
        ref = cpu.matmul(x, cpu.weight(t), cpu.weight(b)).astype(np.float64)
        tol = 2e-3
    assert got.shape == ref.shape
    assert _rel(got, ref) < tol


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
@pytest.mark.parametrize("n_tok", [1, 2])
@pytest.mark.parametrize("split", ["split-K", "whole-row"])
def test_fused_decode_ops_vs_cpu(backends, rng, qtype, n_tok, split, monkeypatch):
    """RMSNorm writing int8 blocks, three matvecs in one launch (with biases), GLU writing int8
    blocks, a matvec plus residual: each against the CPU backend (3e-2: int8 activations on both
    sides, twice in a row for the last two). These small matrices take split-K matvecs by default;
    the other case turns it off, as the big matrices of a real model run."""
    from embedkit.kernels.cuda import quant_fast

    monkeypatch.setattr(quant_fast, "MV_SPLIT_MIN_WARPS", 4096 if split == "split-K" else 0)
    cpu, gpu = backends
    d, ff = 2080, 96  # 2080: whole trips of the unrolled loop plus a remainder
    x = rng.standard_normal((n_tok, d)).astype(np.float32)
    norm = _vector("norm", d, rng)
    mats = [_tensor(f"w{i}", qtype, r, d, rng) for i, r in enumerate((64, 32, 32))]
    biases = [_vector(f"b{i}", r, rng) for i, r in enumerate((64, 32, 32))]
    gate_up = [_tensor(f"g{i}", qtype, ff, d, rng) for i in range(2)]
    down = _tensor("down", qtype, d, ff, rng)

    def run(be):
        h = be.rms_norm(be.asarray(x), be.weight(norm), 1e-6)
        outs = be.matmuls(h, [be.weight(t) for t in mats], [be.weight(b) for b in biases])
        g = be.swiglu(*be.matmuls(h, [be.weight(t) for t in gate_up]))
        y = be.add(be.asarray(x), be.matmul(g, be.weight(down)))
        return [be.to_host(a) for a in (*outs, g, y)]

    for got, ref in zip(run(gpu), run(cpu), strict=True):
        assert got.shape == ref.shape
        assert _rel(got, ref.astype(np.float64)) < 3e-2


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"])
def test_gemm_vs_cpu(backends, rng, qtype):
    cpu, gpu = backends
    if gpu._cp is None:
        pytest.skip("GEMM path needs CuPy (cuBLAS); not under the simulator")
    t = _tensor("w", qtype, 96, 512, rng)
    b = _vector("b", 96, rng)
    x = rng.standard_normal((40, 512)).astype(np.float32)
    ref = cpu.matmul(x, cpu.weight(t), cpu.weight(b)).astype(np.float64)
    got = gpu.to_host(gpu.matmul(gpu.asarray(x), gpu.weight(t), gpu.weight(b)))
    assert _rel(got, ref) < 5e-3


def test_elementwise_and_norms_vs_cpu(backends, rng):
    cpu, gpu = backends
    x = rng.standard_normal((3, 96)).astype(np.float32) * 2
    y = rng.standard_normal((3, 96)).astype(np.float32)
    wt = _vector("w", 96, rng)
    bt = _vector("b", 96, rng)
    wc, wg = cpu.weight(wt), gpu.weight(wt)
    bc, bg = cpu.weight(bt), gpu.weight(bt)
    gx, gy = gpu.asarray(x), gpu.asarray(y)
    cases = {
        "add": (cpu.add(x, y), gpu.add(gx, gy)),
        "add_vec": (cpu.add(x, wc), gpu.add(gx, wg)),
        "mul_vec": (cpu.mul(x, wc), gpu.mul(gx, wg)),
        "scale": (cpu.scale(x, 0.37), gpu.scale(gx, 0.37)),
        "silu": (cpu.silu(x), gpu.silu(gx)),
        "gelu": (cpu.gelu(x), gpu.gelu(gx)),
        "gelu_erf": (cpu.gelu_erf(x), gpu.gelu_erf(gx)),
        "swiglu": (cpu.swiglu(x, y), gpu.swiglu(gx, gy)),
        "geglu": (cpu.geglu(x, y), gpu.geglu(gx, gy)),
        "softmax": (cpu.softmax(x), gpu.softmax(gx)),
        "rms_norm": (cpu.rms_norm(x, wc, 1e-6), gpu.rms_norm(gx, wg, 1e-6)),
        "rms_norm_heads": (
            cpu.rms_norm(x.reshape(3, 3, 32), None, 1e-6),
            gpu.rms_norm(gpu.view(gx, (3, 3, 32)), None, 1e-6),
        ),
        "layer_norm": (cpu.layer_norm(x, wc, bc, 1e-12), gpu.layer_norm(gx, wg, bg, 1e-12)),
    }
    for name, (ref, got) in cases.items():
        got = gpu.to_host(got)
        assert got.shape == ref.shape, name
        assert _rel(got, ref.astype(np.float64)) < 1e-5, name


def test_split_cols_and_rows(backends, rng):
    cpu, gpu = backends
    x = rng.standard_normal((4, 40)).astype(np.float32)
    for ref, got in zip(cpu.split_cols(x, [8, 16, 16]), gpu.split_cols(gpu.asarray(x), [8, 16, 16]), strict=True):
        np.testing.assert_array_equal(gpu.to_host(got), ref)
    np.testing.assert_array_equal(gpu.to_host(gpu.rows(gpu.asarray(x), 3, 4)), x[3:4])


@pytest.mark.parametrize("style", ["norm", "neox"])
def test_rope_vs_cpu(backends, rng, style):
    cpu, gpu = backends
    x = rng.standard_normal((3, 2, 16)).astype(np.float32)
    pos = np.arange(7, 10, dtype=np.int32)
    ref = cpu.rope(x, pos, 12, 10000.0, style, 0.5)
    got = gpu.to_host(gpu.rope(gpu.asarray(x), pos, 12, 10000.0, style, 0.5))
    assert _rel(got, ref.astype(np.float64)) < 1e-5
    scattered = np.array([5, 1, 9], dtype=np.int32)
    ref = cpu.rope(x, scattered, 16, 500.0, style)
    got = gpu.to_host(gpu.rope(gpu.asarray(x), scattered, 16, 500.0, style))
    assert _rel(got, ref.astype(np.float64)) < 1e-5


@pytest.mark.parametrize("heads,kv_heads,window,softcap", [(4, 2, None, None), (2, 1, 3, None), (2, 2, None, 5.0)])
def test_attention_cache_vs_cpu(backends, rng, heads, kv_heads, window, softcap):
    """Prompt of 5 tokens then 2 single-token steps, causal, against the CPU backend's cache."""
    cpu, gpu = backends
    hd, n_ctx = 32, 8
    cc, gc = cpu.kv_cache(n_ctx, kv_heads, hd), gpu.kv_cache(n_ctx, kv_heads, hd)
    pos0 = 0
    for n in (5, 1, 1):
        q = rng.standard_normal((n, heads, hd)).astype(np.float32)
        k = rng.standard_normal((n, kv_heads, hd)).astype(np.float32)
        v = rng.standard_normal((n, kv_heads, hd)).astype(np.float32)
        ref = cpu.attention(q, cc, k, v, pos0, 0.3, window=window, softcap=softcap)
        got = gpu.attention(
            gpu.asarray(q), gc, gpu.asarray(k), gpu.asarray(v), pos0, 0.3, window=window, softcap=softcap
        )
        got = gpu.to_host(got)
        assert got.shape == ref.shape
        assert _rel(got, ref.astype(np.float64)) < 1e-5
        pos0 += n


@pytest.mark.parametrize("style,n_rot,window", [("norm", 64, None), ("neox", 48, 3)])
def test_decode_attention_fused_rope(backends, rng, style, n_rot, window):
    """One token: attention_decode with the RoPE of q and k and the KV store inside the kernel gives
    what rope, rope, store, attend give (bit for bit under the simulator, 1e-6 on a GPU, where the
    compiler may contract the float64 rotation differently), cache included; and 1e-5 of the CPU."""
    from numba import cuda

    from embedkit.kernels.cuda import attention, quant_fast

    cpu, gpu = backends
    heads, kvh, hd, n_ctx, pos = 4, 2, 64, 12, 6
    cc = cpu.kv_cache(n_ctx, kvh, hd)
    caches = [gpu.kv_cache(n_ctx, kvh, hd) for _ in range(2)]
    q, k, v = (rng.standard_normal((pos, h, hd)).astype(np.float32) for h in (heads, kvh, kvh))
    cpu.attention(q, cc, k, v, 0, 0.125, window=window)
    for c in caches:
        gpu.attention(gpu.asarray(q), c, gpu.asarray(k), gpu.asarray(v), 0, 0.125, window=window)
    q, k, v = (rng.standard_normal((1, h, hd)).astype(np.float32) for h in (heads, kvh, kvh))
    positions = np.array([pos], dtype=np.int32)
    ref = cpu.attention(
        cpu.rope(q, positions, n_rot, 1e4, style), cc, cpu.rope(k, positions, n_rot, 1e4, style), v, pos, 0.125,
        window=window,
    )  # fmt: skip
    unfused = gpu.attention(
        gpu.rope(gpu.asarray(q), positions, n_rot, 1e4, style), caches[0],
        gpu.rope(gpu.asarray(k), positions, n_rot, 1e4, style), gpu.asarray(v), pos, 0.125, window=window,
    )  # fmt: skip
    unfused = gpu.to_host(unfused)
    fused = cuda.device_array((1, heads * hd), dtype=np.float32)
    xq, xd = quant_fast.activation_buffers(1, heads * hd)
    attention.attention_decode(
        gpu.asarray(q), caches[1].k, caches[1].v, cuda.to_device(positions), True, window or 0, 0.125, 0.0,
        fused, xq.view(np.int8), xd, rope=(gpu.asarray(k), gpu.asarray(v), n_rot, 1e4, 1.0, style == "neox"),
    )  # fmt: skip
    fused = fused.copy_to_host()
    k_cache = [c.k.copy_to_host()[: pos + 1] for c in caches]  # rows past the step are never written
    assert _rel(fused, ref.astype(np.float64)) < 1e-5
    if _sim():
        np.testing.assert_array_equal(fused, unfused)
        np.testing.assert_array_equal(k_cache[1], k_cache[0])
    else:
        assert _rel(fused, unfused.astype(np.float64)) < 1e-6
        assert _rel(k_cache[1], k_cache[0].astype(np.float64)) < 1e-6
    np.testing.assert_array_equal(caches[1].v.copy_to_host()[: pos + 1], caches[0].v.copy_to_host()[: pos + 1])


@pytest.mark.parametrize("hd,window", [(64, None), (96, 7), (160, None)])
@pytest.mark.parametrize("blas", [True, False])
def test_attention_prompt_vs_cpu(backends, rng, hd, window, blas, monkeypatch):
    """A prompt longer than one query tile (cuBLAS path, or the tiled kernel: several query and key
    tiles, GQA, a partial last tile), then one step, against the CPU backend (1e-5)."""
    import embedkit.backend.cuda_attention as cuda_attention_module

    monkeypatch.setattr(cuda_attention_module, "PROMPT_ATTENTION_BLAS", blas)
    cpu, gpu = backends
    heads, kv_heads, n_ctx = 4, 2, 48
    cc, gc = cpu.kv_cache(n_ctx, kv_heads, hd), gpu.kv_cache(n_ctx, kv_heads, hd)
    pos0 = 0
    for n in (37, 1):
        q = rng.standard_normal((n, heads, hd)).astype(np.float32)
        k = rng.standard_normal((n, kv_heads, hd)).astype(np.float32)
        v = rng.standard_normal((n, kv_heads, hd)).astype(np.float32)
        ref = cpu.attention(q, cc, k, v, pos0, 0.2, window=window)
        got = gpu.to_host(gpu.attention(gpu.asarray(q), gc, gpu.asarray(k), gpu.asarray(v), pos0, 0.2, window=window))
        assert got.shape == ref.shape
        assert _rel(got, ref.astype(np.float64)) < 1e-5
        pos0 += n


def test_attention_batch_vs_cpu(backends, rng):
    cpu, gpu = backends
    b, t, h, hd = 2, 5, 2, 32
    q, k, v = (rng.standard_normal((b, t, h, hd)).astype(np.float32) for _ in range(3))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=np.int32)
    ref = cpu.attention_batch(q, k, v, mask, 0.25)
    got = gpu.to_host(gpu.attention_batch(gpu.asarray(q), gpu.asarray(k), gpu.asarray(v), mask, 0.25))
    assert got.shape == ref.shape
    assert _rel(got[mask.astype(bool)], ref[mask.astype(bool)].astype(np.float64)) < 1e-5


@pytest.mark.parametrize("mode", ["mean", "cls", "last"])
def test_pooling(backends, rng, mode):
    _, gpu = backends
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.int32)
    if mode == "mean":
        ref = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    elif mode == "cls":
        ref = x[:, 0]
    else:
        ref = x[np.arange(2), mask.sum(1) - 1]
    from numba import cuda

    from embedkit.kernels.cuda import pooling

    out = cuda.device_array((2, 8), dtype=np.float32)
    pooling.pool(cuda.to_device(x), cuda.to_device(mask), pooling.POOLING_MODES[mode], out, gpu.stream)
    got = out.copy_to_host(stream=gpu.stream)
    gpu.stream.synchronize()
    assert _rel(got, ref.astype(np.float64)) < 1e-5
