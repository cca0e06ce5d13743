"""Goldens for embedkit.kernels.cpu.ggml_exact.quantize / dots, from llama.cpp's own x86 library.

Run with the dev venv (needs llama_cpp): `python tests/data/ggml_exact/make_quant_goldens.py`.
It draws random activations and weights (fixed seed), runs ggml's quantize_row_q8_0/q8_1/q8_K,
ggml_vec_dot_* and llamafile_sgemm through ctypes, and writes quant.npz next to this file.
The `Oracle` class is also used by tests/test_ggml_exact_quant.py for live checks.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # ggml_ctypes.py is here; tests load this file by path
from ggml_ctypes import ComputeParams, InitParams, lib_dir, load_ggml  # noqa: E402

OUT = HERE / "quant.npz"

# ggml type id -> (block elements, block bytes, vec_dot symbol, activation type id)
WEIGHT_TYPES = {
    8: (32, 34, "ggml_vec_dot_q8_0_q8_0", 8),  # Q8_0
    6: (32, 22, "ggml_vec_dot_q5_0_q8_0", 8),  # Q5_0
    3: (32, 20, "ggml_vec_dot_q4_1_q8_1", 9),  # Q4_1
    14: (256, 210, "ggml_vec_dot_q6_K_q8_K", 15),  # Q6_K
    12: (256, 144, "ggml_vec_dot_q4_K_q8_K", 15),  # Q4_K
}
ACT_TYPES = {8: (32, 34, "quantize_row_q8_0"), 9: (32, 36, "quantize_row_q8_1"), 15: (256, 292, "quantize_row_q8_K")}


class Oracle:
    """ggml's x86 kernels (libggml-cpu.so of llama-cpp-python) called through ctypes."""

    def __init__(self, directory: Path) -> None:
        self.base, self.lib = load_ggml(directory)
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        for _, _, name in ACT_TYPES.values():
            getattr(self.lib, name).argtypes = [vp, vp, i64]
        for _, _, name, _ in WEIGHT_TYPES.values():
            fn = getattr(self.lib, name)
            fn.argtypes = [ctypes.c_int, vp, ctypes.c_size_t, vp, ctypes.c_size_t, vp, ctypes.c_size_t, ctypes.c_int]
        fn = self.lib.llamafile_sgemm
        fn.argtypes = [ctypes.POINTER(ComputeParams), i64, i64, i64, vp, i64, vp, i64, vp, i64] + [ctypes.c_int] * 3
        fn.restype = ctypes.c_bool

    def quantize(self, act_type: int, x: np.ndarray) -> np.ndarray:
        """ggml's from_float for act_type (8, 9, 15) on each row of float32 x."""
        block, size, name = ACT_TYPES[act_type]
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros((x.shape[0], x.shape[1] // block * size), np.uint8)
        for r in range(x.shape[0]):
            getattr(self.lib, name)(x[r].ctypes.data, out[r].ctypes.data, x.shape[1])
        return out

    def vec_dot(self, w_type: int, w: np.ndarray, xq: np.ndarray, n_cols: int) -> np.ndarray:
        """out[t, r] = ggml_vec_dot_<w_type>(w[r], xq[t]): float32 [n_tok, n_out]."""
        fn = getattr(self.lib, WEIGHT_TYPES[w_type][2])
        w = np.ascontiguousarray(w)
        xq = np.ascontiguousarray(xq)
        out = np.zeros((xq.shape[0], w.shape[0]), np.float32)
        s = ctypes.c_float()
        for t in range(xq.shape[0]):
            for r in range(w.shape[0]):
                fn(n_cols, ctypes.addressof(s), 0, w[r].ctypes.data, 0, xq[t].ctypes.data, 0, 1)
                out[t, r] = s.value
        return out

    def sgemm(self, w_type: int, w: np.ndarray, xq: np.ndarray, n_cols: int, nth: int = 1) -> np.ndarray | None:
        """llamafile_sgemm for weights w [n_out, bytes] x activations xq [n_tok, bytes]; None if it declines."""
        block, wsize, _, act = WEIGHT_TYPES[w_type]
        asize = ACT_TYPES[act][1]
        w = np.ascontiguousarray(w)
        xq = np.ascontiguousarray(xq)
        m, n, k = w.shape[0], xq.shape[0], n_cols // block
        out = np.zeros((n, m), np.float32)
        for ith in range(nth):
            params = ComputeParams(ith, nth, 0, None, None, False)
            ok = self.lib.llamafile_sgemm(
                ctypes.byref(params), m, n, k, w.ctypes.data, w.shape[1] // wsize,
                xq.ctypes.data, xq.shape[1] // asize, out.ctypes.data, m, w_type, act, 0,
            )
            if not ok:
                return None
        return out


    def mul_mat(self, w_type: int, w: np.ndarray, x: np.ndarray, n_cols: int, n_threads: int = 1) -> np.ndarray:
        """A whole ggml MUL_MAT op (float32 x [n_tok, n_cols] times weights w) in a plain ggml context, as
        llama.cpp's CPU backend runs it for weights outside a repack buffer: float32 [n_tok, n_out]."""
        base = self.base
        w = np.ascontiguousarray(w)
        x = np.ascontiguousarray(x, dtype=np.float32)
        size = w.nbytes + 4 * x.size + 4 * w.shape[0] * x.shape[0] + 2 * x.nbytes + (64 << 20)
        ctx = base.ggml_init(InitParams(size, None, False))
        try:
            a = base.ggml_new_tensor_2d(ctx, w_type, n_cols, w.shape[0])
            b = base.ggml_new_tensor_2d(ctx, 0, n_cols, x.shape[0])
            ctypes.memmove(base.ggml_get_data(a), w.ctypes.data, w.nbytes)
            ctypes.memmove(base.ggml_get_data(b), x.ctypes.data, x.nbytes)
            c = base.ggml_mul_mat(ctx, a, b)
            graph = base.ggml_new_graph(ctx)
            base.ggml_build_forward_expand(graph, c)
            self.lib.ggml_graph_compute_with_ctx(ctx, graph, n_threads)
            out = np.empty((x.shape[0], w.shape[0]), np.float32)
            ctypes.memmove(out.ctypes.data, base.ggml_get_data(c), out.nbytes)
        finally:
            base.ggml_free(ctx)
        return out


def random_weights(rng: np.random.Generator, w_type: int, n_out: int, n_cols: int) -> np.ndarray:
    """Random but valid weight rows: random quant bits, sane fp16 scales (no inf/nan)."""
    block, size = WEIGHT_TYPES[w_type][:2]
    nb = n_cols // block
    w = rng.integers(0, 256, size=(n_out, nb, size), dtype=np.uint8)

    def put_f16(offset: int, lo: float, hi: float) -> None:
        v = (rng.uniform(lo, hi, size=(n_out, nb)) * rng.choice([-1.0, 1.0], size=(n_out, nb))).astype(np.float16)
        w[:, :, offset:offset + 2] = v.view(np.uint8).reshape(n_out, nb, 2)

    if w_type in (8, 6):  # d first
        put_f16(0, 1e-4, 0.05)
    elif w_type == 3:  # d, m
        put_f16(0, 1e-4, 0.05)
        put_f16(2, 1e-4, 0.5)
    elif w_type == 12:  # d, dmin (non-negative in real files, sign kept random here)
        put_f16(0, 1e-5, 0.01)
        put_f16(2, 1e-5, 0.01)
    elif w_type == 14:  # d last
        put_f16(208, 1e-5, 0.01)
    return w.reshape(n_out, nb * size)


def random_activations(rng: np.random.Generator, n_tok: int, n_cols: int) -> np.ndarray:
    """Activations of mixed scale, with a share of values on quantization ties and exact zeros."""
    x = rng.standard_normal((n_tok, n_cols)).astype(np.float32) * rng.choice([0.01, 1.0, 30.0], size=(n_tok, 1))
    x = x.astype(np.float32)
    # values on x.5 grid points relative to a block max of 127 make round-half ties likely
    tied = rng.random(x.shape) < 0.15
    grid = (rng.integers(-254, 255, size=x.shape) / 2.0).astype(np.float32)
    x = np.where(tied, grid, x).astype(np.float32)
    x[:, ::32] = np.where(rng.random(n_tok) < 0.5, 127.0, -127.0)[:, None].astype(np.float32)
    x[rng.random(x.shape) < 0.02] = 0.0
    return x


# (n_cols, n_out, n_tok): model widths; n_out off multiples of 4/16 and n_tok 2..7 reach all of tinyBLAS's
# tile shapes; n_tok >= 8 takes the tiled K-quant path in ggml's MUL_MAT.
SHAPES = [
    (640, 24, 2),
    (896, 13, 3),
    (1024, 8, 1),
    (2048, 8, 5),
    (576, 17, 4),
    (1536, 9, 2),
    (1024, 16, 9),
    (256, 21, 12),
    (2048, 6, 8),
]


def golden_data(oracle: Oracle, seed: int = 20240611) -> dict[str, np.ndarray]:
    """Inputs and oracle outputs for SHAPES: x{i}, q{act}_{i}, w{i}_{type}, vec_dot vd{i}_{type},
    whole MUL_MAT op mm{i}_{type}, llamafile_sgemm sg{i}_{type} (Q8_0/Q5_0, n_tok >= 2)."""
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {}
    for i, (n_cols, n_out, n_tok) in enumerate(SHAPES):
        x = random_activations(rng, n_tok, n_cols)
        if i == 2:  # a far smaller and an all-zero block, to reach Q8_K's zero-block branch
            x[0, :256] *= np.float32(1e-6)
            x[0, 256:512] = 0.0
        data[f"x{i}"] = x
        for act, (block, _, _) in ACT_TYPES.items():
            if n_cols % block == 0:
                data[f"q{act}_{i}"] = oracle.quantize(act, x)
        for w_type, (block, _, _, act) in WEIGHT_TYPES.items():
            if n_cols % block:
                continue
            w = random_weights(rng, w_type, n_out, n_cols)
            data[f"w{i}_{w_type}"] = w
            data[f"vd{i}_{w_type}"] = oracle.vec_dot(w_type, w, data[f"q{act}_{i}"], n_cols)
            data[f"mm{i}_{w_type}"] = oracle.mul_mat(w_type, w, x, n_cols, n_threads=2)
            if w_type in (8, 6) and n_tok >= 2:
                data[f"sg{i}_{w_type}"] = oracle.sgemm(w_type, w, data[f"q{act}_{i}"], n_cols, nth=3)
    return data


def main() -> None:
    d = lib_dir()
    if d is None:
        raise SystemExit("llama_cpp is not installed")
    if any(k in os.environ for k in ("GGML_CPU_TILED_MM", "GGML_CPU_TILED_MM_FORCE")):
        raise SystemExit("unset GGML_CPU_TILED_MM*: the goldens are ggml's default kernel choice")
    np.savez_compressed(OUT, **golden_data(Oracle(d)))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
