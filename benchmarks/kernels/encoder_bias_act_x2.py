"""Bias + activation over float16 rows, two rows a step: a variant of the encoder's four-column kernel
(`embedkit.kernels.cuda.encoder.bias_act4_kernel`, same parameters and grid) that issues both rows' loads
before either row's arithmetic, kept for comparison. On an H100 it timed 0.130 ms against the engine kernel's
0.141 at 32768 x 1536; checked against numpy under the CUDA simulator only, so the engine keeps its kernel.
`benchmarks/profile_encoder_stages.py` times it and `tests/test_cuda_encoder.py` checks it:

    encoder.bias_act(x, bias, act, out, stream, kernel4=bias_act4x2_kernel)
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.encoder import _act4


@cuda.jit
def bias_act4x2_kernel(x4, bias, has_bias, act, out4):
    """`bias_act4_kernel` taking rows r and r + gridDim.y together: both loads issue before either row's
    arithmetic, so each thread keeps two 8-byte loads in flight."""
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if c >= x4.shape[1]:
        return
    b0 = np.float32(bias[4 * c]) if has_bias else np.float32(0.0)
    b1 = np.float32(bias[4 * c + 1]) if has_bias else np.float32(0.0)
    b2 = np.float32(bias[4 * c + 2]) if has_bias else np.float32(0.0)
    b3 = np.float32(bias[4 * c + 3]) if has_bias else np.float32(0.0)
    n = x4.shape[0]
    step = cuda.gridDim.y
    for r in range(cuda.blockIdx.y, n, 2 * step):
        r2 = r + step
        w = x4[r, c]
        w2 = x4[r2, c] if r2 < n else w
        out4[r, c] = _act4(w, b0, b1, b2, b3, act)
        if r2 < n:
            out4[r2, c] = _act4(w2, b0, b1, b2, b3, act)
