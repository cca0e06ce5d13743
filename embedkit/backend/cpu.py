"""The CPU backend: numpy float32 activations, quantized weights read in place by `embedkit.kernels`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedkit import kernels
from embedkit.backend import cpu_ops
from embedkit.backend.base import Array, Backend, KVCache, RopeStyle, Weight
from embedkit.backend.cpu_packed import PackedEncoderOps
from embedkit.gguf import GGMLType
from embedkit.kernels.cpu.dispatch import DEQUANTIZERS
from embedkit.kernels.cpu.matmul import (
    MAX_DECODE_TOKENS,
    decode_layout,
    integer_activations,
    matmul_packed,
    matmul_rows,
    matmul_rows_many,
)
from embedkit.kernels.cpu.row_blocks import can_split_blas, concurrent_callers, run_blocks

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_NO_WEIGHT = np.empty(0, dtype=np.float32)
# Up to this many query tokens attention runs in one fused loop; more go through BLAS batches.
_SMALL_ATTENTION_TOKENS = 8
# From this many multiply-adds per score pass (heads x keys x head_dim) a decode step's attention runs its
# (token, head) pairs in parallel: 16384 is 256 key-head pairs at head_dim 64, ~9 us on one thread of the
# AVX-512 dev VM (~35 ns a pair), several thread wake-ups.
_PARALLEL_ATTENTION_WORK = 16384
# From this many elements a decode step's GLU runs on all kernel threads: with the vectorised exp an element costs
# ~0.5-1 ns, so a few thousand (one sequence's gate) take less on the calling thread than a parallel region's start.
_PARALLEL_GLU_ITEMS = 1 << 14
# Below this many elements a GLU runs in one Numba parallel region rather than `run_blocks` (a Python thread pool,
# ~200 us of hand-off): a batched decode step's 8 rows of 4864 gates took 224 us that way, 20 us of it compute.
_GLU_REGION_ITEMS = 1 << 17
# Encoder-sized ops (F32 matmul, exact GELU, LayerNorm, add, batched attention) run over row blocks on
# the kernel threads with single-threaded BLAS (see kernels/cpu/row_blocks.py).
# Fewest rows per block: smaller ops run on the calling thread.
_MIN_BLOCK_ROWS = 16


@dataclass(eq=False)
class CPUWeight(Weight):
    """A CPU matrix: `data` the mmap'd GGUF rows; `packed` its copy in a decode layout (kernels/cpu/matmul.py
    `decode_layout`), made on the first decode matmul so that weights only looked up by row (token
    embeddings) are never copied; False until then, None where the type has no such layout."""

    packed: np.ndarray | None | bool = False


def _packed(w: Weight) -> np.ndarray | None:
    """The decode layout of w, made on first use."""
    if not isinstance(w, CPUWeight):
        return None
    if w.packed is False:
        w.packed = decode_layout(w.data, w.ggml_type, w.shape[1])
    return w.packed


@dataclass(eq=False)
class _StackedWeights:
    """Weights of one `matmuls` call with the same packed decode layout, their packed rows stacked in one array
    so that decode runs them in one kernel launch (q/k/v, gate/up): `parts` holds (index in the call, first
    row, end row) of each, and each weight's own `packed` becomes a view of its rows of `packed`."""

    ggml_type: int
    packed: np.ndarray
    n_rows: int
    parts: list[tuple[int, int, int]]


