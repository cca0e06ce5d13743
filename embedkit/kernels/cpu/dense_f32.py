"""Float32 x @ W.T + b for an encoder's activations, split over the kernel threads by output columns.

Why columns, not rows: OpenBLAS packs the whole weight matrix on every call, so row blocks pack it once per
block (four blocks a thread in `run_blocks`): for the few hundred tokens of a server's batch that copy took
about as long as the product (`sgemm_incopy` ~30% of a MiniLM forward in perf). One block of columns a thread
packs each column of W once, and each block writes its own columns of the output (BLAS takes the strided view).
The weight comes transposed ([n_in, n_out], C order, copied once at load): BLAS packs that layout faster than a
transposed view of the GGUF rows (5-15% on a few dozen tokens, single-threaded microbenchmark).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from embedkit.kernels.cpu.row_blocks import run_blocks
from embedkit.kernels.cpu.threads import get_num_threads

# Columns per block are a multiple of this (whole AVX-512 vectors of float32).
_COL_ALIGN = 16
# Fewest multiply-adds a thread is worth waking for.
_MIN_BLOCK_MACS = 1 << 18


def matmul_f32_cols(x: np.ndarray, wt: np.ndarray, bias: np.ndarray | None,
                    epilogue: Callable[[np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
    """x [n, k] float32 @ wt (float32 [k, m], C order: a weight's transpose) + bias [m] -> [n, m], one block of
    output columns per
    kernel thread (BLAS held to one thread inside each). `epilogue(block, bias_block)`, when given, replaces the
    bias add: it runs on each block of columns right after its product (a fused bias + activation)."""
    n, m = x.shape[0], wt.shape[1]
    y = np.empty((n, m), dtype=np.float32)
    n_blocks = max(1, min(get_num_threads(), m // _COL_ALIGN, (n * m * x.shape[1]) // _MIN_BLOCK_MACS))
    cuts = (np.linspace(0, m // _COL_ALIGN, n_blocks + 1).round().astype(np.int64) * _COL_ALIGN).tolist()
    cuts[-1] = m

    def block(i: int, j: int) -> None:
        for c0, c1 in zip(cuts[i:j], cuts[i + 1 : j + 1], strict=True):
            out = y[:, c0:c1]
            np.matmul(x, wt[:, c0:c1], out=out)
            if epilogue is not None:
                epilogue(out, bias[c0:c1])
            elif bias is not None:
                out += bias[c0:c1]

    run_blocks(block, n_blocks, blas=True)
    return y
