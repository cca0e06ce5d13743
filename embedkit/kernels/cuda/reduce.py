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
    lane = tid % 32
    if lane == 0:
        scratch[tid // 32] = v
    cuda.syncthreads()
    # every warp reduces the per-warp partials itself (no serial loop, no second broadcast)
    total = warp_sum(scratch[lane] if lane < cuda.blockDim.x // 32 else np.float32(0.0))
    cuda.syncthreads()
    return total


@cuda.jit(device=True, inline=True)
def block_max(v, scratch):
    """Max of `v` over the block, returned to every thread; `scratch` is shared float32[32]."""
    v = warp_max(v)
    tid = cuda.threadIdx.x
    lane = tid % 32
    if lane == 0:
        scratch[tid // 32] = v
    cuda.syncthreads()
    total = warp_max(scratch[lane] if lane < cuda.blockDim.x // 32 else np.float32(-np.inf))
    cuda.syncthreads()
    return total
