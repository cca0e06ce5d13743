"""Per-sequence state of a decoder: one KV cache per layer, each on its layer's backend."""

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


def new_state(params: ModelParams, placement: Placement, n_ctx: int) -> ModelState:
    """Allocate every layer's cache on the backend that runs it."""
    caches = [placement.layer(i).kv_cache(n_ctx, params.n_head_kv, params.head_dim) for i in range(params.n_layer)]
    return ModelState(n_ctx, caches)
