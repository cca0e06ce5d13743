"""Attention for rows of several sequences in one launch (continuous batching).

The caches of all sequences of a layer sit in one array [n_slots, n_ctx, kv_heads, head_dim]; row t of the
batch belongs to slot slots[t] at position positions[t], so its keys are that slot's cache rows up to its
position (causal; a sliding window of w keeps positions > p - w). One block of 8 warps per (row, head),
the same online softmax as `attention._attend`; the set of live sequences only changes the two small int
arrays, never the launch, so a recorded CUDA graph replays for any sequences at any positions.
The kernels sit in attention.py beside `_attend` (numba's simulator only swaps in its fake `cuda` module
for device functions of the launching kernel's own module); their launchers are here.
"""

from __future__ import annotations

import math

import numpy as np

from embedkit.kernels.cuda.attention import MAX_HEAD_DIM, WARPS, attention_rows_kernel, kv_store_rows_kernel
from embedkit.kernels.cuda.launch import fast


def kv_store_rows(k_new, v_new, k_all, v_all, slots, positions, stream=0) -> None:
    """Write each row's key/value into its slot's cache at its position."""
    n, kvh, hd = k_new.shape
    threads = 128
    fast(kv_store_rows_kernel)[(max(1, math.ceil(kvh * hd / threads)), n), threads, stream](
        k_new, v_new, k_all, v_all, slots, positions
    )


def attention_rows(
    q, k_all, v_all, slots, positions, window: int, scale: float, softcap: float, dummy_mask, out, stream=0
) -> None:
    """out [n, heads*hd]: row t attends over slot slots[t]'s cache positions <= positions[t] (causal)."""
    n, heads, hd = q.shape
    if hd > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {hd} > {MAX_HEAD_DIM}")
    fast(attention_rows_kernel)[(n, heads), WARPS * 32, stream](
        q, k_all, v_all, slots, positions, np.int32(window), np.float32(scale), np.float32(softcap), dummy_mask, out
    )
