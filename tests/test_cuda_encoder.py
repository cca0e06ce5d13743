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


def _sim() -> bool:
    from numba.cuda import config

    return bool(config.ENABLE_CUDASIM)


# under the simulator (numpy standing in for cuBLAS, a Python thread per CUDA thread) only the small cases
_GEMM_CASES = [(32, 5, 3, 2), (16, 37, 2, 2), (32, 128, 5, 3), (64, 200, 4, 2), (32, 512, 2, 2)]


@pytest.mark.parametrize(
    "mode,score_dtype", [("batched", np.float32), ("strided", np.float32), ("batched", np.float16)]
)
@pytest.mark.parametrize("hd,t,b,n_head", _GEMM_CASES)
def test_attention_gemm_vs_fused_and_reference(monkeypatch, mode, score_dtype, hd, t, b, n_head):
    """The tensor-core attention (biases folded: key offsets from x, V's bias through beta = 1) on right-padded
    variable lengths, chunked (several chunks of sequences): real rows within 2e-3 (float32 scores; 5e-3 float16)
    of float64 attention of the float16 Q/K/V plus biases and of the fused kernel, padded rows 0, every element
    written."""
    from numba import cuda

    from embedkit.kernels.cuda import encoder
    from embedkit.kernels.cuda import encoder_attention as ea

    if _sim() and t > 40:
        pytest.skip("simulator: small shapes only")
    if not _sim():
        import cupy  # noqa: F401 (cuBLAS through CuPy on a GPU)
    rng = np.random.default_rng(13)
    d = n_head * hd
    dm = 48  # the layer input's width (only the projections see it)
    lengths = np.array([t, max(1, t // 2), 1, max(1, t - 3), 2][:b], dtype=np.int32)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
    x = rng.standard_normal((b * t, dm)).astype(np.float16)
    w = (rng.standard_normal((3 * d, dm)) / np.sqrt(dm)).astype(np.float16)
    bias = (0.5 * rng.standard_normal(3 * d)).astype(np.float32)
    qkv = (x.astype(np.float32) @ w.astype(np.float32).T).astype(np.float16)  # no biases (the GEMM's product)
    scale = 1.0 / math.sqrt(hd)
    u = ea.key_bias_weights(w[d : 2 * d].astype(np.float32), bias[:d], n_head, scale)
    assert u.shape == (n_head, dm) and u.dtype == np.float16
    # scores of one sequence's two heads per chunk: several chunks, the last one partial
    monkeypatch.setattr(ea, "SCORE_DTYPE", score_dtype)
    monkeypatch.setattr(ea, "SCORE_CHUNK_BYTES", 2 * n_head * t * ea.padded_t(t) * (2 + np.dtype(score_dtype).itemsize))
    monkeypatch.setattr(ea, "MIN_CHUNK_SEQUENCES", 1)
    assert ea.chunk_sequences(b, t, n_head) == min(2, b)

    def empty(shape, dtype):
        return cuda.to_device(np.full(shape, np.nan if np.dtype(dtype).kind == "f" else -1, dtype=dtype))

    x_d, qkv_d = _dev(x), _dev(qkv)
    key_bias = empty((n_head, b * t), np.float32)
    stream = None if _sim() else __import__("cupy").cuda.Stream()
    nb_stream = 0 if stream is None else cuda.external_stream(stream.ptr)
    encoder.gemm(_dev(u), x_d, key_bias, stream)
    out = empty((b * t, d), np.float16)  # poisoned: every element must be written
    ea.attention_gemm(qkv_d, key_bias, _dev(bias[2 * d :]), _dev(lengths), n_head, scale, out, empty, nb_stream,
                      stream, mode=mode)  # fmt: skip
    fused = empty((b * t, d), np.float16)
    encoder.attention(qkv_d, _dev(bias), _dev(mask), n_head, scale, fused, nb_stream)
    if stream is not None:
        stream.synchronize()
    got, got_fused = out.copy_to_host(), fused.copy_to_host()
    ref = _ref_attention(qkv, bias, mask, n_head, scale)
    real = mask.reshape(-1) != 0
    assert np.isfinite(got).all()
    assert not got[~real].any()  # padded query rows: zeros
    tol = 5e-3 if score_dtype == np.float16 else 2e-3
    assert _rel(got[real], ref[real]) < tol
    assert _rel(got[real], got_fused[real].astype(np.float64)) < tol


def test_key_bias_weights_fold_q_bias():
    """x . U[h] is scale * b_q,h . k_h(x): the score offset Q's bias gives each key (float64 check)."""
    from embedkit.kernels.cuda.encoder_attention import key_bias_weights

    rng = np.random.default_rng(14)
    n_head, hd, dm = 3, 8, 20
    wk = rng.standard_normal((n_head * hd, dm))
    bq = rng.standard_normal(n_head * hd)
    x = rng.standard_normal((5, dm))
    u = key_bias_weights(wk, bq, n_head, 0.25).astype(np.float64)
    k = (x @ wk.T).reshape(5, n_head, hd)
    ref = 0.25 * np.einsum("jhr,hr->jh", k, bq.reshape(n_head, hd))
    assert _rel(x @ u.T, ref) < 1e-3


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


@pytest.mark.parametrize("f", [8, 300, 6])
def test_bias_act_float16_widths(f):
    """float16 bias + GELU four columns a thread (f % 4 == 0) or one (f = 6), bias or none, in place too:
    within 1e-3 of float64 on the same float16 inputs."""
    from embedkit.kernels.cuda import encoder

    rng = np.random.default_rng(15)
    n = 5
    h = (2 * rng.standard_normal((n, f))).astype(np.float16)
    hb = (0.3 * rng.standard_normal(f)).astype(np.float32)
    x = h.astype(np.float64) + hb
    gelu = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    g = _dev(np.full((n, f), np.nan, np.float16))
    encoder.bias_act(_dev(h), _dev(hb), encoder.ACT_GELU_ERF, g)
    assert _rel(g.copy_to_host(), gelu) < 1e-3
    hd = _dev(h)
    encoder.bias_act(hd, _dev(hb), encoder.ACT_NONE, hd)  # in place, bias only
    assert _rel(hd.copy_to_host(), x) < 1e-3
    g2 = _dev(np.full((n, f), np.nan, np.float16))
    encoder.bias_act(_dev(h), None, encoder.ACT_GELU_ERF, g2)  # no bias
    x0 = h.astype(np.float64)
    assert _rel(g2.copy_to_host(), 0.5 * x0 * (1 + np.vectorize(math.erf)(x0 / math.sqrt(2)))) < 1e-3


@pytest.fixture(scope="module")
def bert_file(tmp_path_factory):
    from embedkit.testing.random_quant import bert_spec, write_random_gguf

    d = tmp_path_factory.mktemp("cuda_encoder")
    return write_random_gguf(d / "bert.gguf", "bert", *bert_spec(64, 2, 2, 128, 96), seed=4)


@pytest.mark.parametrize(
    "precision,min_cos,gemm_attention",
    [("float16", 0.9999, False), ("float16", 0.9999, "batched"), ("float16", 0.9999, "strided"),
     ("float32", 0.999999, False)],
)  # fmt: skip
def test_bert_variable_length_batch_vs_cpu(bert_file, monkeypatch, precision, min_cos, gemm_attention):
    import embedkit.backend.cuda_encoder as cuda_encoder
    from embedkit.backend.cuda_encoder import CUDAEncoderBackend
    from embedkit.backend.placement import make_placement
    from embedkit.models import load_model

    monkeypatch.setenv("EMBEDKIT_GPU_PRECISION", precision)
    monkeypatch.setattr(cuda_encoder, "ATTENTION_GEMM", bool(gemm_attention))
    if gemm_attention:
        monkeypatch.setattr(cuda_encoder, "ATTENTION_MODE", gemm_attention)
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
    # the path the batches took: the GEMM attention where asked (float16 only), else the fused kernel
    want = f"gemm-{gemm_attention}" if gemm_attention and precision == "float16" else "fused"
    assert gpu.placement.layer(0).attention_path == want
    if gemm_attention and precision == "float16":  # a mask with a hole: the fused kernel takes it
        holed = mask.copy()
        holed[0, 2] = 0
        h_ref, h = cpu.encode(ids, holed), gpu.encode(ids, holed)
        assert gpu.placement.layer(0).attention_path == "fused"
        assert _rel(h[holed.astype(bool)], h_ref[holed.astype(bool)]) < 2e-2


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
