"""Run single ggml ops on llama.cpp's CPU backend through ctypes (the oracle for ggml_exact's elementwise ops).

Each call builds a one- or two-node ggml graph in a fresh context, fills the inputs, and computes it with
`ggml_graph_compute_with_ctx` (the CPU backend's own thread loop, so RMS_NORM + MUL pairs go through the
same fusion check as a real llama.cpp run). Needs llama-cpp-python's bundled libggml-base/libggml-cpu.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ggml_ctypes.py is here; tests may load this file by path
from ggml_ctypes import InitParams, load_ggml, tensor_struct  # noqa: E402

TYPE_F32, TYPE_F16, TYPE_Q5_0, TYPE_Q8_0, TYPE_I32 = 0, 1, 6, 8, 26
ROPE_NORMAL, ROPE_NEOX = 0, 2


class Oracle:
    """ctypes handles on ggml; methods take and return numpy arrays (shape = reversed ggml ne)."""

    def __init__(self, n_threads: int = 2):
        self.base, self.cpu = load_ggml()
        self.n_threads = n_threads
        P = ctypes.c_void_p
        b, c = self.base, self.cpu
        for name in ("ggml_add", "ggml_mul", "ggml_get_rows", "ggml_geglu_split", "ggml_swiglu_split"):
            f = getattr(b, name)
            f.restype, f.argtypes = P, [P, P, P]
        b.ggml_rms_norm.restype, b.ggml_rms_norm.argtypes = P, [P, P, ctypes.c_float]
        b.ggml_scale.restype, b.ggml_scale.argtypes = P, [P, P, ctypes.c_float]
        b.ggml_rope_ext.restype = P
        b.ggml_rope_ext.argtypes = [P, P, P, P, ctypes.c_int, ctypes.c_int, ctypes.c_int] + [ctypes.c_float] * 6
        self.gelu_table_ptr = ctypes.cast(c.ggml_table_gelu_f16, ctypes.c_void_p).value

    # -- plumbing -------------------------------------------------------------------------------------
    def _ctx(self, n_bytes: int):
        return self.base.ggml_init(InitParams(n_bytes + (64 << 20), None, False))

    def _tensor(self, ctx, ttype: int, ne: tuple[int, ...], raw: bytes | None = None):
        t = getattr(self.base, f"ggml_new_tensor_{len(ne)}d")(ctx, ttype, *ne)
        if raw is not None:
            ctypes.memmove(tensor_struct(t).data, raw, len(raw))
        return t

    def _f32(self, ctx, a: np.ndarray):
        a = np.ascontiguousarray(a, dtype=np.float32)
        return self._tensor(ctx, TYPE_F32, a.shape[::-1], a.tobytes())

    @staticmethod
    def _read(t, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        buf = (ctypes.c_float * n).from_address(tensor_struct(t).data)
        return np.frombuffer(buf, dtype=np.float32, count=n).reshape(shape).copy()

    def _compute(self, ctx, out):
        gf = self.base.ggml_new_graph(ctx)
        self.base.ggml_build_forward_expand(gf, out)
        if self.cpu.ggml_graph_compute_with_ctx(ctx, gf, self.n_threads) != 0:
            raise RuntimeError("ggml_graph_compute_with_ctx failed")

    def _run(self, build, n_bytes: int, shape: tuple[int, ...]) -> np.ndarray:
        ctx = self._ctx(n_bytes)
        try:
            out = build(ctx)
            self._compute(ctx, out)
            return self._read(out, shape)
        finally:
            self.base.ggml_free(ctx)

    # -- ops ------------------------------------------------------------------------------------------
    def binary(self, op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """ggml_add / ggml_mul of float32 a and b (b broadcast along a's rows, as ggml_can_repeat)."""
        f = {"add": self.base.ggml_add, "mul": self.base.ggml_mul}[op]
        return self._run(lambda ctx: f(ctx, self._f32(ctx, a), self._f32(ctx, b)), 3 * a.nbytes, a.shape)

    def scale(self, x: np.ndarray, s: float) -> np.ndarray:
        """ggml_scale(x, s)."""
        return self._run(lambda ctx: self.base.ggml_scale(ctx, self._f32(ctx, x), s), 2 * x.nbytes, x.shape)

    def rms_norm(self, x: np.ndarray, eps: float) -> np.ndarray:
        """ggml_rms_norm over the last axis."""
        return self._run(lambda ctx: self.base.ggml_rms_norm(ctx, self._f32(ctx, x), eps), 2 * x.nbytes, x.shape)

    def rms_norm_mul(self, x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, bool]:
        """ggml_mul(ggml_rms_norm(x, eps), w) as llama.cpp's build_norm makes it; also whether the CPU backend
        fused the pair (the RMS_NORM node's own buffer, pre-filled with NaN, stays untouched when fused)."""
        ctx = self._ctx(4 * x.nbytes)
        try:
            norm = self.base.ggml_rms_norm(ctx, self._f32(ctx, x), eps)
            ctypes.memset(tensor_struct(norm).data, 0xFF, x.nbytes)
            out = self.base.ggml_mul(ctx, norm, self._f32(ctx, w))
            self._compute(ctx, out)
            fused = bool(np.isnan(self._read(norm, x.shape)).all())
            return self._read(out, x.shape), fused
        finally:
            self.base.ggml_free(ctx)

    def rope(self, x: np.ndarray, pos: np.ndarray, n_rot: int, base: float, mode: int, freq_scale: float = 1.0,
             attn_factor: float = 1.0) -> np.ndarray:
        """ggml_rope_ext(x [n, heads, head_dim], pos int32 [n]) with ext_factor 0 (llama.cpp's non-YaRN setting)."""

        def build(ctx):
            p = np.ascontiguousarray(pos, dtype=np.int32)
            tp = self._tensor(ctx, TYPE_I32, (len(p),), p.tobytes())
            return self.base.ggml_rope_ext(ctx, self._f32(ctx, x), tp, None, n_rot, mode, 32768, base, freq_scale,
                                           0.0, attn_factor, 32.0, 1.0)

        return self._run(build, 2 * x.nbytes + 4 * len(pos), x.shape)

    def glu(self, kind: str, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        """ggml_geglu_split / ggml_swiglu_split(gate, up) = act(gate) * up."""
        f = {"geglu": self.base.ggml_geglu_split, "swiglu": self.base.ggml_swiglu_split}[kind]
        return self._run(lambda ctx: f(ctx, self._f32(ctx, gate), self._f32(ctx, up)), 3 * gate.nbytes, gate.shape)

    def get_rows(self, raw: np.ndarray, qtype: int, n_cols: int, ids: np.ndarray) -> np.ndarray:
        """ggml_get_rows of a quantized matrix given as its raw bytes [n_rows, row_bytes]."""

        def build(ctx):
            w = self._tensor(ctx, qtype, (n_cols, raw.shape[0]), np.ascontiguousarray(raw).tobytes())
            i = np.ascontiguousarray(ids, dtype=np.int32)
            return self.base.ggml_get_rows(ctx, w, self._tensor(ctx, TYPE_I32, (len(i),), i.tobytes()))

        return self._run(build, raw.nbytes + 8 * n_cols * len(ids), (len(ids), n_cols))

    def gelu_table(self) -> np.ndarray:
        """ggml_table_gelu_f16 (uint16 [65536]): the CPU backend's float16 GELU for every float16 input."""
        return np.frombuffer((ctypes.c_uint16 * 65536).from_address(self.gelu_table_ptr), dtype=np.uint16).copy()


def fusion_disabled() -> bool:
    """Whether GGML_CPU_DISABLE_FUSION=1 is set (read by ggml_cpu_init)."""
    return os.environ.get("GGML_CPU_DISABLE_FUSION", "") == "1"
