"""The GPU encoder path (`backend.cuda_encoder`, `kernels.cuda.encoder`) against float32 arithmetic on the CPU.

Runs on a CUDA GPU with numba-cuda and CuPy, or (tiny sizes, slowly) under NUMBA_ENABLE_CUDASIM=1, where
numpy stands in for cuBLAS; skipped elsewhere (CI has no GPU). Tolerances, max |gpu - ref| / max |ref|:
- kernels fed float32 arrays (attention, residual + LayerNorm, bias + GELU): 1e-5 against numpy;
- the same kernels on float16 inputs: against numpy on the same float16-rounded inputs, 1e-3
  (the outputs are rounded to float16);
- the tensor-core flash kernel (a real GPU only: CUDA C through NVRTC): 5e-3 against float64 attention of the
  same float16 inputs (Q, K, V and the probabilities rounded to float16 inside);
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


def _flash_available() -> bool:
    """The tensor-core kernel needs a real GPU and CuPy (NVRTC); the simulator runs no CUDA C."""
    if _sim():
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


def _bench_kernel(name: str):
    """benchmarks/kernels/<name>.py (a kernel kept for comparison), loaded by its path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _where_wrong(got, ref, mask, n_head, tol) -> str:
    """Which (sequence, query, head) rows miss the tolerance: a short description for a failing assert."""
    b, t = mask.shape
    hd = ref.shape[1] // n_head
    ref = np.nan_to_num(ref)  # a sequence with no token at all has no reference rows
    err = np.abs(np.asarray(got, np.float64) - ref).reshape(b, t, n_head, hd).max(-1) / np.max(np.abs(ref))
    bad = np.argwhere(~(err < tol))
    return f"{len(bad)} of {b * t * n_head} rows wrong, first (seq, query, head): {bad[:8].tolist()}"


# (head_dim, t, lengths, n_head, warps, key_tile, stage_keys): single tokens, lengths off the 16-query and key
# tiles, several query tiles, key tiles and staging passes, the longest sequences, holes in the mask
_FLASH_CASES = [
    (32, 1, [1, 1], 2, 4, 64, None),
    (32, 5, [5, 3, 1], 3, 4, 64, None),
    (32, 17, [17, 16, 1], 2, 4, 64, None),
    (32, 65, [65, 64, 63, 1], 2, 4, 64, None),
    (32, 128, [128, 100, 77, 1], 12, 4, 64, None),
    (32, 130, [130, 129, 2], 2, 8, 64, None),
    (32, 128, [128, 90, 33], 4, 8, 32, None),
    (32, 512, [512, 300], 2, 4, 64, None),
    (32, 300, [300, 129, 5], 2, 4, 64, 64),
    (32, 512, [512, 257, 1], 2, 4, 64, 256),
    (32, 200, [200, 150], 2, 8, 32, 128),
    (16, 70, [70, 35, 1], 2, 4, 64, None),
    (64, 33, [33, 20, 1], 2, 4, 64, None),
    (64, 200, [200, 199], 2, 8, 64, None),
    (128, 40, [40, 9], 2, 4, 32, None),
    (128, 150, [150, 70], 2, 4, 64, None),
]


