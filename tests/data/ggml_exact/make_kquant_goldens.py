"""Goldens for the K-quant matmul paths of llama.cpp's CPU backend that are not the plain vec_dot.

Run (dev machine, needs llama-cpp-python 0.3.36's libggml and the two models in ~/.local/share/embedkit/models):
    .venv/bin/python tests/data/ggml_exact/make_kquant_goldens.py
Writes kquant.npz next to this file: random Q4_K / Q6_K weights (fixed seed), activations and the oracle's
float32 outputs for

- `repack/*`: the Q4_K repacked path (q4_K_8x8_q8_K). The oracle is ggml's own kernels
  (ggml_quantize_mat_q8_K_4x8 + ggml_gemm_q4_K_8x8_q8_K for rows in groups of four, quantize_row_q8_K +
  ggml_gemv_q4_K_8x8_q8_K for the rest) on the block_q4_Kx8 bytes, driven as repack.cpp's forward_mul_mat.
- `tiled/*`: MUL_MAT of a ggml graph (ggml_graph_compute_with_ctx) with a Q6_K or Q4_K weight in a plain
  context (not repacked) and >= 8 activation rows, which ggml sends through its tiled matmul.
- `model/*`: llama.cpp itself running Gemma 3 270M and Qwen2.5-Coder 0.5B (Q4_K_M) on the golden English
  prompt of tests/data/models (the settings of dump_llama_cpp_tensors.py): input and output rows of the
  MUL_MAT nodes of some Q4_K (repacked) and Q6_K (tiled, 32 / 31 rows) weights, batch and decode step.
  The weights are read from the model files at test time.

The functions here are also the live oracles of tests/test_ggml_exact_kquant_paths.py.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # ggml_ctypes.py is here; tests may load this file by path
from ggml_ctypes import (  # noqa: E402
    GGML_F32,
    GGMLTensor,
    InitParams,
    eval_golden_prompt,
    load_ggml,
    read_tensor,
    tensor_struct,
)

MODELS_DATA = HERE.parent / "models"
TYPE_F32, TYPE_Q4_K, TYPE_Q6_K = 0, 12, 14
Q4_K_BYTES, Q6_K_BYTES, Q8_K_BYTES, Q8_KX4_BYTES = 144, 210, 292, 1168


@functools.cache
def ggml_cpu() -> ctypes.CDLL:
    """llama-cpp-python's libggml-cpu (ggml_ctypes.load_ggml), with the repack kernels used here declared."""
    _, cpu = load_ggml()
    vp, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for name in ("quantize_row_q8_K", "ggml_quantize_mat_q8_K_4x8"):
        getattr(cpu, name).argtypes = [vp, vp, i64]
        getattr(cpu, name).restype = None
    for name in ("ggml_gemv_q4_K_8x8_q8_K", "ggml_gemm_q4_K_8x8_q8_K"):
        getattr(cpu, name).argtypes = [c_int, vp, ctypes.c_size_t, vp, vp, c_int, c_int]
        getattr(cpu, name).restype = None
    return cpu


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def oracle_q8_K_row(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_K of one float32 row: block_q8_K bytes uint8 [n_blocks, 292]."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.zeros((x.size // 256, Q8_K_BYTES), np.uint8)
    ggml_cpu().quantize_row_q8_K(_ptr(x), _ptr(out), x.size)
    return out


def oracle_q8_K_4x8(x4: np.ndarray) -> np.ndarray:
    """ggml_quantize_mat_q8_K_4x8 of four float32 rows [4, k]: block_q8_Kx4 bytes uint8 [n_blocks, 1168]."""
    x4 = np.ascontiguousarray(x4, np.float32)
    out = np.zeros((x4.shape[1] // 256, Q8_KX4_BYTES), np.uint8)
    ggml_cpu().ggml_quantize_mat_q8_K_4x8(_ptr(x4), _ptr(out), x4.shape[1])
    return out


def oracle_mul_mat_repack(w_x8: np.ndarray, n_out: int, x: np.ndarray) -> np.ndarray:
    """float32 [n_tok, n_out]: ggml's AVX2 gemm/gemv on the block_q4_Kx8 bytes w_x8, driven as forward_mul_mat."""
    cpu = ggml_cpu()
    x = np.ascontiguousarray(x, np.float32)
    n_tok, k = x.shape
    w_x8 = np.ascontiguousarray(w_x8, np.uint8)
    n4 = n_tok - n_tok % 4
    out = np.zeros((n_tok, n_out), np.float32)
    if n4:
        a = np.concatenate([oracle_q8_K_4x8(x[i:i + 4]) for i in range(0, n4, 4)])
        cpu.ggml_gemm_q4_K_8x8_q8_K(k, _ptr(out), n_out, _ptr(w_x8), _ptr(a), n4, n_out)
    for t in range(n4, n_tok):
        a = oracle_q8_K_row(x[t])
        row = np.zeros(n_out, np.float32)
        cpu.ggml_gemv_q4_K_8x8_q8_K(k, _ptr(row), n_out, _ptr(w_x8), _ptr(a), 1, n_out)
        out[t] = row
    return out


def oracle_mul_mat_graph(w: np.ndarray, ggml_type: int, x: np.ndarray, n_threads: int = 2) -> np.ndarray:
    """float32 [n_tok, n_out]: MUL_MAT of a ggml graph, weight w (uint8 [n_out, row_bytes]) of ggml_type, F32 x."""
    base, cpu = load_ggml()
    w = np.ascontiguousarray(w, np.uint8)
    x = np.ascontiguousarray(x, np.float32)
    n_out, (n_tok, k) = w.shape[0], x.shape
    # weights, activations, output, graph, and the work buffer (Q8_K rows + a 512 KiB tile slot per thread)
    mem = w.nbytes + 2 * x.nbytes + 4 * n_out * n_tok + ((n_threads + 4) << 20)
    ctx = base.ggml_init(InitParams(mem, None, False))
    try:
        tw = base.ggml_new_tensor_2d(ctx, ggml_type, k, n_out)
        tx = base.ggml_new_tensor_2d(ctx, TYPE_F32, k, n_tok)
        ctypes.memmove(base.ggml_get_data(tw), _ptr(w), w.nbytes)
        ctypes.memmove(base.ggml_get_data(tx), _ptr(x), x.nbytes)
        ty = base.ggml_mul_mat(ctx, tw, tx)
        graph = base.ggml_new_graph(ctx)
        base.ggml_build_forward_expand(graph, ty)
        if cpu.ggml_graph_compute_with_ctx(ctx, graph, n_threads) != 0:
            raise RuntimeError("ggml_graph_compute_with_ctx failed")
        out = np.empty((n_tok, n_out), np.float32)
        ctypes.memmove(_ptr(out), base.ggml_get_data(ty), out.nbytes)
        return out
    finally:
        base.ggml_free(ctx)


def _f16_bytes(rng: np.random.Generator, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    mag = np.exp(rng.uniform(np.log(lo), np.log(hi), shape)).astype(np.float16)
    return mag.view(np.uint8).reshape(shape + (2,))


def random_q4_K(rng: np.random.Generator, n_out: int, k: int) -> np.ndarray:
    """Random Q4_K weight bytes uint8 [n_out, k // 256 * 144]: random scales and codes, finite d and dmin."""
    nb = k // 256
    w = rng.integers(0, 256, (n_out, nb, Q4_K_BYTES), dtype=np.uint8)
    w[..., 0:2] = _f16_bytes(rng, (n_out, nb), 1e-4, 2e-2)
    w[..., 2:4] = _f16_bytes(rng, (n_out, nb), 1e-4, 2e-2)
    return w.reshape(n_out, nb * Q4_K_BYTES)


def random_q6_K(rng: np.random.Generator, n_out: int, k: int) -> np.ndarray:
    """Random Q6_K weight bytes uint8 [n_out, k // 256 * 210]: random codes and int8 scales, finite d."""
    nb = k // 256
    w = rng.integers(0, 256, (n_out, nb, Q6_K_BYTES), dtype=np.uint8)
    w[..., 208:210] = _f16_bytes(rng, (n_out, nb), 1e-5, 1e-3)
    return w.reshape(n_out, nb * Q6_K_BYTES)


def random_activations(rng: np.random.Generator, n_tok: int, k: int) -> np.ndarray:
    """float32 [n_tok, k]: mostly normal rows, some on a coarse grid (rounding ties, +/- max ties), some spiky."""
    x = rng.standard_normal((n_tok, k)).astype(np.float32)
    for t in range(n_tok):
        kind = t % 4
        if kind == 1:  # multiples of 1/4 in [-4, 4]: x*127/max hits .5 often, and +max and -max both occur
            x[t] = rng.integers(-16, 17, k) / np.float32(4)
        elif kind == 2:  # heavy tails, as in real activations
            x[t] *= np.exp(rng.standard_normal(k)).astype(np.float32) * 3
        elif kind == 3:
            x[t] *= np.float32(1e-3)
    return x


def dump_mul_mat_io(model_path: str, golden: str, weights: set[str], decode: bool = False) -> dict[str, np.ndarray]:
    """llama.cpp's MUL_MAT nodes whose weight is in `weights` on the golden's English prompt.

    Settings of dump_llama_cpp_tensors.py (ggml_ctypes.eval_golden_prompt: CPU, 2 threads, n_ctx 512, one
    batch). decode: record the last token's single-token step. Returns {weight + '/x': input rows
    [n_tok, k], weight + '/y': [n_tok, n_out]}.
    """
    saved: dict[str, np.ndarray] = {}

    def weight_of(t: GGMLTensor) -> str | None:
        if not t.src[0]:
            return None
        name = tensor_struct(t.src[0]).name.decode()
        return name if name in weights else None

    def on_tensor(t: GGMLTensor, ask: bool) -> bool:
        w = weight_of(t)
        if ask:
            return w is not None
        if w is not None and t.type == GGML_F32:
            x, y = read_tensor(tensor_struct(t.src[1])), read_tensor(t)
            saved[w + "/x"], saved[w + "/y"] = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        return True

    eval_golden_prompt(model_path, golden, on_tensor, decode)
    return saved


REPACK_CASES = [(16, 1024, 1), (16, 2048, 3), (8, 768, 4), (16, 1536, 9), (24, 256, 13), (8, 512, 32)]
TILED_CASES = [("q6_K", 16, 2048, 8), ("q6_K", 16, 1536, 9), ("q6_K", 24, 512, 31), ("q6_K", 20, 256, 17),
               ("q4_K", 12, 1024, 8), ("q4_K", 20, 768, 19)]
# (pytest fixture of the model, GGUF file stem, weight, path, decode step?, rows kept). Row subsets keep the
# file small; kept rows sit where they sat in the batch relative to the groups of four (Qwen's prompt has
# 31 tokens: rows 24..27 go through the gemm, 28..30 through the gemv).
GEMMA, QWEN = "gemma-3-270m-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m"
MODEL_CASES = [
    ("gemma_path", GEMMA, "blk.2.attn_output.weight", "repack", False, (0, 8)),
    ("gemma_path", GEMMA, "blk.2.attn_output.weight", "repack", True, (0, 1)),
    ("gemma_path", GEMMA, "blk.2.ffn_down.weight", "repack", False, (0, 4)),
    ("gemma_path", GEMMA, "blk.0.ffn_down.weight", "tiled", False, (0, 4)),
    ("qwen_path", QWEN, "blk.2.ffn_down.weight", "repack", False, (24, 31)),
    ("qwen_path", QWEN, "blk.2.ffn_down.weight", "repack", True, (0, 1)),
    ("qwen_path", QWEN, "blk.0.ffn_down.weight", "tiled", False, (27, 31)),
]


def repack_q4_K_8x8(w: np.ndarray) -> np.ndarray:
    """ggml's block_q4_Kx8 bytes (interleave 8) of a Q4_K weight: uint8 [n_out // 8, n_blocks * 1152].

    Group g holds rows 8g..8g+7; per super-block: the 8 d and 8 dmin halves, 96 bytes of scales and mins
    re-packed so that each 12 bytes hold one sub-block of all 8 rows, then the quants in 8-byte chunks
    taken from the rows in turn.
    """
    w = np.ascontiguousarray(w, dtype=np.uint8)
    n_out, row_bytes = w.shape
    if n_out % 8 or row_bytes % 144:
        raise ValueError(f"need n_out % 8 == 0 and whole Q4_K blocks, got {w.shape}")
    nb = row_bytes // 144
    blocks = w.reshape(n_out // 8, 8, nb, 144).transpose(0, 2, 1, 3)  # [g, b, row, 144]
    out = np.empty((n_out // 8, nb, 1152), np.uint8)
    out[:, :, 0:16] = blocks[..., 0:2].reshape(n_out // 8, nb, 16)
    out[:, :, 16:32] = blocks[..., 2:4].reshape(n_out // 8, nb, 16)
    sc = blocks[..., 4:16].astype(np.int32)
    # 6-bit scale/min of sub-block j for each row: [g, b, row, j]
    scale = np.empty(sc.shape[:3] + (8,), np.int32)
    mn = np.empty_like(scale)
    for j in range(8):
        if j < 4:
            scale[..., j] = sc[..., j] & 63
            mn[..., j] = sc[..., j + 4] & 63
        else:
            scale[..., j] = (sc[..., j + 4] & 0xF) | ((sc[..., j - 4] >> 6) << 4)
            mn[..., j] = (sc[..., j + 4] >> 4) | ((sc[..., j] >> 6) << 4)
    packed = np.empty(sc.shape[:2] + (96,), np.int32)
    for j in range(8):
        s, m = scale[..., j], mn[..., j]  # [g, b, row]
        o = 12 * j
        packed[..., o:o + 4] = (s[..., 0:4] & 63) | ((s[..., 4:8] & 48) << 2)
        packed[..., o + 4:o + 8] = (m[..., 0:4] & 63) | ((m[..., 4:8] & 48) << 2)
        packed[..., o + 8:o + 12] = (s[..., 4:8] & 15) | ((m[..., 4:8] & 15) << 4)
    out[:, :, 32:128] = packed.astype(np.uint8)
    qs = blocks[..., 16:144].reshape(n_out // 8, nb, 8, 16, 8)  # [g, b, row, chunk, 8]
    out[:, :, 128:] = qs.transpose(0, 1, 3, 2, 4).reshape(n_out // 8, nb, 1024)
    return out.reshape(n_out // 8, nb * 1152)


def make(path: Path = HERE / "kquant.npz", seed: int = 1234, model_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Draw the cases, run the oracles and save them to `path` (also returned); model_dir: the GGUF files."""
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {}
    for i, (n_out, k, n_tok) in enumerate(REPACK_CASES):
        w = random_q4_K(rng, n_out, k)
        x = random_activations(rng, n_tok, k)
        data[f"repack/{i}/w"], data[f"repack/{i}/x"] = w, x
        data[f"repack/{i}/y"] = oracle_mul_mat_repack(repack_q4_K_8x8(w), n_out, x)
    for i, (kind, n_out, k, n_tok) in enumerate(TILED_CASES):
        w = random_q6_K(rng, n_out, k) if kind == "q6_K" else random_q4_K(rng, n_out, k)
        x = random_activations(rng, n_tok, k)
        data[f"tiled/{i}/w"], data[f"tiled/{i}/x"] = w, x
        data[f"tiled/{i}/y"] = oracle_mul_mat_graph(w, TYPE_Q6_K if kind == "q6_K" else TYPE_Q4_K, x)
        data[f"tiled/{i}/kind"] = np.array(kind)
    if model_dir is not None:
        dumps: dict[tuple[str, bool], dict[str, np.ndarray]] = {}
        for i, (fixture, stem, weight, kind, decode, (r0, r1)) in enumerate(MODEL_CASES):
            if (stem, decode) not in dumps:
                wanted = {c[2] for c in MODEL_CASES if c[1] == stem}
                dumps[stem, decode] = dump_mul_mat_io(str(model_dir / f"{stem}.gguf"),
                                                      str(MODELS_DATA / f"{stem}.logits.npz"), wanted, decode)
            io = dumps[stem, decode]
            data[f"model/{i}/x"], data[f"model/{i}/y"] = io[weight + "/x"][r0:r1], io[weight + "/y"][r0:r1]
            data[f"model/{i}/info"] = np.array([fixture, weight, kind])
    np.savez_compressed(path, **data)
    return data


if __name__ == "__main__":
    saved = make(model_dir=Path.home() / ".local/share/embedkit/models")
    print(f"{HERE / 'kquant.npz'}: {len(saved)} arrays, {(HERE / 'kquant.npz').stat().st_size} bytes")
