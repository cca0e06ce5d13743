"""The CUDA backend's elementwise ops and norms.

Mixed into `CUDABackend`. Fusions (results unchanged, fewer kernels): RMSNorm and the GLUs write the int8
blocks of their output for the next dp4a matvec (a few rows) or a float16 copy for the next GEMM (a
batch); while recording a graph, `add(x, W @ h)` right after that matvec is folded into it.
"""

from __future__ import annotations

import numpy as np

from embedkit.backend.base import Array, Weight


class CUDAElementwise:
    """`add`, `mul`, `scale`, activations, GLUs, `softmax`, `rms_norm` and `layer_norm` of `CUDABackend`."""

    def _binary(self, a, b, op: int, name: str):
        bv = b.data if isinstance(b, Weight) else b
        key = (name, a.shape, bv.shape, id(b) if isinstance(b, Weight) else None)
        elementwise = self._k.elementwise

        def build():
            out = self._empty(a.shape)
            mv = self.steps.open_launch
            if mv is not None and op == elementwise.ADD and bv.shape == a.shape and not isinstance(b, Weight):
                y = mv.mats[0][3]
                other = a if bv is y else (bv if a is y else None)
                if other is not None and mv.res is None:
                    mv.res, mv.y2 = other, out  # the matvec also writes y + other
                    return out, None
            af, bf, of = a.reshape(a.size), bv.reshape(bv.size), out.reshape(out.size)
            return out, lambda s: elementwise.binary(af, bf, of, op, s)

        return self.steps.op(key, a.shape[0], build)

    def add(self, a: Array, b: Array) -> Array:
        """a + b (b: same shape, or a vector/Weight broadcast over rows)."""
        return self._binary(a, b, self._k.elementwise.ADD, "add")

    def mul(self, a: Array, b: Array) -> Array:
        """a * b (b: same shape, or a vector/Weight broadcast over rows)."""
        return self._binary(a, b, self._k.elementwise.MUL, "mul")

    def _unary(self, x, op: int, s_: float, name: str):
        elementwise = self._k.elementwise

        def build():
            out = self._empty(x.shape)
            return out, lambda s: elementwise.unary(x.reshape(x.size), out.reshape(out.size), op, s_, s)

        return self.steps.op((name, x.shape, s_), x.shape[0], build)

    def scale(self, a: Array, s: float) -> Array:
        """a * s."""
        return self._unary(a, self._k.elementwise.SCALE, float(s), "scale")

    def silu(self, x: Array) -> Array:
        """x * sigmoid(x)."""
        return self._unary(x, self._k.elementwise.SILU, 1.0, "silu")

    def gelu(self, x: Array) -> Array:
        """Tanh-approximated GELU (ggml_gelu)."""
        return self._unary(x, self._k.elementwise.GELU, 1.0, "gelu")

    def gelu_erf(self, x: Array) -> Array:
        """Exact GELU."""
        return self._unary(x, self._k.elementwise.GELU_ERF, 1.0, "gelu_erf")

    def _glu(self, gate, up, op: int, name: str):
        elementwise = self._k.elementwise

        def build():
            out = self._empty(gate.shape)
            want_q, want16 = self._want(gate)
            size = out.size
            if want_q:
                xq, xd = self._k.quant_fast.activation_buffers(gate.shape[0], gate.shape[1], self.stream)
                fn = lambda s: elementwise.glu_fused(  # noqa: E731
                    gate.reshape(size), up.reshape(size), out.reshape(size), op,
                    xq.view(np.int8).reshape(size), xd.reshape(xd.size), None, s,
                )  # fmt: skip
                return out, fn, (xq, xd)
            if want16:
                o16 = self._empty(gate.shape, np.float16)
                self.steps.keep_f16(out, o16)
                fn = lambda s: elementwise.glu_fused(  # noqa: E731
                    gate.reshape(size), up.reshape(size), out.reshape(size), op, None, None, o16.reshape(size), s
                )
                return out, fn
            return out, lambda s: elementwise.glu(gate.reshape(size), up.reshape(size), out.reshape(size), op, s)

        return self.steps.op((name, gate.shape), gate.shape[0], build)

    def swiglu(self, gate: Array, up: Array) -> Array:
        """silu(gate) * up."""
        return self._glu(gate, up, self._k.elementwise.SWIGLU, "swiglu")

    def geglu(self, gate: Array, up: Array) -> Array:
        """gelu_tanh(gate) * up."""
        return self._glu(gate, up, self._k.elementwise.GEGLU, "geglu")

    def softmax(self, x: Array) -> Array:
        """Softmax over the last dimension."""
        softmax = self._k.softmax
        d = x.shape[x.ndim - 1]

        def build():
            out = self._empty(x.shape)
            return out, lambda s: softmax.softmax(x.reshape(x.size // d, d), out.reshape(out.size // d, d), s)

        return self.steps.op(("softmax", x.shape), x.shape[0], build)

    # -- normalization -------------------------------------------------------------------
    def rms_norm(self, x: Array, w: Weight | None, eps: float) -> Array:
        """RMSNorm over the last dimension (any leading shape); a matmul input also gets its int8
        blocks (a few rows) or float16 copy (a batch) in the same kernel."""
        norms = self._k.norms
        d = x.shape[x.ndim - 1]
        wv = w.data if w is not None else None

        def build():
            out = self._empty(x.shape)
            want_q, want16 = self._want(x)
            if (want_q or want16) and norms.rms_norm_fused_ok(d):
                if want_q:
                    xq, xd = self._k.quant_fast.activation_buffers(x.shape[0], d, self.stream)
                    fn = lambda s: norms.rms_norm_fused(x, wv, eps, out, xq.view(np.int8), xd, None, s)  # noqa: E731
                    return out, fn, (xq, xd)
                o16 = self._empty(x.shape, np.float16)
                self.steps.keep_f16(out, o16)
                return out, lambda s: norms.rms_norm_fused(x, wv, eps, out, None, None, o16, s)
            return out, lambda s: norms.rms_norm(x.reshape(x.size // d, d), wv, eps, out.reshape(out.size // d, d), s)

        return self.steps.op(("rms_norm", x.shape, id(w), eps), x.shape[0], build)

    def layer_norm(self, x: Array, w: Weight | None, b: Weight | None, eps: float) -> Array:
        """LayerNorm over the last dimension (any leading shape)."""
        norms = self._k.norms
        d = x.shape[x.ndim - 1]
        wv = w.data if w is not None else None
        bv = b.data if b is not None else None

        def build():
            out = self._empty(x.shape)
            n = x.size // d
            return out, lambda s: norms.layer_norm(x.reshape(n, d), wv, bv, eps, out.reshape(n, d), s)

        return self.steps.op(("layer_norm", x.shape, id(w), id(b), eps), x.shape[0], build)