@pytest.mark.parametrize("hd,t,lengths,n_head,warps,key_tile,stage_keys", _FLASH_CASES)
@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("version", [2, 1])
def test_flash_attention_vs_reference(hd, t, lengths, n_head, warps, key_tile, stage_keys, holes, version):
    """The tensor-core flash kernel (`encoder_flash`; version 2: the variant kept in benchmarks/kernels/) on
    variable lengths: real query rows within 5e-3 of float64 attention of the same float16 Q/K/V plus float32
    biases (Q, K, V and the probabilities are rounded to float16 on the way), padded rows 0, every element of the
    poisoned output written."""
    if not _flash_available():
        pytest.skip("the tensor-core kernel is CUDA C (NVRTC through CuPy): a real GPU only")
    import cupy

    from embedkit.kernels.cuda.encoder_flash import flash_attention

    rng = np.random.default_rng(16)
    b, d = len(lengths), n_head * hd
    mask = (np.arange(t)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    if holes:
        mask[0, t // 2] = 0  # a key in the middle gets no weight, its query row is zero
        if t > 40:
            mask[-1, 3:40] = 0
    qkv = (2 * rng.standard_normal((b * t, 3 * d))).astype(np.float16)
    bias = (0.5 * rng.standard_normal(3 * d)).astype(np.float32)
    scale = 1.0 / math.sqrt(hd)
    out = _dev(np.full((b * t, d), np.nan, np.float16))
    stream = cupy.cuda.Stream()
    text = None if version == 1 else _bench_kernel("encoder_flash_v2").source(hd, warps, key_tile, stage_keys)
    flash_attention(_dev(qkv), _dev(bias), _dev(mask), n_head, scale, out, stream, warps, key_tile, text)
    stream.synchronize()
    got = out.copy_to_host()
    ref = _ref_attention(qkv, bias, mask, n_head, scale)
    real = mask.reshape(-1) != 0
    assert np.isfinite(got).all(), _where_wrong(got, ref, mask, n_head, 5e-3)
    assert not got[~real].any()  # padded query rows: zeros
    assert _rel(got[real], ref[real]) < 5e-3, _where_wrong(got, ref, mask, n_head, 5e-3)


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
    # the residual in the low dtype and no float32 output (the encoder's RESIDUAL_LOW path)
    res_lo = res.astype(dtype)
    out_lo2 = _dev(np.full((n, d), np.nan, dtype))
    encoder.add_norm(_dev(a), _dev(bias), _dev(res_lo), _dev(w), _dev(bb), 1e-12, None, out_lo2)
    v = a.astype(np.float64) + bias + res_lo
    ref = (v - v.mean(1, keepdims=True)) / np.sqrt(v.var(1, keepdims=True) + 1e-12) * w + bb
    assert _rel(out_lo2.copy_to_host(), ref) < tol

    h = rng.standard_normal((n, 3 * d)).astype(dtype)
    hb = (0.2 * rng.standard_normal(3 * d)).astype(np.float32)
    g = _dev(np.full((n, 3 * d), np.nan, dtype))
    encoder.bias_act(_dev(h), _dev(hb), encoder.ACT_GELU_ERF, g)
    x = h.astype(np.float64) + hb
    assert _rel(g.copy_to_host(), 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))) < tol


@pytest.mark.parametrize("f", [8, 300, 6])
@pytest.mark.parametrize("pairs", [False, True])
def test_bias_act_float16_widths(f, pairs):
    """float16 bias + GELU four columns a thread (f % 4 == 0) or one (f = 6), bias or none, in place too:
    within 1e-3 of float64 on the same float16 inputs; `pairs`: the two-rows-a-step four-column kernel kept in
    benchmarks/kernels/ (an odd row count leaves one row without its pair)."""
    from functools import partial

    from embedkit.kernels.cuda import encoder

    kernel4 = _bench_kernel("encoder_bias_act_x2").bias_act4x2_kernel if pairs else None
    bias_act = partial(encoder.bias_act, kernel4=kernel4)

    rng = np.random.default_rng(15)
    n = 5
    h = (2 * rng.standard_normal((n, f))).astype(np.float16)
    hb = (0.3 * rng.standard_normal(f)).astype(np.float32)
    x = h.astype(np.float64) + hb
    gelu = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    g = _dev(np.full((n, f), np.nan, np.float16))
    bias_act(_dev(h), _dev(hb), encoder.ACT_GELU_ERF, g)
    assert _rel(g.copy_to_host(), gelu) < 1e-3
    hd = _dev(h)
    bias_act(hd, _dev(hb), encoder.ACT_NONE, hd)  # in place, bias only
    assert _rel(hd.copy_to_host(), x) < 1e-3
    g2 = _dev(np.full((n, f), np.nan, np.float16))
    bias_act(_dev(h), None, encoder.ACT_GELU_ERF, g2)  # no bias
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
    # the path the batches took: the GEMM attention where asked (float16 only), else the tensor-core flash
    # kernel (float16 on a real GPU), else the Numba fused kernel
    flash = "flash" if precision == "float16" and _flash_available() else "fused"
    want = f"gemm-{gemm_attention}" if gemm_attention and precision == "float16" else flash
    assert gpu.placement.layer(0).attention_path == want
    if precision == "float16":  # a mask with a hole: not the GEMM attention's
        holed = mask.copy()
        holed[0, 2] = 0
        h_ref, h = cpu.encode(ids, holed), gpu.encode(ids, holed)
        assert gpu.placement.layer(0).attention_path == flash
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
