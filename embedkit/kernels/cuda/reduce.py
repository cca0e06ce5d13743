"""Block-wide reductions for one-dimensional blocks (at most 32 warps)."""

from __future__ import annotations

import numpy as np
from numba import cuda

from embedkit.kernels.cuda.intrinsics import warp_max, warp_sum


@cuda.jit(device=True, inline=True)
def block_sum(v, scratch):
    """Sum of `v` over the block, returned to every thread; `scratch` is shared float32[32]."""
    v = warp_sum(v)
    tid = cuda.threadIdx.x
    if tid % 32 == 0:
        scratch[tid // 32] = v
    cuda.syncthreads()
    total = np.float32(0.0)
    for w in range(cuda.blockDim.x // 32):
        total += scratch[w]
    cuda.syncthreads()
    return total


@cuda.jit(device=True, inline=True)
def block_max(v, scratch):
    """Max of `v` over the block, returned to every thread; `scratch` is shared float32[32]."""
    v = warp_max(v)
    tid = cuda.threadIdx.x
    if tid % 32 == 0:
        scratch[tid // 32] = v
    cuda.syncthreads()
    total = scratch[0]
    for w in range(1, cuda.blockDim.x // 32):
        total = max(total, scratch[w])
    cuda.syncthreads()
    return total
