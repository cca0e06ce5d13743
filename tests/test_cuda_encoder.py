"""The GPU encoder path (`backend.cuda_encoder`, `kernels.cuda.encoder`) against float32 arithmetic on the CPU.

Runs on a CUDA GPU with numba-cuda and CuPy, or (tiny sizes, slowly) under NUMBA_ENABLE_CUDASIM=1, where
numpy stands in for cuBLAS; skipped elsewhere (CI has no GPU). Tolerances, max |gpu - ref| / max |ref|:
- kernels fed float32 arrays (attention, residual + LayerNorm, bias + GELU): 1e-5 against numpy;
- the same kernels on float16 inputs: against numpy on the same float16-rounded inputs, 1e-3
  (the outputs are rounded to float16);
- whole BERT models, variable-length batches: pooled vectors cosine >= 0.9999 to the CPU backend's
  float32 vectors in float16 (the default) and >= 0.999999 with EMBEDKIT_GPU_PRECISION=float32; hidden
  states free of NaN, real tokens' rows within 2e-2 (float16) / 1e-5 (float32).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedkit.kernels.cuda import cuda_available, cuda_unavailable_reason

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_available(), reason=cuda_unavailable_reason() or "no CUDA GPU"),
]


def _dev(a):
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(a))


def _rel(got, ref) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


def _ref_attention(qkv, bias, mask, n_head, scale):
    """float64 attention of fused projections [b*t, 3d] over mask [b, t]; padded query rows zero."""
    b, t = mask.shape
    d = qkv.shape[1] // 3
    hd = d // n_head
    x = (qkv.astype(np.float64) + bias).reshape(b, t, 3, n_head, hd)
    q, k, v = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    s = np.where(mask[:, None, None, :] != 0, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", p, v) * (mask[:, :, None, None] != 0)
    return o.reshape(b * t, d)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("hd,t", [(32, 5), (32, 40), (16, 70), (64, 33)])
def test_attention_variable_lengths(dtype, hd, t):
    from embedkit.kernels.cuda import encoder

    rng = np.random.default_rng(11)
    n_head, b = 2, 3
    d = n_head * hd
    lengths = [t, max(1, t // 2), 1]
    mask = (np.arange(t)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    if t > 3:
        mask[0, 1] = 0  # a hole (not right padding): that key gets no weight, that row is zero
    qkv = rng.standard_normal((b * t, 3 * d)).astype(dtype)
    bias = (0.1 * rng.standard_normal(3 * d)).astype(np.float32)
    scale = 1.0 / math.sqrt(hd)
    out = _dev(np.full((b * t, d), np.nan, dtype=dtype))  # poisoned: every element must be written
    encoder.attention(_dev(qkv), _dev(bias), _dev(mask), n_head, scale, out)
    got = out.copy_to_host()
    ref = _ref_attention(qkv, bias, mask, n_head, scale)
    assert np.isfinite(got).all()
    assert _rel(got, ref) < (1e-5 if dtype == np.float32 else 1e-3)


@pytest.mark.parametrize("hd,t", [(32, 5), (32, 40), (16, 70), (64, 33), (32, 128)])
def test_attention_gemm_variable_lengths(hd, t):
    """The tensor-core path (float16 scores and probabilities through cuBLAS) on the same masks: 2e-3."""
    from numba import cuda
    from numba.cuda import config

    from embedkit.kernels.cuda.encoder_attention import attention_gemm

    if config.ENABLE_CUDASIM:
        pytest.skip("needs cuBLAS (CuPy): not under the simulator")
    import cupy

    rng = np.random.default_rng(12)
    n_head, b = 3, 3
    d = n_head * hd
    lengths = [t, max(1, t // 2), 1]
    mask = (np.arange(t)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    if t > 3:
        mask[0, 1] = 0
    bias = (0.1 * rng.standard_normal(3 * d)).astype(np.float32)
    qkv = (rng.standard_normal((b * t, 3 * d)) + bias).astype(np.float16)  # biases already in
    scale = 1.0 / math.sqrt(hd)
    out = _dev(np.full((b * t, d), np.nan, dtype=np.float16))

    def empty(shape, dtype):
        return cuda.device_array(shape, dtype=dtype)

    stream = cupy.cuda.Stream()
    attention_gemm(_dev(qkv), _dev(mask), n_head, scale, out, empty, cuda.external_stream(stream.ptr), stream)
    stream.synchronize()
    got = out.copy_to_host()
    ref = _ref_attention(qkv, np.zeros(3 * d), mask, n_head, scale)
    assert np.isfinite(got).all()
    assert _rel(got, ref) < 2e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_add_norm_and_bias_gelu(dtype):
    from embedkit.kernels.cuda import encoder

    rng = np.random.default_rng(12)
    n, d = 9, 100
    a = rng.standard_normal((n, d)).astype(dtype)
    bias = (0.2 * rng.standard_normal(d)).astype(np.float32)
    res = rng.standard_normal((n, d)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
    bb = (0.1 * rng.standard_normal(d)).astype(np.float32)
    out, out_lo = _dev(np.full((n, d), np.nan, np.float32)), _dev(np.full((n, d), np.nan, dtype))
    encoder.add_norm(_dev(a), _dev(bias), _dev(res), _dev(w), _dev(bb), 1e-12, out, out_lo)
    v = a.astype(np.float64) + bias + res
    ref = (v - v.mean(1, keepdims=True)) / np.sqrt(v.var(1, keepdims=True) + 1e-12) * w + bb
    tol = 1e-5 if dtype == np.float32 else 1e-3
    assert _rel(out.copy_to_host(), ref) < tol
    assert _rel(out_lo.copy_to_host(), ref) < tol

    h = rng.standard_normal((n, 3 * d)).astype(dtype)
    hb = (0.2 * rng.standard_normal(3 * d)).astype(np.float32)
    g = _dev(np.full((n, 3 * d), np.nan, dtype))
    encoder.bias_act(_dev(h), _dev(hb), encoder.ACT_GELU_ERF, g)
    x = h.astype(np.float64) + hb
    assert _rel(g.copy_to_host(), 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))) < tol


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory):
    from embedkit.testing.random_quant import bert_spec, write_random_gguf

    d = tmp_path_factory.mktemp("cuda_encoder")
    return write_random_gguf(d / "bert.gguf", "bert", *bert_spec(64, 2, 2, 128, 96), seed=4)


@pytest.mark.parametrize(
    "precision,min_cos,gemm_attention",
    [("float16", 0.9999, False), ("float16", 0.9999, True), ("float32", 0.999999, False)],
)
def test_bert_variable_length_batch_vs_cpu(bert_file, monkeypatch, precision, min_cos, gemm_attention):
    import embedkit.backend.cuda_encoder as cuda_encoder
    from embedkit.backend.cuda_encoder import CUDAEncoderBackend
    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model

    monkeypatch.setenv("EMBEDKIT_GPU_PRECISION", precision)
    monkeypatch.setattr(cuda_encoder, "ATTENTION_GEMM", gemm_attention)
    rng = np.random.default_rng(5)
    b, t = 4, 13
    ids = rng.integers(0, 96, (b, t))
    lengths = np.array([13, 7, 3, 1])
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    cpu = load_model(bert_file)
    gpu = load_model(bert_file, make_placement("cuda", -1, input_on_gpu=True))
    assert isinstance(gpu.placement.layer(0), CUDAEncoderBackend)
    assert gpu.placement.layer(0).precision == precision
    for pooling in ("mean", "cls", "last"):
        ref = cpu.embed(ids, mask, pooling)
        got = gpu.embed(ids, mask, pooling)
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        assert cos.min() >= min_cos, (pooling, cos)
    h_ref, h = cpu.encode(ids, mask), gpu.encode(ids, mask)
    real = mask.astype(bool)
    assert np.isfinite(h).all()
    assert _rel(h[real], h_ref[real]) < (2e-2 if precision == "float16" else 1e-5)


def test_bert_gpu_input_on_cpu_and_partial_offload(bert_file):
    """Activations that arrive from the CPU (token embeddings there, or a CPU layer) enter the encoder path."""
    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model

    rng = np.random.default_rng(6)
    ids = rng.integers(0, 96, (3, 9))
    mask = np.ones((3, 9), dtype=np.int64)
    mask[1, 5:] = 0
    ref = load_model(bert_file).embed(ids, mask, "mean")
    for placement in (make_placement("cuda", -1, input_on_gpu=False), make_placement("cuda", 1)):
        got = load_model(bert_file, placement).embed(ids, mask, "mean")
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        assert cos.min() >= 0.9999
