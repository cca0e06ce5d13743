"""What every decoder architecture shares: weight lookup, state, and the forward's outer shell.

An architecture subclasses `DecoderModel` and writes `embed` and `layer`; this class walks the
layers across the placement, checks the context, and applies the output norm and head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from embedkit.backend import Array, Backend, Placement, Weight
from embedkit.errors import GenerationError, InputError
from embedkit.gguf import GGUFFile
from embedkit.models.batch import SeqBatch
from embedkit.models.kv_cache import ModelState, SlotState, new_slot_state, new_state
from embedkit.models.params import ModelParams, read_params

# rows of the last layer to keep: (start, stop), an index array, or None for all
Rows = tuple[int, int] | np.ndarray | None


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

    def new_slot_state(self, n_ctx: int, n_slots: int) -> SlotState:
        """KV caches for `n_slots` sequences of `n_ctx` positions each (for `forward_batch`)."""
        return new_slot_state(self.params, self.placement, n_ctx, n_slots)

    # -- forward ---------------------------------------------------------------------------
    def embed(self, ids: np.ndarray) -> Array:
        """Token ids -> [n, n_embd] on the input backend."""
        raise NotImplementedError

    def layer(
        self, i: int, be: Backend, x: Array, state: ModelState | SlotState, batch: SeqBatch, keep: Rows = None
    ) -> Array:
        """One transformer block on backend `be` over the rows of `batch` (see models/batch.py).

        keep: rows of the last layer whose outputs are wanted ((start, stop) or an index array). As in
        llama.cpp's graphs, the block then narrows its activations to them right after attention (whose
        keys and values still come from every row), so the MLP runs on the kept rows only.
        """
        raise NotImplementedError

    def attend(
        self,
        be: Backend,
        i: int,
        q: Array,
        k: Array,
        v: Array,
        state: ModelState | SlotState,
        batch: SeqBatch,
        scale: float,
        window: int | None = None,
        softcap: float | None = None,
    ) -> Array:
        """Layer i's attention of the batch's rows, each span against its own sequence's cache."""
        caches = [state.slot(s.slot).layer(i) for s in batch.spans]
        return be.attention_seqs(q, caches, k, v, batch.attention_spans(), scale, window=window, softcap=softcap)

    @staticmethod
    def keep_rows(be: Backend, keep: Rows, *arrays: Array) -> tuple[Array, ...]:
        """`arrays` narrowed to rows `keep` (unchanged when keep is None)."""
        if keep is None:
            return arrays
        if isinstance(keep, tuple):
            return tuple(be.rows(a, *keep) for a in arrays)
        return tuple(be.gather_rows(a, keep) for a in arrays)

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
        ids = self._check_ids(ids)
        n = len(ids)
        if pos0 < 0 or pos0 + n > state.n_ctx:
            raise GenerationError(f"context exceeded: positions {pos0}..{pos0 + n - 1} do not fit n_ctx={state.n_ctx}")
        keep = None if all_positions or n == 1 else (n - 1, n)
        return self._run(ids, state, SeqBatch.single(pos0, n), keep, output)

    def forward_batch(
        self,
        ids: np.ndarray,
        state: SlotState,
        batch: SeqBatch,
        out_rows: Sequence[int] | np.ndarray | None = None,
        output: Literal["logits", "hidden"] = "logits",
    ) -> np.ndarray:
        """Run rows of several sequences in one forward (continuous batching).

        ids[r] is the token of row r; `batch` says which slot of `state` and which position each row
        belongs to. Returns float32 [len(out_rows), n_vocab] (or n_embd for "hidden") for the rows
        `out_rows` in that order (None: every row). Each slot's cache is updated in place.
        """
        ids = self._check_ids(ids)
        if len(ids) != batch.n_rows:
            raise InputError(f"forward_batch: {len(ids)} token ids for a batch of {batch.n_rows} rows")
        for s in batch.spans:
            if not 0 <= s.slot < state.n_slots:
                raise InputError(f"forward_batch: slot {s.slot} outside 0..{state.n_slots - 1}")
            if s.pos0 + s.n > state.n_ctx:
                raise GenerationError(
                    f"context exceeded: slot {s.slot} positions {s.pos0}..{s.pos0 + s.n - 1} do not fit "
                    f"n_ctx={state.n_ctx}"
                )
        keep: Rows = None
        if out_rows is not None:
            rows = np.asarray(out_rows, dtype=np.int64).reshape(-1)
            if len(rows) == 0 or rows.min() < 0 or rows.max() >= batch.n_rows:
                raise InputError(f"forward_batch: out_rows must be rows of the batch (0..{batch.n_rows - 1})")
            if np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
                keep = None if len(rows) == batch.n_rows else (int(rows[0]), int(rows[0]) + len(rows))
            else:
                keep = rows
        return self._run(ids, state, batch, keep, output)

    def _check_ids(self, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int32).reshape(-1)
        if len(ids) == 0:
            raise InputError("forward: no tokens")
        if ids.min() < 0 or ids.max() >= self.params.n_vocab:
            raise InputError(f"token id out of range [0, {self.params.n_vocab})")
        return ids

    def _run(
        self, ids: np.ndarray, state: ModelState | SlotState, batch: SeqBatch, keep: Rows, output: str
    ) -> np.ndarray:
        """Embed, the layers across the placement (`keep` applied in the last), output norm and head."""
        for be in self.placement.backends:
            be.begin_forward(state, batch.n_rows)
        x = self.embed(ids)
        src = self.placement.input
        last = self.params.n_layer - 1
        for i in range(self.params.n_layer):
            be = self.placement.layer(i)
            x = self.layer(i, be, self.placement.move(x, src, be), state, batch, keep if i == last else None)
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