def _stack_packed(ws: list[Weight]) -> list[_StackedWeights]:
    """The groups of two or more weights in ws that can run stacked (same type, a packed layout, whole quads
    of rows: rows never share a quad across weights, so every row's result is that of its own weight's launch)."""
    by_type: dict[int, list[int]] = {}
    for i, w in enumerate(ws):
        if isinstance(w, CPUWeight) and w.shape[0] % 4 == 0 and _packed(w) is not None:
            by_type.setdefault(w.ggml_type, []).append(i)
    groups = []
    for t, idx in by_type.items():
        if len(idx) < 2:
            continue
        packed = np.concatenate([ws[i].packed for i in idx], axis=0)
        parts, r0 = [], 0
        for i in idx:
            n = ws[i].shape[0]
            ws[i].packed = packed[r0 // 4 : (r0 + n) // 4]
            parts.append((i, r0, r0 + n))
            r0 += n
        groups.append(_StackedWeights(t, packed, r0, parts))
    return groups


def _glu(kernels_: tuple, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """kernel(gate, up, out) over the flattened arrays (kernels_: the serial kernel and its one-region parallel
    form): a decode step's few thousand elements in one Numba parallel region, a prompt's in blocks of at least
    16K elements on the kernel threads."""
    kernel, parallel = kernels_
    out = np.empty_like(gate)
    g, u, o = gate.reshape(-1), up.reshape(-1), out.reshape(-1)
    if g.size < _GLU_REGION_ITEMS:  # without run_blocks' setup (a decode step calls this per layer)
        n_threads = kernels.get_num_threads()
        if g.size >= _PARALLEL_GLU_ITEMS and n_threads > 1:
            kernels.apply_num_threads()
            parallel(g, u, o, n_threads)
        else:
            kernel(g, u, o)
    else:
        run_blocks(lambda a, b: kernel(g[a:b], u[a:b], o[a:b]), g.size, min_items=1 << 14)
    return out


def _vec(w: Weight | Array) -> np.ndarray:
    return w.data if isinstance(w, Weight) else w


def _decode_weight(w: Weight) -> bool:
    """Whether the decode kernels take w (2-D rows of a type with kernels)."""
    return w.data.ndim == 2 and w.ggml_type in DEQUANTIZERS


def _decode_input(x: np.ndarray, n_cols: int) -> bool:
    """Whether x (float32, C-contiguous) is a few tokens of n_cols values, as the decode kernels take them."""
    return x.ndim == 2 and x.shape[0] <= MAX_DECODE_TOKENS and x.shape[1] == n_cols


class CPUBackend(PackedEncoderOps, Backend):
    """Numpy/Numba backend. Weights stay as uint8 views over the mmap'd GGUF file."""

    name = "cpu"

    def __init__(self, batch_offload: Backend | None = None) -> None:
        """`batch_offload`: a GPU backend that runs this backend's large-batch matmuls (partial
        offload: the CPU layers' prompt matmuls, through its `offload_takes` / `host_matmuls`)."""
        self._rope_tables: dict[tuple[int, float, float], tuple[np.ndarray, np.ndarray]] = {}
        # decode's stacked weight groups by the ids of a `matmuls` call's weights (the weights are kept with them,
        # so that their ids cannot be reused by other objects while the entry exists)
        self._stacked: dict[tuple[int, ...], tuple[list[Weight], list[_StackedWeights]]] = {}
        # the n_in every weight of a `matmul(s)` call shares when the decode kernels take them all, else -1, by the
        # ids of the call's weights (kept with it): a decode step checks only its input, not ~10 weight properties
        self._decode_cols: dict[tuple[int, ...], tuple[list[Weight], int]] = {}
        self.batch_offload = batch_offload
        self._last_spans: tuple[Sequence[tuple[int, int, int]], np.ndarray] | None = None
        self._last_rope: tuple | None = None

    # -- data movement -------------------------------------------------------------------
    def weight(self, t) -> Weight:
        """Wrap a GGUF TensorInfo: matrices as raw bytes, vectors (norms, biases) as float32."""
        shape = tuple(int(s) for s in t.np_shape)
        gtype = int(t.ggml_type)
        if len(shape) == 1:
            if gtype == GGMLType.F32:
                data = t.data.view(np.float32)
            else:
                data = kernels.dequantize(t.data, gtype, (1, shape[0])).reshape(shape[0])
            return Weight(t.name, int(GGMLType.F32), shape, np.ascontiguousarray(data, dtype=np.float32))
        if len(shape) > 2:
            shape = (int(np.prod(shape[:-1])), shape[-1])
        return CPUWeight(t.name, gtype, shape, t.rows_view())  # 2-D rows: kernels take them without reshaping

    def asarray(self, x: np.ndarray) -> Array:
        """Host array -> float32 (or int32) contiguous numpy array."""
        if x.dtype.kind in "iu":
            return np.ascontiguousarray(x, dtype=np.int32)
        return np.ascontiguousarray(x, dtype=np.float32)

    def to_host(self, x: Array) -> np.ndarray:
        """Already on the host (no op writes into an array it has returned, so the caller may keep it)."""
        return x

    def take(self, x: Array) -> Array:
        """Host arrays are this backend's arrays: passed through."""
        return np.asarray(x)

    def view(self, x: Array, shape: tuple[int, ...]) -> Array:
        """Reshape without copying."""
        return x.reshape(shape)

    def rows(self, x: Array, start: int, stop: int) -> Array:
        """Rows start:stop."""
        return x[start:stop]

    def concat_rows(self, parts) -> Array:
        """Stack along the first axis."""
        return np.concatenate(parts, axis=0)

    def gather_rows(self, x: Array, idx: np.ndarray) -> Array:
        """Rows idx, copied."""
        return np.ascontiguousarray(x[np.asarray(idx, dtype=np.int64)])

    def split_cols(self, x: Array, sizes: list[int]) -> list[Array]:
        """Contiguous column blocks of a 2-D array."""
        out, c = [], 0
        for s in sizes:
            out.append(np.ascontiguousarray(x[:, c : c + s]))
            c += s
        return out

    # -- linear algebra ------------------------------------------------------------------
    def get_rows(self, w: Weight, ids: np.ndarray) -> Array:
        """Dequantize only the rows asked for."""
        n_rows, n_cols = w.shape
        raw = w.data.reshape(n_rows, -1)[np.asarray(ids, dtype=np.int64)]
        return np.ascontiguousarray(kernels.dequantize(raw, w.ggml_type, (len(ids), n_cols)), dtype=np.float32)

    def matmul(self, x: Array, w: Weight, bias: Weight | None = None) -> Array:
        """x @ W.T through the quantized kernels, plus an optional bias."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if (
            w.ggml_type == GGMLType.F32
            and x.ndim == 2
            and x.shape[0] >= 2 * _MIN_BLOCK_ROWS
            and x.shape[1] == w.shape[1]
        ):
            return self._matmul_f32_blocks(x, w, bias)
        off = self.batch_offload
        if _decode_input(x, self._decode_n_cols((id(w),), (w,))):  # decode: the weight was checked once
            kernels.apply_num_threads()
            y = matmul_rows(x, w.data, w.ggml_type, w.shape[1], _packed(w))
        elif off is not None and off.offload_takes(x, w):
            y = off.host_matmuls(x, [w])[0]
        else:
            y = kernels.matmul(x, w.data, w.ggml_type, w.shape)
        if bias is not None:
            y += bias.data
        return y

    def matmuls(self, x: Array, ws: list[Weight], biases: list[Weight | None] | None = None) -> list[Array]:
        """Several x @ W.T with one input: decode quantizes x once per activation format, a prompt batch
        handed to the GPU (`batch_offload`) uploads it once."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        off = self.batch_offload
        if off is not None and all(off.offload_takes(x, w) for w in ws):  # a prompt batch: x goes up once
            ys = off.host_matmuls(x, ws)
        elif _decode_input(x, self._decode_n_cols(key := tuple(map(id, ws)), ws)):
            kernels.apply_num_threads()
            ys = self._decode_matmuls(x, ws, key)
        else:  # batches, or weights the decode kernels don't take
            return super().matmuls(x, ws, biases)
        for y, b in zip(ys, biases or [None] * len(ws), strict=True):
            if b is not None:
                y += b.data
        return ys

    def _decode_n_cols(self, key: tuple[int, ...], ws: Sequence[Weight]) -> int:
        """The n_in of weights ws (ids `key`) when the decode kernels take them all, else -1 (checked once)."""
        hit = self._decode_cols.get(key)
        if hit is None:
            cols = {w.shape[1] for w in ws}
            ok = len(cols) == 1 and all(_decode_weight(w) for w in ws)
            hit = self._decode_cols[key] = (list(ws), cols.pop() if ok else -1)
        return hit[1]

    def _decode_matmuls(self, x: np.ndarray, ws: list[Weight], key: tuple[int, ...] | None = None) -> list[np.ndarray]:
        """A few tokens times several weights: for one token, each group of stacked weights (`_stack_packed`) in
        one kernel launch, x quantized once for them; the others (and several tokens) through `matmul_rows_many`.
        key: the weights' ids, where the caller has them."""
        if key is None:
            key = tuple(map(id, ws))
        hit = self._stacked.get(key)
        if hit is None:
            hit = self._stacked[key] = (list(ws), _stack_packed(ws))
        groups = hit[1]
        if not groups or x.shape[0] != 1:
            return matmul_rows_many(x, [(w.data, w.ggml_type, _packed(w)) for w in ws], x.shape[1])
        acts = [integer_activations(x[0])]
        ys: list[np.ndarray | None] = [None] * len(ws)
        for g in groups:
            y = matmul_packed(acts, g.packed, g.ggml_type, g.n_rows)
            for i, r0, r1 in g.parts:  # one token: each slice [1, r1 - r0] is contiguous
                ys[i] = y[:, r0:r1]
        rest = [i for i, y in enumerate(ys) if y is None]
        if rest:
            more = matmul_rows_many(x, [(ws[i].data, ws[i].ggml_type, _packed(ws[i])) for i in rest], x.shape[1])
            for i, y in zip(rest, more, strict=True):
                ys[i] = y
        return ys

    def _matmul_f32_blocks(self, x: np.ndarray, w: Weight, bias: Weight | None) -> np.ndarray:
        """Float32 x @ W.T (+ bias) over row blocks on the kernel threads, single-threaded BLAS in each."""
        wt = w.data.view(np.float32).reshape(w.shape).T
        y = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
        b = None if bias is None else bias.data

        def block(r0: int, r1: int) -> None:
            np.matmul(x[r0:r1], wt, out=y[r0:r1])
            if b is not None:
                y[r0:r1] += b

        run_blocks(block, x.shape[0], min_items=_MIN_BLOCK_ROWS, blas=True)
        return y

    # -- elementwise ---------------------------------------------------------------------
    def add(self, a: Array, b: Array) -> Array:
        """a + b."""
        b = _vec(b)
        if (
            a.shape == b.shape
            and a.size >= 1 << 16
            and a.dtype == b.dtype == np.float32
            and a.flags.c_contiguous
            and b.flags.c_contiguous
        ):
            out = np.empty(a.shape, dtype=np.float32)
            af, bf, of = a.reshape(-1), b.reshape(-1), out.reshape(-1)
            run_blocks(lambda i, j: np.add(af[i:j], bf[i:j], out=of[i:j]), af.size, min_items=1 << 14)
            return out
        return a + b

    def mul(self, a: Array, b: Array) -> Array:
        """a * b."""
        return a * _vec(b)

    def scale(self, a: Array, s: float) -> Array:
        """a * s in float32."""
        return a * np.float32(s)

    def silu(self, x: Array) -> Array:
        """x * sigmoid(x)."""
        return x / (np.float32(1.0) + np.exp(-x))

    def gelu(self, x: Array) -> Array:
        """Tanh-approximated GELU."""
        x3 = x * x * x
        return (
            np.float32(0.5)
            * x
            * (np.float32(1.0) + np.tanh(np.float32(_SQRT_2_OVER_PI) * (x + np.float32(0.044715) * x3)))
        )

    def gelu_erf(self, x: Array) -> Array:
        """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)) (erf to ~4e-7, multithreaded; see kernels/cpu/gelu_erf.py)."""
        from embedkit.kernels.cpu.gelu_erf import gelu_erf_block

        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty_like(x)
        xf, yf = x.reshape(-1), y.reshape(-1)
        run_blocks(lambda a, b: gelu_erf_block(xf[a:b], yf[a:b]), xf.size, min_items=1 << 14)
        return y

    def swiglu(self, gate: Array, up: Array) -> Array:
        """silu(gate) * up, one fused pass (a prompt's on all kernel threads)."""
        return _glu((cpu_ops.silu_mul, cpu_ops.silu_mul_parallel), gate, up)

    def geglu(self, gate: Array, up: Array) -> Array:
        """gelu_tanh(gate) * up, one fused pass (a prompt's on all kernel threads)."""
        return _glu((cpu_ops.gelu_tanh_mul, cpu_ops.gelu_tanh_mul_parallel), gate, up)

    def softmax(self, x: Array) -> Array:
        """Numerically stable softmax over the last dim."""
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        e /= e.sum(axis=-1, keepdims=True)
        return e

    # -- normalization -------------------------------------------------------------------
    def rms_norm(self, x: Array, w: Weight | None, eps: float) -> Array:
        """RMSNorm over the last dim, sum of squares in float64 (as ggml)."""
        d = x.shape[-1]
        x2 = np.ascontiguousarray(x).reshape(-1, d)
        out = np.empty_like(x2)
        cpu_ops.rms_norm_rows(x2, _vec(w) if w is not None else _NO_WEIGHT, float(eps), out)
        return out.reshape(x.shape)

    def layer_norm(self, x: Array, w: Weight | None, b: Weight | None, eps: float) -> Array:
        """LayerNorm over the last dim (mean and variance in float64)."""
        if w is not None and b is not None:
            from embedkit.kernels.cpu.gelu_erf import layer_norm_block

            x = np.ascontiguousarray(x, dtype=np.float32)
            y = np.empty_like(x)
            x2, y2, wv, bv = x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1]), _vec(w), _vec(b)
            run_blocks(
                lambda r0, r1: layer_norm_block(x2[r0:r1], wv, bv, float(eps), y2[r0:r1]),
                x2.shape[0],
                min_items=_MIN_BLOCK_ROWS,
            )
            return y
        xd = x.astype(np.float64)
        mu = xd.mean(axis=-1, keepdims=True)
        xc = xd - mu
        var = (xc * xc).mean(axis=-1, keepdims=True)
        y = (xc / np.sqrt(var + eps)).astype(np.float32)
        if w is not None:
            y *= _vec(w)
        if b is not None:
            y += _vec(b)
        return y

    # -- positions and attention ---------------------------------------------------------
    def _rope_table(self, n_rot: int, base: float, freq_scale: float, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin [n_pos', n_rot/2] for positions 0.. (grown by doubling, computed in float64)."""
        key = (n_rot, float(base), float(freq_scale))
        t = self._rope_tables.get(key)
        if t is None or t[0].shape[0] < n_pos:
            size = max(n_pos, 2 * (t[0].shape[0] if t is not None else 256))
            inv = freq_scale * base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
            theta = np.arange(size, dtype=np.float64)[:, None] * inv
            t = (np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32))
            self._rope_tables[key] = t
        return t

    def rope(
        self,
        x: Array,
        positions: np.ndarray,
        n_rot: int,
        base: float,
        style: RopeStyle,
        freq_scale: float = 1.0,
    ) -> Array:
        """Rotate the first n_rot dims of every head; returns a new [n, heads, hd] array."""
        cos, sin = self._rope_angles(positions, n_rot, base, freq_scale)
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)
        cpu_ops.rope_rows(x, cos, sin, n_rot, style == "neox", out)
        return out

    def _rope_angles(
        self, positions: np.ndarray, n_rot: int, base: float, freq_scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin [n, n_rot/2] of `positions`; the last answer is kept, as every layer (and Q and K) of a forward
        passes the same positions array (its batch's): a decode step computes them once, not twice a layer."""
        last = self._last_rope
        if last is not None and last[0] is positions and last[1] == (n_rot, base, freq_scale):
            return last[2], last[3]
        pos = np.asarray(positions)
        n, p0, p1 = len(pos), int(pos[0]), int(pos[-1])
        contiguous = p1 - p0 == n - 1 and (n < 3 or bool((np.diff(pos) == 1).all()))
        cos, sin = self._rope_table(n_rot, base, freq_scale, (p1 if contiguous else int(pos.max())) + 1)
        if contiguous:
            cos, sin = cos[p0 : p0 + n], sin[p0 : p0 + n]
        else:
            cos, sin = cos[pos], sin[pos]
        if isinstance(positions, np.ndarray):  # kept with its array, whose id can't be reused meanwhile
            self._last_rope = (positions, (n_rot, base, freq_scale), cos, sin)
        return cos, sin

    def kv_cache(self, n_ctx: int, n_kv_heads: int, head_dim: int) -> KVCache:
        """Float32 keys and values, [n_kv_heads, n_ctx, head_dim] each."""
        k = np.zeros((n_kv_heads, n_ctx, head_dim), dtype=np.float32)
        v = np.zeros((n_kv_heads, n_ctx, head_dim), dtype=np.float32)
        return KVCache(n_ctx, n_kv_heads, head_dim, k, v, "cpu")

    def kv_cache_slots(self, n_slots: int, n_ctx: int, n_kv_heads: int, head_dim: int) -> list[KVCache]:
        """One [n_slots, n_kv_heads, n_ctx, head_dim] allocation per K and V; slot s's cache is its s-th part
        (so `attention_seqs` reaches every slot from one array)."""
        k_all = np.zeros((n_slots, n_kv_heads, n_ctx, head_dim), dtype=np.float32)
        v_all = np.zeros((n_slots, n_kv_heads, n_ctx, head_dim), dtype=np.float32)
        return [
            KVCache(n_ctx, n_kv_heads, head_dim, k_all[s], v_all[s], "cpu", group=(k_all, v_all, s))
            for s in range(n_slots)
        ]

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
        """Rows of several sequences (see Backend.attention_seqs): when every span is a few decode rows of
        slots allocated together, one parallel region over every (row, head) pair (`cpu_ops.attention_spans`)."""
        group = caches[0].group if caches else None
        if (
            len(spans) == 1
            or not causal
            or group is None
            or any(c.group is None or c.group[0] is not group[0] for c in caches)
            or any(b - a > _SMALL_ATTENTION_TOKENS for a, b, _ in spans)
        ):
            return super().attention_seqs(q, caches, k_new, v_new, spans, scale, causal, window, softcap)
        n, n_head, hd = q.shape
        out = np.empty((n, n_head * hd), dtype=np.float32)
        cpu_ops.attention_spans(
            np.ascontiguousarray(q), np.ascontiguousarray(k_new), np.ascontiguousarray(v_new), group[0], group[1],
            self._span_table(caches, spans), np.float32(scale), window or 0, np.float32(softcap or 0.0), out,
        )  # fmt: skip
        return out

    def _span_table(self, caches: Sequence[KVCache], spans: Sequence[tuple[int, int, int]]) -> np.ndarray:
        """int64 [n_spans, 4] of (slot, start, stop, pos0), made once per batch (every layer passes the same
        `spans` object)."""
        last = self._last_spans
        if last is not None and last[0] is spans:
            return last[1]
        table = np.array([(c.group[2], a, b, p0) for c, (a, b, p0) in zip(caches, spans, strict=True)], dtype=np.int64)
        self._last_spans = (spans, table)
        return table

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
        """Grouped-query attention over the cache (see Backend.attention)."""
        n, n_head, hd = q.shape
        n_kv = cache.n_kv_heads
        g = n_head // n_kv
        end = pos0 + n
        if causal and n <= _SMALL_ATTENTION_TOKENS:  # decode: store and attend in one compiled call
            out = np.empty((n, n_head * hd), dtype=np.float32)
            kernels.apply_num_threads()
            parallel = n_head * end * hd >= _PARALLEL_ATTENTION_WORK and kernels.get_num_threads() > 1
            (cpu_ops.store_attention_parallel if parallel else cpu_ops.store_attention_small)(
                np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(k_new, dtype=np.float32),
                np.ascontiguousarray(v_new, dtype=np.float32), cache.k, cache.v, pos0, np.float32(scale),
                window or 0, np.float32(softcap or 0.0), out,
            )  # fmt: skip
            return out
        cache.k[:, pos0:end] = k_new.transpose(1, 0, 2)
        cache.v[:, pos0:end] = v_new.transpose(1, 0, 2)
        start = 0
        if window is not None:
            start = max(0, pos0 - window + 1)
        if not causal:
            start = 0
        keys = cache.k[:, start:end]  # [n_kv, T, hd]
        vals = cache.v[:, start:end]
        # query rows grouped by kv head: [n_kv, n*g, hd], row r = (token r // g, head r % g)
        qg = q.reshape(n, n_kv, g, hd).transpose(1, 0, 2, 3).reshape(n_kv, n * g, hd)
        bias = None  # additive mask [n, T] for causal / windowed attention
        if causal or window is not None:
            qpos = pos0 + np.arange(n)
            kpos = start + np.arange(end - start)
            d = qpos[:, None] - kpos[None, :]  # [n, T]
            masked = np.zeros(d.shape, dtype=bool)
            if causal:
                masked |= d < 0
            if window is not None:
                masked |= d >= window
            if masked.any():
                bias = np.where(masked, np.float32(-np.inf), np.float32(0.0))[:, None, :]
        o = np.empty((n_kv, n * g, hd), dtype=np.float32)

        def kv_heads(a: int, b: int) -> None:
            s = np.matmul(qg[a:b], keys[a:b].transpose(0, 2, 1))  # [b-a, n*g, T]
            s *= np.float32(scale)
            if softcap:
                s = np.tanh(s / np.float32(softcap)) * np.float32(softcap)
            if bias is not None:
                s4 = s.reshape(b - a, n, g, end - start)  # a view: row r of s is (token r // g, head r % g)
                s4 += bias
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            np.matmul(s, vals[a:b], out=o[a:b])

        # one KV head's scores, softmax and weighted sum per block, on the kernel threads (a prompt's
        # attention took 36 ms a layer for Mistral's shape at 512 tokens on 16 cores before, BLAS threaded)
        run_blocks(kv_heads, n_kv, blas=True)
        return np.ascontiguousarray(o.reshape(n_kv, n, g, hd).transpose(1, 0, 2, 3)).reshape(n, n_head * hd)

    def attention_batch(self, q: Array, k: Array, v: Array, mask: np.ndarray, scale: float) -> Array:
        """Padded bidirectional attention: [b, t, heads, hd] -> [b, t, heads * hd] (padded query rows: zeros)."""
        from embedkit.kernels.cpu.encoder_attention import attention_items

        b, t, h, hd = q.shape
        out = np.empty((b, t, h, hd), dtype=np.float32)
        keep = np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)
        n_keep = keep.sum(axis=1, dtype=np.int64)
        prefix = (keep == (np.arange(t)[None, :] < n_keep[:, None])).all(axis=1)
        q, k, v = (np.ascontiguousarray(a, dtype=np.float32) for a in (q, k, v))
        s = np.float32(scale)
        run_blocks(
            lambda b0, b1: attention_items(q, k, v, keep, n_keep, prefix, s, out, b0, b1),
            b,
            cost=np.where(prefix, n_keep, t).astype(np.float64) ** 2,
            blas=True,
        )
        return out.reshape(b, t, h * hd)

    # -- independent forward passes on several threads -----------------------------------
    def forward_threads(self) -> int:
        """The kernel thread count when BLAS can be held to one thread per caller, else 1."""
        return kernels.get_num_threads() if can_split_blas() else 1

    def concurrent_forwards(self) -> contextlib.AbstractContextManager[None]:
        """Ops run on their calling thread with single-threaded BLAS (see kernels/cpu/row_blocks.py)."""
        return concurrent_callers()

