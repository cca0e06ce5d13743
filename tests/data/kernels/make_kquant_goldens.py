"""Make the Q4_K / Q6_K quantizer goldens with llama.cpp's reference quantizers.

Run on the dev machine (needs llama-cpp-python, whose libggml-base exports quantize_row_q{4,6}_K_ref):
    .venv/bin/python tests/data/kernels/make_kquant_goldens.py
Writes kquant_goldens.npz: `x` float32 [16, 512] (normal rows, then Student-t(3) rows for heavy tails),
`q4_k` and `q6_k` uint8 [16, row_bytes]: the bytes llama.cpp produces for x.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp
import numpy as np

LIB = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"


def main() -> None:
    lib = ctypes.CDLL(str(LIB))
    rng = np.random.default_rng(20261125)
    x = np.concatenate([rng.standard_normal((8, 512)), rng.standard_t(3, (8, 512)) * 0.1]).astype(np.float32)
    x[3, :256] = 0.0  # an all-zero super-block
    out = {"x": x}
    for name, fn, type_size in (("q4_k", lib.quantize_row_q4_K_ref, 144), ("q6_k", lib.quantize_row_q6_K_ref, 210)):
        q = np.zeros((x.shape[0], x.shape[1] // 256 * type_size), dtype=np.uint8)
        fn(x.ctypes.data_as(ctypes.c_void_p), q.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size))
        out[name] = q
    np.savez_compressed(Path(__file__).with_name("kquant_goldens.npz"), **out)


if __name__ == "__main__":
    main()
