"""What every decoder architecture shares: weight lookup, state, and the forward's outer shell.

An architecture subclasses `DecoderModel` and writes `embed` and `layer`; this class walks the
layers across the placement, checks the context, and applies the output norm and head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from embedkit.backend import Array, Backend, Placement, Weight
from embedkit.errors import GenerationError, InputError
from embedkit.gguf import GGUFFile
from embedkit.models.kv_cache import ModelState, new_state
from embedkit.models.params import ModelParams, read_params

Rows = tuple[int, int] | None


def matrix_types(f: GGUFFile) -> set[int]:
    """GGML types of the matrices a forward multiplies by (the layers' and the output head's)."""
    types = {int(t.ggml_type) for name, t in f.tensors.items() if name.startswith("blk.") and len(t.shape) >= 2}
    head = f.tensors.get("output.weight") or f.tensors.get("token_embd.weight")
    if head is not None:
        types.add(int(head.ggml_type))
    return types


class DecoderModel:
    """A decoder-only language model over GGUF weights, run through `Backend` calls only."""

    def __init__(
        self,
        f: GGUFFile,
        placement: Placement | Callable[[int], Placement] | None = None,
        params: ModelParams | None = None,
    ):
        from embedkit.backend import cpu_placement

        self.file = f
        self.params = params or read_params(f)
        if placement is None:
            placement = cpu_placement(self.params.n_layer)
        elif not isinstance(placement, Placement):
            placement = placement(self.params.n_layer)  # a factory: n_layer -> Placement
        self.placement = placement.for_decoder(matrix_types(f))
        if len(self.placement.layers) != self.params.n_layer:
            raise InputError(f"placement has {len(self.placement.layers)} layers, the model has {self.params.n_layer}")
        self.load_weights()

    # -- weights ---------------------------------------------------------------------------
    def tensor(self, be: Backend, name: str, optional: bool = False) -> Weight | None:
        """Weight `name` wrapped/uploaded by backend `be` (None if optional and absent)."""
        if optional and name not in self.file.tensors:
            return None
        return be.weight(self.file.tensor(name))

    def output_weight(self) -> Weight:
        """`output.weight`, or the tied token embedding when the file has none."""
        name = "output.weight" if "output.weight" in self.file.tensors else "token_embd.weight"
        return self.tensor(self.placement.output, name)

    def load_weights(self) -> None:
        """Subclasses bind their tensors here."""
        raise NotImplementedError

    # -- state -----------------------------------------------------------------------------
    def new_state(self, n_ctx: int | None = None) -> ModelState:
        """KV caches for `n_ctx` positions (default: the training context)."""
        return new_state(self.params, self.placement, n_ctx or self.params.n_ctx_train)

    # -- forward ---------------------------------------------------------------------------
    def embed(self, ids: np.ndarray) -> Array:
        """Token ids -> [n, n_embd] on the input backend."""
        raise NotImplementedError

    def layer(
        self, i: int, be: Backend, x: Array, state: ModelState, pos0: int, positions: np.ndarray, keep: Rows = None
    ) -> Array:
        """One transformer block on backend `be`.

        keep: (start, stop) in the last layer when only those rows' outputs are wanted. As in llama.cpp's
        graphs, the block then narrows its activations to them right after attention (whose keys and
        values still come from every row), so the MLP runs on the kept rows only.
        """
        raise NotImplementedError

    @staticmethod
    def keep_rows(be: Backend, keep: Rows, *arrays: Array) -> tuple[Array, ...]:
        """`arrays` narrowed to rows `keep` (unchanged when keep is None)."""
        if keep is None:
            return arrays
        return tuple(be.rows(a, *keep) for a in arrays)

    def output_norm(self, be: Backend, x: Array) -> Array:
        """The final norm (RMSNorm by default)."""
        return be.rms_norm(x, self.w_output_norm, self.params.norm_eps)

    def forward(
        self,
        ids: np.ndarray,
        state: ModelState,
        pos0: int,
        output: Literal["logits", "hidden"] = "logits",
        all_positions: bool = False,
    ) -> np.ndarray:
        """Run tokens `ids` at positions pos0.. and return logits (or final-normed hidden states).

        Returns float32 [n, n_vocab] (all_positions) or [1, n_vocab] (last token only); "hidden"
        gives [.., n_embd] instead. The KV caches in `state` are updated in place.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int32).reshape(-1)
        n = len(ids)
        if n == 0:
            raise InputError("forward: no tokens")
        if pos0 < 0 or pos0 + n > state.n_ctx:
            raise GenerationError(f"context exceeded: positions {pos0}..{pos0 + n - 1} do not fit n_ctx={state.n_ctx}")
        if ids.min() < 0 or ids.max() >= self.params.n_vocab:
            raise InputError(f"token id out of range [0, {self.params.n_vocab})")
        positions = np.arange(pos0, pos0 + n, dtype=np.int32)
        keep = None if all_positions or n == 1 else (n - 1, n)
        x = self.embed(ids)
        src = self.placement.input
        last = self.params.n_layer - 1
        for i in range(self.params.n_layer):
            be = self.placement.layer(i)
            x = self.layer(i, be, self.placement.move(x, src, be), state, pos0, positions, keep if i == last else None)
            src = be
        be = self.placement.output
        x = self.placement.move(x, src, be)
        x = self.output_norm(be, x)
        # to_host gives an array the caller owns: no second copy of the logits
        if output == "hidden":
            return np.asarray(be.to_host(x), dtype=np.float32)
        return np.asarray(be.to_host(self.head(be, x)), dtype=np.float32)

    def head(self, be: Backend, x: Array) -> Array:
        """Hidden states -> logits."""
        return be.matmul(x, self.w_output)
