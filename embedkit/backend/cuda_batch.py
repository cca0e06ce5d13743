"""The CUDA backend's ops for rows of several sequences in one forward (continuous batching).

Mixed into `CUDABackend`. The KV caches of a layer's slots are allocated together ([n_slots, n_ctx,
kv_heads, head_dim], each slot's `KVCache` a view of its part), so a batch whose rows belong to different
sequences stores its keys/values and attends in two launches whatever the sequences and their positions:
the slot and position of each row are per-step inputs (device int32 arrays refreshed before a replay), so
a step recorded as a CUDA graph for B rows replays for any B live sequences (one graph per row count, see
`BATCH_GRAPHS` in cuda.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedkit.backend.base import Array, KVCache


class CUDASeqOps:
    """`kv_cache_slots`, `concat_rows`, `gather_rows` and the one-launch `attention_seqs` of `CUDABackend`."""

    def kv_cache_slots(self, n_slots: int, n_ctx: int, n_kv_heads: int, head_dim: int) -> list[KVCache]:
        """One [n_slots, n_ctx, kv_heads, hd] allocation per K and V; slot s's cache is its s-th part."""
        k_all = self._empty((n_slots, n_ctx, n_kv_heads, head_dim))
        v_all = self._empty((n_slots, n_ctx, n_kv_heads, head_dim))
        return [
            KVCache(n_ctx, n_kv_heads, head_dim, k_all[s], v_all[s], "cuda", group=(k_all, v_all, s))
            for s in range(n_slots)
        ]

    def concat_rows(self, parts: Sequence[Array]) -> Array:
        """Device-to-device copies of each part into one new array."""
        n = sum(int(p.shape[0]) for p in parts)
        key = ("concat_rows", tuple(tuple(p.shape) for p in parts))

        def build():
            out = self._empty((n, *parts[0].shape[1:]))

            def fn(s):
                r = 0
                for p in parts:
                    m = int(p.shape[0])
                    out[r : r + m].copy_to_device(p, stream=s)
                    r += m

            return out, fn

        return self.steps.op(key, n, build)

    def gather_rows(self, x: Array, idx: np.ndarray) -> Array:
        """Rows idx of a 2-D array (one copy each)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return self.concat_rows([self.rows(x, int(i), int(i) + 1) for i in idx])

    def _attention_seqs_fused(self, q, caches, k_new, v_new, spans, scale, causal, window, softcap):
        """Caches that share an allocation (`kv_cache_slots`): store and attend in one launch each, whatever
        the spans, so a recorded step does not depend on which slots its rows belong to (a one-row step
        recorded for slot 1 and replayed for slot 3 must not write slot 1's cache). Caches allocated apart
        (a one-sequence state): None (`Backend.attention_seqs` runs `attention` per span)."""
        from embedkit.kernels.cuda import attention_rows

        group = caches[0].group
        if (
            not causal
            or group is None
            or any(c.group is None or c.group[0] is not group[0] for c in caches)
            or q.shape[2] > attention_rows.MAX_HEAD_DIM
        ):
            return None
        n, heads, hd = q.shape
        slots = np.repeat(np.asarray([c.group[2] for c in caches], dtype=np.int32), [b - a for a, b, _ in spans])
        positions = np.concatenate([np.arange(p0, p0 + b - a, dtype=np.int32) for a, b, p0 in spans])
        slots_d = self.steps.input(slots, ("row_slots",))
        pos_d = self.steps.input(positions, ("row_positions",))
        k_all, v_all = group[0], group[1]
        key = ("attention_rows", q.shape, id(k_all), scale, window, softcap)
        win = int(window) if window else 0
        cap = float(softcap) if softcap else 0.0

        def build():
            out = self._empty((n, heads * hd))

            def fn(s):
                attention_rows.kv_store_rows(k_new, v_new, k_all, v_all, slots_d, pos_d, s)
                attention_rows.attention_rows(q, k_all, v_all, slots_d, pos_d, win, scale, cap, self._dummy_i32, out, s)

            return out, fn

        return self.steps.op(key, n, build)
