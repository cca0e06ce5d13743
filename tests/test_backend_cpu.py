"""CPU backend ops vs float64 numpy references on fresh random inputs.

Tolerances: elementwise ops, norms and RoPE within 2e-6 relative (float32 rounding); attention
within 1e-5 absolute (outputs are O(1)); matmul/get_rows exact vs `embedkit.kernels` on F32.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedkit.backend import Placement, Weight
from embedkit.backend.cpu import CPUBackend, CPUWeight
from embedkit.gguf import GGMLType


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh generator per test, so each test's inputs do not depend on which tests ran before it."""
    return np.random.default_rng(20261125)


@pytest.fixture(scope="module")
def be() -> CPUBackend:
    return CPUBackend()


def _vec(x: np.ndarray) -> Weight:
    return Weight("v", int(GGMLType.F32), x.shape, x.astype(np.float32))


def _close(a: np.ndarray, ref: np.ndarray, rel: float) -> None:
    err = np.abs(a.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30)
    assert err < rel, f"relative error {err:.2e} >= {rel}"


def test_norms(be: CPUBackend, rng: np.random.Generator) -> None:
    x = rng.standard_normal((5, 3, 64)).astype(np.float32) * 3
    w = rng.standard_normal(64).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    xd = x.astype(np.float64)
    ref = xd / np.sqrt((xd**2).mean(-1, keepdims=True) + 1e-6) * w
    _close(be.rms_norm(x, _vec(w), 1e-6), ref, 2e-6)
    _close(be.rms_norm(x, None, 1e-6), ref / w, 2e-6)
    mu = xd.mean(-1, keepdims=True)
    ref = (xd - mu) / np.sqrt(((xd - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * w + b
    _close(be.layer_norm(x, _vec(w), _vec(b), 1e-5), ref, 2e-6)


def test_activations(be: CPUBackend, rng: np.random.Generator) -> None:
    g = rng.standard_normal((7, 33)).astype(np.float32) * 4
    u = rng.standard_normal((7, 33)).astype(np.float32)
    gd = g.astype(np.float64)
    gelu_tanh = 0.5 * gd * (1 + np.tanh(math.sqrt(2 / math.pi) * (gd + 0.044715 * gd**3)))
    gelu_erf = 0.5 * gd * (1 + np.vectorize(math.erf)(gd / math.sqrt(2)))
    silu = gd / (1 + np.exp(-gd))
    _close(be.gelu(g), gelu_tanh, 2e-6)
    _close(be.gelu_erf(g), gelu_erf, 2e-6)
    _close(be.silu(g), silu, 2e-6)
    _close(be.swiglu(g, u), silu * u, 2e-6)
    _close(be.geglu(g, u), gelu_tanh * u, 2e-6)
    e = np.exp(gd - gd.max(-1, keepdims=True))
    _close(be.softmax(g), e / e.sum(-1, keepdims=True), 2e-6)


@pytest.mark.parametrize("style", ["norm", "neox"])
def test_rope(be: CPUBackend, style: str, rng: np.random.Generator) -> None:
    n, h, hd, n_rot, base = 6, 3, 32, 24, 10000.0
    x = rng.standard_normal((n, h, hd)).astype(np.float32)
    pos = np.array([0, 1, 7, 8, 100, 4095], dtype=np.int32)
    ref = x.astype(np.float64).copy()
    for t in range(n):
        for i in range(n_rot // 2):
            th = pos[t] * 0.5 * base ** (-2 * i / n_rot)
            a, b = (2 * i, 2 * i + 1) if style == "norm" else (i, i + n_rot // 2)
            x0, x1 = x[t, :, a].astype(np.float64), x[t, :, b].astype(np.float64)
            ref[t, :, a] = x0 * math.cos(th) - x1 * math.sin(th)
            ref[t, :, b] = x0 * math.sin(th) + x1 * math.cos(th)
    _close(be.rope(x, pos, n_rot, base, style, freq_scale=0.5), ref, 2e-6)


def _attention_ref(q, k, v, pos0, scale, window, softcap):
    n, nh, hd = q.shape
    g = nh // k.shape[1]
    out = np.zeros((n, nh, hd))
    for t in range(n):
        p = pos0 + t
        for h in range(nh):
            keys = np.arange(p + 1)
            if window:
                keys = keys[p - keys < window]
            s = k[keys, h // g].astype(np.float64) @ q[t, h] * scale
            if softcap:
                s = softcap * np.tanh(s / softcap)
            w = np.exp(s - s.max())
            out[t, h] = (w / w.sum()) @ v[keys, h // g]
    return out.reshape(n, nh * hd)


@pytest.mark.parametrize("window,softcap", [(None, None), (5, None), (None, 30.0)])
def test_attention_prompt_then_decode(
    be: CPUBackend, window: int | None, softcap: float | None, rng: np.random.Generator
) -> None:
    """A 12-token batch (BLAS path) then 3 single tokens (fused path), GQA 6 heads over 2."""
    n_ctx, nh, nkv, hd, total = 32, 6, 2, 16, 15
    q = rng.standard_normal((total, nh, hd)).astype(np.float32)
    k = rng.standard_normal((total, nkv, hd)).astype(np.float32)
    v = rng.standard_normal((total, nkv, hd)).astype(np.float32)
    cache = be.kv_cache(n_ctx, nkv, hd)
    scale = 1 / math.sqrt(hd)
    ref = _attention_ref(q, k, v, 0, scale, window, softcap)
    out = be.attention(q[:12], cache, k[:12], v[:12], 0, scale, window=window, softcap=softcap)
    assert np.abs(out - ref[:12]).max() < 1e-5
    for p in range(12, total):
        out = be.attention(q[p : p + 1], cache, k[p : p + 1], v[p : p + 1], p, scale, window=window, softcap=softcap)
        assert np.abs(out[0] - ref[p]).max() < 1e-5


@pytest.mark.parametrize("n,window,softcap", [(1, 0, 0.0), (3, 0, 0.0), (1, 7, 0.0), (2, 0, 30.0)])
def test_decode_attention_kernels_agree_bit_for_bit(
    n: int, window: int, softcap: float, rng: np.random.Generator
) -> None:
    """The decode attention stores k/v and attends in one call, serial or over (token, head) pairs in parallel:
    both give the bits of a plain cache store followed by `attention_small`."""
    from embedkit.backend import cpu_ops

    n_ctx, nh, nkv, hd, pos0 = 64, 9, 3, 64, 40
    q = rng.standard_normal((n, nh, hd)).astype(np.float32)
    k_new = rng.standard_normal((n, nkv, hd)).astype(np.float32)
    v_new = rng.standard_normal((n, nkv, hd)).astype(np.float32)
    k0 = rng.standard_normal((nkv, n_ctx, hd)).astype(np.float32)
    v0 = rng.standard_normal((nkv, n_ctx, hd)).astype(np.float32)
    args = (np.float32(0.125), window, np.float32(softcap))
    k, v = k0.copy(), v0.copy()
    k[:, pos0 : pos0 + n], v[:, pos0 : pos0 + n] = k_new.transpose(1, 0, 2), v_new.transpose(1, 0, 2)
    ref = np.empty((n, nh * hd), dtype=np.float32)
    cpu_ops.attention_small(q, k, v, pos0, *args, ref)
    for kernel in (cpu_ops.store_attention_small, cpu_ops.store_attention_parallel):
        kc, vc, out = k0.copy(), v0.copy(), np.empty_like(ref)
        kernel(q, k_new, v_new, kc, vc, pos0, *args, out)
        assert np.array_equal(kc, k) and np.array_equal(vc, v)
        assert np.array_equal(out, ref), kernel.__name__


@pytest.mark.parametrize("n", [1536, 4865])
def test_parallel_glu_kernels_agree_bit_for_bit(n: int, rng: np.random.Generator) -> None:
    """A decode step's GLU over the kernel threads gives the serial kernels' bits."""
    from embedkit.backend import cpu_ops

    gate = (rng.standard_normal(n) * 4).astype(np.float32)
    up = rng.standard_normal(n).astype(np.float32)
    for serial, parallel in ((cpu_ops.silu_mul, cpu_ops.silu_mul_parallel),
                             (cpu_ops.gelu_tanh_mul, cpu_ops.gelu_tanh_mul_parallel)):  # fmt: skip
        ref, out = np.empty_like(gate), np.empty_like(gate)
        serial(gate, up, ref)
        parallel(gate, up, out, 3)
        assert np.array_equal(out, ref), serial.__name__


def test_attention_batch_ignores_padding(be: CPUBackend, rng: np.random.Generator) -> None:
    b, t, h, hd = 2, 5, 2, 8
    q, k, v = (rng.standard_normal((b, t, h, hd)).astype(np.float32) for _ in range(3))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = be.attention_batch(q, k, v, mask, 0.3)
    for i in range(b):
        keep = mask[i].astype(bool)
        for hh in range(h):
            s = q[i, keep, hh].astype(np.float64) @ k[i, keep, hh].T * 0.3
            w = np.exp(s - s.max(-1, keepdims=True))
            ref = (w / w.sum(-1, keepdims=True)) @ v[i, keep, hh]
            assert np.abs(out[i, keep, hh * hd : (hh + 1) * hd] - ref).max() < 1e-5
            assert not out[i, ~keep].any()  # padded query rows are zeros


def test_attention_batch_any_mask_and_row_blocks(be: CPUBackend, rng: np.random.Generator) -> None:
    """Prefix masks, masks with holes and an all-padding sequence, split over row blocks (1e-5 absolute)."""
    b, t, h, hd = 7, 37, 3, 16
    q, k, v = (rng.standard_normal((b, t, h, hd)).astype(np.float32) for _ in range(3))
    mask = (np.arange(t)[None, :] < rng.integers(1, t + 1, size=b)[:, None]).astype(np.uint8)
    mask[2] = rng.integers(0, 2, size=t)
    mask[2, 5] = 1
    mask[4] = 0
    out = be.attention_batch(q, k, v, mask, 0.25).reshape(b, t, h, hd)
    for i in range(b):
        keep = mask[i].astype(bool)
        assert not out[i, ~keep].any()
        for hh in range(h):
            if not keep.any():
                continue
            s = q[i, keep, hh].astype(np.float64) @ k[i, keep, hh].T * 0.25
            w = np.exp(s - s.max(-1, keepdims=True))
            ref = (w / w.sum(-1, keepdims=True)) @ v[i, keep, hh]
            assert np.abs(out[i, keep, hh] - ref).max() < 1e-5


def test_encoder_sized_ops_over_row_blocks(be: CPUBackend, rng: np.random.Generator) -> None:
    """F32 matmul + bias, add, exact GELU and LayerNorm on inputs large enough to be split across threads."""
    n, d_in, d_out = 301, 48, 80
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    w = rng.standard_normal((d_out, d_in)).astype(np.float32)
    bias = rng.standard_normal(d_out).astype(np.float32)
    wt = Weight("w", int(GGMLType.F32), (d_out, d_in), w.view(np.uint8).reshape(-1))
    _close(be.matmul(x, wt, _vec(bias)), x.astype(np.float64) @ w.T.astype(np.float64) + bias, 2e-6)
    g = rng.standard_normal((700, 131)).astype(np.float32) * 4
    gd = g.astype(np.float64)
    _close(be.gelu_erf(g), 0.5 * gd * (1 + np.vectorize(math.erf)(gd / math.sqrt(2))), 2e-6)
    u = rng.standard_normal(g.shape).astype(np.float32)
    _close(be.add(g, u), gd + u, 2e-7)
    lw, lb = rng.standard_normal(131).astype(np.float32), rng.standard_normal(131).astype(np.float32)
    mu = gd.mean(-1, keepdims=True)
    ref = (gd - mu) / np.sqrt(((gd - mu) ** 2).mean(-1, keepdims=True) + 1e-12) * lw + lb
    _close(be.layer_norm(g, _vec(lw), _vec(lb), 1e-12), ref, 2e-6)


def test_fast_exp_and_erf(rng: np.random.Generator) -> None:
    """The vectorisable float32 exp (relative error < 3e-7 on [-87, 88]) and erf (absolute error < 5e-7)."""
    from numba import njit

    from embedkit.kernels.cpu.fast_f32 import erf_f32, exp_f32

    @njit(error_model="numpy")
    def apply(x, which):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = exp_f32(x[i]) if which == 0 else erf_f32(x[i])
        return out

    x = np.concatenate([rng.uniform(-87, 88, 20000), rng.uniform(-3, 3, 20000)]).astype(np.float32)
    ref = np.exp(x.astype(np.float64))
    assert (np.abs(apply(x, 0) - ref) / ref).max() < 3e-7
    x = np.concatenate([rng.uniform(-6, 6, 20000), [-np.inf, np.inf, 0.0]]).astype(np.float32)
    ref = np.array([math.erf(float(v)) for v in x])
    assert np.abs(apply(x, 1) - ref).max() < 5e-7


def test_run_blocks_covers_every_item_once(rng: np.random.Generator) -> None:
    from embedkit.kernels.cpu.row_blocks import block_bounds, run_blocks

    cost = rng.integers(1, 100, size=23).astype(np.float64) ** 2
    for n_blocks in (1, 2, 5, 23, 40):
        bounds = block_bounds(cost, n_blocks)
        assert bounds[0][0] == 0 and bounds[-1][1] == 23
        assert all(a < b for a, b in bounds) and all(p[1] == q[0] for p, q in zip(bounds, bounds[1:], strict=False))
        assert len(bounds) <= min(n_blocks, 23)
    for kw in ({}, {"cost": cost}, {"min_items": 30}, {"blas": True}):
        seen = np.zeros(23, dtype=np.int64)

        def mark(a: int, b: int, seen: np.ndarray = seen) -> None:
            seen[a:b] += 1

        run_blocks(mark, 23, **kw)
        assert (seen == 1).all(), kw


def test_matmul_and_get_rows(be: CPUBackend, rng: np.random.Generator) -> None:
    w = rng.standard_normal((40, 64)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    wt = Weight("w", int(GGMLType.F32), (40, 64), w.view(np.uint8).reshape(-1))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    _close(be.matmul(x, wt, _vec(bias)), x.astype(np.float64) @ w.T + bias, 2e-6)
    ids = np.array([3, 0, 39, 3])
    assert np.array_equal(be.get_rows(wt, ids), w[ids])


def test_offload_placement_follows_llama_cpp() -> None:
    cpu, gpu = CPUBackend(), CPUBackend()
    p = Placement.offload(cpu, gpu, 4, 2)
    assert [b is gpu for b in p.layers] == [False, False, True, True] and p.output is cpu and p.input is cpu
    p = Placement.offload(cpu, gpu, 4, -1)
    assert all(b is gpu for b in p.layers) and p.output is gpu and p.input is cpu
    assert all(b is cpu for b in Placement.offload(cpu, gpu, 4, 0).layers)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q5_0"])
def test_decode_matmuls_stack_weights_of_one_type(qtype: str) -> None:
    """Decode runs same-type packed weights of one `matmuls` call in one stacked launch (q/k/v, gate/up): every
    output is bit-identical to that weight's own `matmul`, biases included, against float64 within int16
    activation rounding; a weight of another type (Q8_0) in the call goes its own way."""
    from test_kernels_dequant import random_blocks

    rng = np.random.default_rng(20261207)
    n_cols = 256
    shapes = [(132, n_cols), (64, n_cols), (64, n_cols)]
    types = [qtype, qtype, "Q8_0"]
    ws = []
    for (n, c), t in zip(shapes, types, strict=True):
        raw = random_blocks(rng, t, n, c).reshape(n, -1)
        ws.append(CPUWeight(f"w{len(ws)}", int(GGMLType[t]), (n, c), raw))
    bias = [_vec(rng.standard_normal(n).astype(np.float32)) for n, _ in shapes]
    stacked_be, single_be = CPUBackend(), CPUBackend()
    for n_tok in (1, 3, 1):
        x = rng.standard_normal((n_tok, n_cols)).astype(np.float32)
        ys = stacked_be.matmuls(x, ws, bias)
        for w, b, y in zip(ws, bias, ys, strict=True):
            own = single_be.matmul(x, CPUWeight(w.name, w.ggml_type, w.shape, w.data), b)
            np.testing.assert_array_equal(y.view(np.uint32), own.view(np.uint32))
            ref = x.astype(np.float64) @ be_dequant(w).T + b.data
            _close(y, ref, 1e-4)
            assert y.shape == (n_tok, w.shape[0]) and y.flags.c_contiguous
    key = tuple(id(w) for w in ws)
    (group,) = stacked_be._stacked[key][1]
    assert [i for i, _, _ in group.parts] == [0, 1] and group.n_rows == 196
    assert np.shares_memory(ws[0].packed, group.packed) and np.shares_memory(ws[1].packed, group.packed)


def be_dequant(w: Weight) -> np.ndarray:
    """W as float64 through the reference dequantizer."""
    from embedkit import kernels

    return kernels.dequantize(w.data, w.ggml_type, w.shape).astype(np.float64)
