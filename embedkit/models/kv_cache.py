"""Decoder state: the KV caches of one sequence (`ModelState`) or of several at once (`SlotState`).

Each layer's cache sits on the backend that runs the layer. A `SlotState` holds `n_slots` independent
sequences (llama.cpp's seq_ids, llama-server's slots): slot s has its own caches of `n_ctx` positions, in
which position p of that sequence lives at cell p. A slot is reused by writing a new sequence from
position 0: attention only reads the positions a batch says are filled, so nothing needs clearing.
"""

from __future__ import annotations

from dataclasses import dataclass

from embedkit.backend import KVCache, Placement
from embedkit.models.params import ModelParams


@dataclass
class ModelState:
    """The KV caches of every layer, allocated once for `n_ctx` positions."""

    n_ctx: int
    caches: list[KVCache]

    def layer(self, i: int) -> KVCache:
        """Cache of layer i."""
        return self.caches[i]

    @property
    def n_slots(self) -> int:
        """One sequence."""
        return 1

    def slot(self, s: int) -> ModelState:
        """The state of sequence `s`: this one (s must be 0)."""
        if s != 0:
            raise IndexError(f"slot {s} of a one-sequence state")
        return self


@dataclass
class SlotState:
    """The KV caches of `n_slots` sequences, each of `n_ctx` positions (see the module docstring)."""

    n_ctx: int
    slots: list[ModelState]

    @property
    def n_slots(self) -> int:
        """How many sequences fit."""
        return len(self.slots)

    def slot(self, s: int) -> ModelState:
        """The caches of sequence `s`."""
        return self.slots[s]


def new_state(params: ModelParams, placement: Placement, n_ctx: int) -> ModelState:
    """Allocate every layer's cache on the backend that runs it."""
    caches = [placement.layer(i).kv_cache(n_ctx, params.n_head_kv, params.head_dim) for i in range(params.n_layer)]
    return ModelState(n_ctx, caches)


def new_slot_state(params: ModelParams, placement: Placement, n_ctx: int, n_slots: int) -> SlotState:
    """Caches for `n_slots` sequences of `n_ctx` positions each."""
    if n_slots < 1:
        raise ValueError(f"n_slots must be >= 1, got {n_slots}")
    per_layer = [
        placement.layer(i).kv_cache_slots(n_slots, n_ctx, params.n_head_kv, params.head_dim)
        for i in range(params.n_layer)
    ]
    return SlotState(n_ctx, [ModelState(n_ctx, [layer[s] for layer in per_layer]) for s in range(n_slots)])
