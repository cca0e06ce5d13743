"""The one interface model code calls: weights, matmul, norms, RoPE, activations, attention.

Arrays are opaque handles owned by a backend (numpy float32 on the CPU, device arrays on CUDA).
Architectures call only these methods, so one forward runs unchanged on every backend and on a
mix of them (partial offload, see `placement.py`). Every method that returns an array returns a
new one (or a view, where its docstring says so); none writes into an array the caller passes.
A backend's KV caches are its own: their layout and precision are private to it (see `KVCache`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Array = Any  # a backend-owned float32 array (numpy.ndarray on CPU)
RopeStyle = Literal["norm", "neox"]


@dataclass
class Weight:
    """A tensor as a backend holds it.

    `shape` is in numpy order: (n_rows, n_cols) for a matrix (a linear layer's (n_out, n_in)),
    (n,) for a vector. `data` is backend-specific: on the CPU the raw GGUF bytes of a matrix as
    a uint8 view of the mmap (never dequantized at load), a float32 array for vectors.
    """

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    data: Any

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def n_cols(self) -> int:
        return self.shape[-1]


@dataclass
class KVCache:
    """Keys and values of one layer for `n_ctx` positions, allocated once by `Backend.kv_cache`.

    `k` and `v` belong to the backend that allocated them (`backend_name`): their layout and precision
    are that backend's choice (CPUBackend: float32 [n_kv_heads, n_ctx, head_dim]; CUDABackend: float32
    [n_ctx, n_kv_heads, head_dim] in VRAM; GGMLCPUBackend: llama.cpp's float16 cache), and only that
    backend's `attention` / `attention_seqs` read or write them. Other code keeps the cache, never its
    arrays."""

    n_ctx: int
    n_kv_heads: int
    head_dim: int
    k: Array
    v: Array
    backend_name: str = field(default="cpu")
    # (k of every slot, v of every slot, this slot's index) when `Backend.kv_cache_slots` allocated the
    # slots' caches together (the CUDA backend), else None
    group: Any = None


class Backend:
    """Abstract compute backend (see the module docstring for what every implementation promises)."""

    name: str = "abstract"

    # -- data movement -------------------------------------------------------------------
    def weight(self, t: Any) -> Weight:
        """Wrap (CPU) or upload (GPU) a GGUF `TensorInfo` once, at load time."""
        raise NotImplementedError

    def asarray(self, x: np.ndarray) -> Array:
        """Host float32/int32 array -> an array of this backend."""
        raise NotImplementedError

    def to_host(self, x: Array) -> np.ndarray:
        """This backend's array -> a host numpy array the caller owns (no later op writes to it)."""
        raise NotImplementedError

    def take(self, x: Array) -> Array:
        """Adopt a host array (another backend's `to_host` output, see `Placement.move`) as this backend's."""
        raise NotImplementedError

    def begin_forward(self, state: Any, n_rows: int) -> None:
        """A decoder forward of `n_rows` rows that reads and writes the KV caches of `state` starts (called
        before its first op on this backend). A backend that replays recorded steps (the CUDA graphs) keys
        the step on `state`, so a recording never runs against another state's caches. Default: nothing."""

    def view(self, x: Array, shape: tuple[int, ...]) -> Array:
        """The same contiguous data with another shape (no copy)."""
        raise NotImplementedError

    def rows(self, x: Array, start: int, stop: int) -> Array:
        """Rows start:stop of a 2-D array (a contiguous view)."""
        raise NotImplementedError

    def split_cols(self, x: Array, sizes: list[int]) -> list[Array]:
        """Split [n, sum(sizes)] into contiguous [n, size] arrays (e.g. a fused QKV projection)."""
        raise NotImplementedError

    # -- linear algebra ------------------------------------------------------------------
    def get_rows(self, w: Weight, ids: np.ndarray) -> Array:
        """Embedding lookup: rows `ids` of `w`, dequantized, [n, n_cols] float32."""
        raise NotImplementedError

    def matmul(self, x: Array, w: Weight, bias: Weight | None = None) -> Array:
        """[n, n_in] @ W.T (+ bias) -> [n, n_out], W kept in its quantized layout."""
        raise NotImplementedError

    def matmuls(self, x: Array, ws: list[Weight], biases: list[Weight | None] | None = None) -> list[Array]:
        """[x @ W.T (+ b) for each W] with one input (Q/K/V, gate/up); a backend may share work between them."""
        biases = biases or [None] * len(ws)
        return [self.matmul(x, w, b) for w, b in zip(ws, biases, strict=True)]

    # -- another backend's matmuls (partial offload) ------------------------------------
    def offload_takes(self, x: np.ndarray, w: Weight) -> bool:
        """Whether this backend should run x @ W.T (`host_matmuls`) for another backend whose layer owns W
        (host x [n, n_in], W in that backend's form): the CPU hands its prompt batches to a GPU this way.
        The default takes none."""
        return False

    def host_matmuls(self, x: np.ndarray, ws: list[Weight]) -> list[np.ndarray]:
        """[x @ W.T for each W] for host x and another backend's weights (`offload_takes` said yes),
        results on the host."""
        raise NotImplementedError

    # -- elementwise ---------------------------------------------------------------------
    def add(self, a: Array, b: Array) -> Array:
        """a + b (b may be a Weight vector or broadcast over rows)."""
        raise NotImplementedError

    def mul(self, a: Array, b: Array) -> Array:
        """a * b elementwise."""
        raise NotImplementedError

    def scale(self, a: Array, s: float) -> Array:
        """a * s."""
        raise NotImplementedError

    def silu(self, x: Array) -> Array:
        """x * sigmoid(x)."""
        raise NotImplementedError

    def gelu(self, x: Array) -> Array:
        """GELU with the tanh approximation (ggml_gelu, HF gelu_pytorch_tanh)."""
        raise NotImplementedError

    def gelu_erf(self, x: Array) -> Array:
        """Exact GELU, 0.5 x (1 + erf(x / sqrt 2))."""
        raise NotImplementedError

    def swiglu(self, gate: Array, up: Array) -> Array:
        """silu(gate) * up."""
        raise NotImplementedError

    def geglu(self, gate: Array, up: Array) -> Array:
        """gelu_tanh(gate) * up."""
        raise NotImplementedError

    def softmax(self, x: Array) -> Array:
        """Softmax over the last dimension."""
        raise NotImplementedError

    # -- normalization -------------------------------------------------------------------
    def rms_norm(self, x: Array, w: Weight | None, eps: float) -> Array:
        """x / sqrt(mean(x^2) + eps) * w over the last dimension (any leading shape)."""
        raise NotImplementedError

    def layer_norm(self, x: Array, w: Weight | None, b: Weight | None, eps: float) -> Array:
        """(x - mean) / sqrt(var + eps) * w + b over the last dimension."""
        raise NotImplementedError

    # -- positions and attention ---------------------------------------------------------
    def rope(
        self,
        x: Array,
        positions: np.ndarray,
        n_rot: int,
        base: float,
        style: RopeStyle,
        freq_scale: float = 1.0,
    ) -> Array:
        """Rotary embedding of [n, heads, head_dim] at `positions` over the first `n_rot` dims.

        "norm" rotates adjacent pairs (x[2i], x[2i+1]) as LLAMA_ROPE_TYPE_NORM; "neox" rotates
        (x[i], x[i + n_rot/2]) as LLAMA_ROPE_TYPE_NEOX / HF rotate_half. theta_i = p * freq_scale
        * base^(-2i/n_rot).
        """
        raise NotImplementedError

    def kv_cache(self, n_ctx: int, n_kv_heads: int, head_dim: int) -> KVCache:
        """Allocate one layer's key/value cache on this backend, in this backend's own layout."""
        raise NotImplementedError

    def kv_cache_slots(self, n_slots: int, n_ctx: int, n_kv_heads: int, head_dim: int) -> list[KVCache]:
        """One layer's caches for `n_slots` sequences (a backend may allocate them together, see KVCache.group)."""
        return [self.kv_cache(n_ctx, n_kv_heads, head_dim) for _ in range(n_slots)]

    def attention(
        self,
        q: Array,
        cache: KVCache,
        k_new: Array,
        v_new: Array,
        pos0: int,
        scale: float,
        causal: bool = True,
        window: int | None = None,
        softcap: float | None = None,
    ) -> Array:
        """Store k_new/v_new [n, kv_heads, hd] at positions pos0.. in `cache`, then attend.

        q is [n, heads, hd]; heads is a multiple of kv_heads (GQA/MQA: query head h reads kv head
        h // (heads // kv_heads)). Token i sits at position pos0 + i and sees cached positions j
        with j <= pos0 + i (causal) and pos0 + i - j < window (sliding window, llama.cpp's rule).
        softcap: scores -> softcap * tanh(scores / softcap). Returns [n, heads * hd].
        """
        raise NotImplementedError

    def attention_seqs(
        self,
        q: Array,
        caches: Sequence[KVCache],
        k_new: Array,
        v_new: Array,
        spans: Sequence[tuple[int, int, int]],
        scale: float,
        causal: bool = True,
        window: int | None = None,
        softcap: float | None = None,
    ) -> Array:
        """`attention` for rows of several sequences (continuous batching, see models/batch.py).

        spans[i] = (start, stop, pos0): rows start:stop are one sequence's tokens at positions pos0..,
        stored in and attending over caches[i] only (its window counted in its own positions). The
        default runs `attention` per span and stacks the outputs; one span is exactly `attention`. A
        backend with one kernel for all the rows provides `_attention_seqs_fused`, tried first.
        """
        fused = self._attention_seqs_fused(q, caches, k_new, v_new, spans, scale, causal, window, softcap)
        if fused is not None:
            return fused
        if len(spans) == 1:
            return self.attention(q, caches[0], k_new, v_new, spans[0][2], scale, causal, window, softcap)
        outs = [
            self.attention(
                self.rows(q, a, b), cache, self.rows(k_new, a, b), self.rows(v_new, a, b), pos0, scale, causal,
                window, softcap,
            )
            for cache, (a, b, pos0) in zip(caches, spans, strict=True)
        ]  # fmt: skip
        return self.concat_rows(outs)

    def _attention_seqs_fused(self, q, caches, k_new, v_new, spans, scale, causal, window, softcap) -> Array | None:
        """`attention_seqs` in one launch, or None where this backend has no such kernel for these caches."""
        return None

    def concat_rows(self, parts: Sequence[Array]) -> Array:
        """Arrays of equal trailing shape stacked along the first axis (a new array)."""
        raise NotImplementedError

    def gather_rows(self, x: Array, idx: np.ndarray) -> Array:
        """Rows `idx` (host int array) of a 2-D array, in that order (a new array)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return self.concat_rows([self.rows(x, int(i), int(i) + 1) for i in idx])

    def attention_batch(self, q: Array, k: Array, v: Array, mask: np.ndarray, scale: float) -> Array:
        """Bidirectional attention over padded batches (BERT).

        q, k, v: [b, t, heads, hd]; mask: [b, t] with 1 for real tokens and 0 for padding (keys
        that are padding get no weight; padded query rows come back as zeros). Returns [b, t, heads * hd].
        """
        raise NotImplementedError

    # -- encoder blocks (defaults built from the ops above; a backend may fuse them) --------
    def self_attention(
        self, x: Array, wq: Weight, bq: Weight, wk: Weight, bk: Weight, wv: Weight, bv: Weight,
        mask: np.ndarray, n_head: int, scale: float,
    ) -> Array:  # fmt: skip
        """Bidirectional self-attention of a padded batch x [b*t, d] (mask [b, t], 1 = token): the Q/K/V
        projections with their biases, then `attention_batch`. Returns [b*t, d]."""
        b, t = np.shape(mask)
        d = wq.n_rows
        hd = d // n_head
        q, k, v = self.matmuls(x, [wq, wk, wv], [bq, bk, bv])
        q, k, v = (self.view(a, (b, t, n_head, hd)) for a in (q, k, v))
        return self.view(self.attention_batch(q, k, v, mask, scale), (b * t, d))

    def add_layer_norm(self, a: Array, residual: Array, w: Weight | None, b: Weight | None, eps: float) -> Array:
        """layer_norm(a + residual): a post-LayerNorm block's residual connection."""
        return self.layer_norm(self.add(a, residual), w, b, eps)

    def pooled(self, x: Array, mask: np.ndarray, method: str) -> np.ndarray:
        """Hidden states x [b*t, d] pooled per sequence over mask [b, t] (mean, cls, last, none: see
        `embedkit.kernels.pooling.pool`) -> host float32 [b, d]."""
        from embedkit.kernels.pooling import pool

        b, t = np.shape(mask)
        return pool(self.to_host(x).reshape(b, t, -1), mask, method)

    def for_encoder(self) -> Backend:
        """The backend an encoder (BERT) runs on in place of this one: itself unless a faster one exists."""
        return self

    # -- independent forward passes on several threads (encoder batches) -----------------
    def forward_threads(self) -> int:
        """How many forward passes may run at once, one per thread, inside `concurrent_forwards()`."""
        return 1

    def concurrent_forwards(self) -> contextlib.AbstractContextManager[None]:
        """Context for running `forward_threads()` forward passes at once (each op then stays on its thread)."""
        return contextlib.nullcontext()
