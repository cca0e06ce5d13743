"""Goldens for Q5_K weights: llama.cpp's x86 AVX2 vec_dot and its tiled K-quant matmul (MUL_MAT).

Run (dev machine, needs llama-cpp-python 0.3.36's libggml):
    .venv/bin/python tests/data/ggml_exact/make_q5_k_goldens.py
Writes q5_k.npz next to this file: random Q5_K weights (fixed seed), float32 activations and the oracle's
float32 outputs for

- `vec/*`: ggml_vec_dot_q5_K_q8_K of every weight row and every activation row quantized by quantize_row_q8_K;
- `graph/*`: MUL_MAT of a ggml graph with the Q5_K weight in a plain (not repacked) context: on x86 ggml
  does not repack Q5_K, so fewer than 8 activation rows go through vec_dot and 8 or more through the tiled
  K-quant matmul.

The functions here are also the live oracles of tests/test_ggml_exact_q5_k.py.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_kquant_goldens import (  # noqa: E402
    _f16_bytes,
    oracle_mul_mat_graph,
    oracle_q8_K_row,
    random_activations,
)

TYPE_Q5_K = 13
Q5_K_BYTES, Q8_K_BYTES = 176, 292


@functools.cache
def _vec_dot() -> ctypes._CFuncPtr:
    from make_kquant_goldens import ggml_cpu

    fn = ggml_cpu().ggml_vec_dot_q5_K_q8_K
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, vp, sz, vp, sz, vp, sz, ctypes.c_int]
    fn.restype = None
    return fn


def oracle_q8_K(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_K of each float32 row of x [n_tok, k]: uint8 [n_tok, k // 256 * 292]."""
    return np.stack([oracle_q8_K_row(row).reshape(-1) for row in np.asarray(x, np.float32)])


def oracle_vec_dot(w: np.ndarray, xq: np.ndarray, n_cols: int) -> np.ndarray:
    """float32 [n_tok, n_out]: ggml_vec_dot_q5_K_q8_K(w[r], xq[t]) for Q5_K rows w and Q8_K rows xq."""
    fn = _vec_dot()
    w = np.ascontiguousarray(w, np.uint8)
    xq = np.ascontiguousarray(xq, np.uint8)
    out = np.zeros((xq.shape[0], w.shape[0]), np.float32)
    s = np.zeros(1, np.float32)
    for t in range(xq.shape[0]):
        for r in range(w.shape[0]):
            fn(n_cols, s.ctypes.data, 0, w[r].ctypes.data, 0, xq[t].ctypes.data, 0, 1)
            out[t, r] = s[0]
    return out


def oracle_mul_mat(w: np.ndarray, x: np.ndarray, n_threads: int = 2) -> np.ndarray:
    """float32 [n_tok, n_out]: MUL_MAT of a ggml graph with Q5_K weight rows w and float32 activations x."""
    return oracle_mul_mat_graph(w, TYPE_Q5_K, x, n_threads)


def random_q5_K(rng: np.random.Generator, n_out: int, k: int) -> np.ndarray:
    """Random Q5_K weight bytes uint8 [n_out, k // 256 * 176]: random scales, codes and high bits, finite d, dmin."""
    nb = k // 256
    w = rng.integers(0, 256, (n_out, nb, Q5_K_BYTES), dtype=np.uint8)
    w[..., 0:2] = _f16_bytes(rng, (n_out, nb), 1e-4, 2e-2)
    w[..., 2:4] = _f16_bytes(rng, (n_out, nb), 1e-4, 2e-2)
    return w.reshape(n_out, nb * Q5_K_BYTES)


def quantize_q5_K_rough(x: np.ndarray) -> np.ndarray:
    """float32 [n, k] -> valid Q5_K bytes uint8 [n, k // 256 * 176] approximating x (a plain min/max fit, not
    ggml's search: enough for random test models, whose weights only need to be some valid Q5_K)."""
    n, k = x.shape
    b = np.asarray(x, np.float32).reshape(n * (k // 256), 8, 32)
    mn = np.maximum(-b.min(axis=2), 0)
    scale = np.maximum((b.max(axis=2) + mn) / 31, 1e-8)
    d = (scale.max(axis=1) / 63).astype(np.float16)
    dmin = np.maximum(mn.max(axis=1) / 63, 1e-8).astype(np.float16)
    sc = np.clip(np.rint(scale / d.astype(np.float32)[:, None]), 1, 63).astype(np.uint8)
    m = np.clip(np.rint(mn / dmin.astype(np.float32)[:, None]), 0, 63).astype(np.uint8)
    step = (d.astype(np.float32)[:, None] * sc)[..., None]
    off = (dmin.astype(np.float32)[:, None] * m)[..., None]
    q = np.clip(np.rint((b + off) / step), 0, 31).astype(np.uint8).reshape(-1, 256)
    out = np.zeros((b.shape[0], Q5_K_BYTES), np.uint8)
    out[:, 0:2] = d.reshape(-1, 1).view(np.uint8)
    out[:, 2:4] = dmin.reshape(-1, 1).view(np.uint8)
    out[:, 4:8] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    out[:, 8:12] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    out[:, 12:16] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    high = (q >> 4).reshape(-1, 8, 32)
    out[:, 16:48] = sum(high[:, i] << i for i in range(8))
    low = (q & 15).reshape(-1, 4, 2, 32)
    out[:, 48:] = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    return out.reshape(n, -1)


VEC_CASES = [(16, 256, 1), (12, 1024, 3), (8, 2048, 2), (10, 1536, 5)]
GRAPH_CASES = [(16, 1024, 1), (12, 768, 5), (16, 2048, 8), (20, 1536, 9), (8, 512, 31), (24, 256, 17)]


def main() -> None:
    """Draw the cases (seed 5), run the oracles and write q5_k.npz."""
    rng = np.random.default_rng(5)
    out: dict[str, np.ndarray] = {}
    for i, (n_out, k, n_tok) in enumerate(VEC_CASES):
        w, x = random_q5_K(rng, n_out, k), random_activations(rng, n_tok, k)
        out[f"vec/{i}/w"], out[f"vec/{i}/x"] = w, x
        out[f"vec/{i}/y"] = oracle_vec_dot(w, oracle_q8_K(x), k)
    for i, (n_out, k, n_tok) in enumerate(GRAPH_CASES):
        w, x = random_q5_K(rng, n_out, k), random_activations(rng, n_tok, k)
        out[f"graph/{i}/w"], out[f"graph/{i}/x"] = w, x
        out[f"graph/{i}/y"] = oracle_mul_mat(w, x)
    np.savez_compressed(HERE / "q5_k.npz", **out)
    print(f"wrote {HERE / 'q5_k.npz'}: {sum(a.nbytes for a in out.values())} bytes uncompressed")


if __name__ == "__main__":
    main()
