"""Goldens for llama.cpp's Q4_0 matmuls on x86 AVX2 (llama-cpp-python 0.3.36's libggml-cpu as the oracle).

Run (dev machine, needs llama-cpp-python):
    .venv/bin/python tests/data/ggml_exact/make_q4_0_goldens.py
Writes q4_0.npz next to this file: random Q4_0 weights (fixed seed), float32 activations and the oracle's
float32 outputs for

- `repack/*` (n_out % 8 == 0): ggml's repacked kernels (q4_0_8x8_q8_0) on the block_q4_0x8 bytes built
  here, driven as repack.cpp's forward_mul_mat: ggml_quantize_mat_q8_0_4x8 + ggml_gemm_q4_0_8x8_q8_0 for
  activation rows in groups of four, quantize_row_q8_0 + ggml_gemv_q4_0_8x8_q8_0 for the rest.
- `plain/*` (any n_out): MUL_MAT of a ggml graph with the weight in a plain context (not repacked), which
  runs llamafile_sgemm's tinyBLAS_Q0_AVX from 2 rows on and ggml_vec_dot_q4_0_q8_0 otherwise; also the
  vec_dot itself per output (`plain/*/vd`).
- `model/*`: llama.cpp's all-position logits (Llama(logits_all=True, n_ctx=512, n_threads=2)) for random
  Q4_0 models written by embedkit.testing.random_models.write_random_model (MODEL_CASES; the test writes
  the same file again and checks its sha256). Their matrices are repacked except where n_out % 8 != 0
  (the 324-row output head of the second case: tinyBLAS for the prompt, vec_dot for one token).

The functions here are also the live oracles of tests/test_ggml_exact_q4_0.py.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # ggml_ctypes.py and make_kquant_goldens.py are here
from ggml_ctypes import load_ggml  # noqa: E402
from make_kquant_goldens import oracle_mul_mat_graph, random_activations  # noqa: E402

TYPE_Q4_0 = 2
Q4_0_BYTES, Q8_0_BYTES, Q8_0X4_BYTES, Q4_0X8_BYTES = 18, 34, 136, 144


@functools.cache
def ggml_cpu() -> ctypes.CDLL:
    """llama-cpp-python's libggml-cpu (ggml_ctypes.load_ggml) with the Q4_0 kernels used here declared."""
    _, cpu = load_ggml()
    vp, i64, c_int, size_t = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_size_t
    for name in ("quantize_row_q8_0", "ggml_quantize_mat_q8_0_4x8"):
        getattr(cpu, name).argtypes = [vp, vp, i64]
        getattr(cpu, name).restype = None
    for name in ("ggml_gemv_q4_0_8x8_q8_0", "ggml_gemm_q4_0_8x8_q8_0"):
        getattr(cpu, name).argtypes = [c_int, vp, size_t, vp, vp, c_int, c_int]
        getattr(cpu, name).restype = None
    cpu.ggml_vec_dot_q4_0_q8_0.argtypes = [c_int, vp, size_t, vp, size_t, vp, size_t, c_int]
    cpu.ggml_vec_dot_q4_0_q8_0.restype = None
    return cpu


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def oracle_q8_0_rows(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_0 of each float32 row of x: uint8 [n_tok, k // 32 * 34]."""
    x = np.ascontiguousarray(x, np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // 32 * Q8_0_BYTES), np.uint8)
    for t in range(x.shape[0]):
        ggml_cpu().quantize_row_q8_0(_ptr(x[t]), _ptr(out[t]), x.shape[1])
    return out


def oracle_q8_0_4x8(x4: np.ndarray) -> np.ndarray:
    """ggml_quantize_mat_q8_0_4x8 of four float32 rows [4, k]: block_q8_0x4 bytes uint8 [k // 32, 136]."""
    x4 = np.ascontiguousarray(x4, np.float32)
    out = np.zeros((x4.shape[1] // 32, Q8_0X4_BYTES), np.uint8)
    ggml_cpu().ggml_quantize_mat_q8_0_4x8(_ptr(x4), _ptr(out), x4.shape[1])
    return out


def interleave_q8_0_4x8(xq4: np.ndarray) -> np.ndarray:
    """block_q8_0x4 bytes [nb, 136] of four quantize_row_q8_0 rows [4, nb * 34]: the 4 d, then 8-byte chunks
    of the rows in turn."""
    nb = xq4.shape[1] // Q8_0_BYTES
    blocks = xq4.reshape(4, nb, Q8_0_BYTES).transpose(1, 0, 2)  # [b, row, 34]
    out = np.empty((nb, Q8_0X4_BYTES), np.uint8)
    out[:, :8] = blocks[:, :, :2].reshape(nb, 8)
    out[:, 8:] = blocks[:, :, 2:].reshape(nb, 4, 4, 8).transpose(0, 2, 1, 3).reshape(nb, 128)
    return out


def repack_q4_0_8x8(w: np.ndarray) -> np.ndarray:
    """ggml's block_q4_0x8 bytes (interleave 8) of a Q4_0 weight: uint8 [n_out // 8, n_blocks * 144].

    Group g holds rows 8g..8g+7; per block: the 8 d halves, then 16 chunks of 8 code bytes, chunk i from
    row i % 8 at byte offset 8 * (i // 8), each byte XOR 0x88.
    """
    w = np.ascontiguousarray(w, np.uint8)
    n_out, row_bytes = w.shape
    if n_out % 8 or row_bytes % Q4_0_BYTES:
        raise ValueError(f"need n_out % 8 == 0 and whole Q4_0 blocks, got {w.shape}")
    nb = row_bytes // Q4_0_BYTES
    blocks = w.reshape(n_out // 8, 8, nb, Q4_0_BYTES).transpose(0, 2, 1, 3)  # [g, b, row, 18]
    out = np.empty((n_out // 8, nb, Q4_0X8_BYTES), np.uint8)
    out[:, :, :16] = blocks[..., :2].reshape(n_out // 8, nb, 16)
    qs = blocks[..., 2:].reshape(n_out // 8, nb, 8, 2, 8) ^ np.uint8(0x88)  # [g, b, row, half, 8]
    out[:, :, 16:] = qs.transpose(0, 1, 3, 2, 4).reshape(n_out // 8, nb, 128)
    return out.reshape(n_out // 8, nb * Q4_0X8_BYTES)


def oracle_mul_mat_repack(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 [n_tok, n_out]: ggml's AVX2 gemm/gemv on repack_q4_0_8x8(w), driven as forward_mul_mat."""
    cpu = ggml_cpu()
    w_x8 = repack_q4_0_8x8(w)
    x = np.ascontiguousarray(x, np.float32)
    n_tok, k = x.shape
    n_out = w.shape[0]
    n4 = n_tok - n_tok % 4
    out = np.zeros((n_tok, n_out), np.float32)
    if n4:
        a = np.concatenate([oracle_q8_0_4x8(x[i:i + 4]) for i in range(0, n4, 4)])
        cpu.ggml_gemm_q4_0_8x8_q8_0(k, _ptr(out), n_out, _ptr(w_x8), _ptr(a), n4, n_out)
    for t in range(n4, n_tok):
        a = oracle_q8_0_rows(x[t:t + 1])
        row = np.zeros(n_out, np.float32)
        cpu.ggml_gemv_q4_0_8x8_q8_0(k, _ptr(row), n_out, _ptr(w_x8), _ptr(a), 1, n_out)
        out[t] = row
    return out


def oracle_vec_dot(w: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    """out[t, r] = ggml_vec_dot_q4_0_q8_0(w[r], xq[t]): float32 [n_tok, n_out]."""
    cpu = ggml_cpu()
    w, xq = np.ascontiguousarray(w, np.uint8), np.ascontiguousarray(xq, np.uint8)
    out = np.zeros((xq.shape[0], w.shape[0]), np.float32)
    s = ctypes.c_float()
    for t in range(xq.shape[0]):
        for r in range(w.shape[0]):
            cpu.ggml_vec_dot_q4_0_q8_0(k, ctypes.addressof(s), 0, _ptr(w[r]), 0, _ptr(xq[t]), 0, 1)
            out[t, r] = s.value
    return out


def oracle_mul_mat_plain(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 [n_tok, n_out]: MUL_MAT of a ggml graph with the Q4_0 weight in a plain (not repacked) context."""
    return oracle_mul_mat_graph(w, TYPE_Q4_0, x)


def random_q4_0(rng: np.random.Generator, n_out: int, k: int) -> np.ndarray:
    """Random Q4_0 weight bytes uint8 [n_out, k // 32 * 18]: random codes, finite d of either sign."""
    nb = k // 32
    w = rng.integers(0, 256, (n_out, nb, Q4_0_BYTES), dtype=np.uint8)
    d = np.exp(rng.uniform(np.log(1e-4), np.log(5e-2), (n_out, nb))) * rng.choice([-1.0, 1.0], (n_out, nb))
    w[..., :2] = d.astype(np.float16).view(np.uint8).reshape(n_out, nb, 2)
    return w.reshape(n_out, nb * Q4_0_BYTES)


# (n_out, k, n_tok): model widths; n_tok mixes gemm groups of four and gemv leftovers
REPACK_CASES = [(16, 1024, 1), (16, 2048, 3), (8, 640, 4), (24, 896, 5), (16, 1536, 9), (8, 576, 13), (16, 256, 32)]
# n_out off multiples of 8 (the shapes llama.cpp does not repack) and on them (plain contexts do not repack)
PLAIN_CASES = [(13, 640, 1), (12, 896, 2), (17, 1024, 3), (9, 2048, 5), (21, 576, 7), (6, 1536, 12), (16, 256, 9)]


# (arch, shape overrides of the "tiny" shape, seed, prompt length)
MODEL_CASES = [("llama", {}, 3, 13), ("qwen2", {"n_vocab": 324}, 5, 11), ("gemma3", {}, 7, 6)]


def model_prompt(n_tokens: int) -> np.ndarray:
    """The token ids the `model/*` cases are evaluated on (the first n_tokens of a fixed draw)."""
    return np.random.default_rng(99).integers(3, 320, size=16).astype(np.int32)[:n_tokens]


def write_case_model(path: Path, case: int) -> Path:
    """Write MODEL_CASES[case]'s random Q4_0 GGUF to path."""
    from embedkit.testing.random_models import SHAPES, write_random_model

    arch, extra, seed, _ = MODEL_CASES[case]
    return write_random_model(path, arch, {**SHAPES["tiny"], **extra}, "Q4_0", seed=seed)


def oracle_model_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    """llama.cpp's all-position logits float32 [len(ids), n_vocab] for the GGUF at path."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), logits_all=True, n_ctx=512, n_threads=2, verbose=False)
    llm.eval([int(i) for i in ids])
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def make(path: Path = HERE / "q4_0.npz", seed: int = 4040) -> dict[str, np.ndarray]:
    """Draw the cases, run the oracles and save them to `path` (also returned)."""
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {}
    for i, (n_out, k, n_tok) in enumerate(REPACK_CASES):
        w, x = random_q4_0(rng, n_out, k), random_activations(rng, n_tok, k)
        data[f"repack/{i}/w"], data[f"repack/{i}/x"] = w, x
        data[f"repack/{i}/y"] = oracle_mul_mat_repack(w, x)
    for i, (n_out, k, n_tok) in enumerate(PLAIN_CASES):
        w, x = random_q4_0(rng, n_out, k), random_activations(rng, n_tok, k)
        data[f"plain/{i}/w"], data[f"plain/{i}/x"] = w, x
        data[f"plain/{i}/y"] = oracle_mul_mat_plain(w, x)
        data[f"plain/{i}/vd"] = oracle_vec_dot(w, oracle_q8_0_rows(x), k)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (_, _, _, n_tok) in enumerate(MODEL_CASES):
            model = write_case_model(Path(tmp) / f"case{i}.gguf", i)
            data[f"model/{i}/logits"] = oracle_model_logits(model, model_prompt(n_tok))
            data[f"model/{i}/sha256"] = np.array(hashlib.sha256(model.read_bytes()).hexdigest())
    np.savez_compressed(path, **data)
    return data


if __name__ == "__main__":
    saved = make()
    print(f"{HERE / 'q4_0.npz'}: {len(saved)} arrays, {(HERE / 'q4_0.npz').stat().st_size} bytes")
