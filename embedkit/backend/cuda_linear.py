"""The CUDA backend's matrix ops: embedding rows, decode matvecs (dp4a on int8 blocks) and cuBLAS GEMMs.

Mixed into `CUDABackend`. Matmuls of up to `MATVEC_MAX_ROWS` rows run the quantized matvec kernels
(decode): Q4_0/Q8_0 on their repacked layout (`quant_fast`, up to three matrices sharing an input in one
launch), K-quants and the other legacy types on int8 activation blocks (`quant_kmatvec`, `quant_legacy`),
anything else on float32 activations (`quant_generic`). Larger batches dequantize the weight to float16
and call cuBLAS (prompt, embeddings). The int8 blocks and float16 copies of an input are made once per
step and shared by its matmuls (the step recorder's memos).
"""

from __future__ import annotations

import numpy as np

from embedkit.backend.base import Array, Backend, Weight
from embedkit.backend.cuda_weights import DeviceMatrix

MATVEC_MAX_ROWS = 8  # up to this many tokens a matmul streams the quantized weight once per token


class MatvecLaunch:
    """One dp4a matvec launch over 1-3 matrices sharing (xq, xd); mutable until it runs (fusions:
    `res`, `y2` make it also write y + res into y2)."""

    __slots__ = ("fast", "mats", "xq", "xd", "res", "y2", "kernels")

    def __init__(self, kernels, fast: str, mats: list, xq, xd) -> None:
        self.kernels, self.fast, self.mats, self.xq, self.xd = kernels, fast, mats, xq, xd
        self.res = self.y2 = None

    def __call__(self, stream) -> None:
        self.kernels.matvec_multi(self.fast, self.mats, self.xq, self.xd, self.res, self.y2, stream)


class CUDALinear:
    """`get_rows`, `matmul` and `matmuls` of `CUDABackend`."""

    def get_rows(self, w: Weight, ids: np.ndarray) -> Array:
        """Dequantize rows `ids` of a matrix into [n, n_cols] float32."""
        quant_generic = self._k.quant_generic
        m: DeviceMatrix = w.data
        ids_dev = self.steps.input(np.asarray(ids, dtype=np.int32).reshape(-1), ("ids",))
        n = ids_dev.shape[0]

        def build():
            out = self._empty((n, m.n_cols))
            return out, lambda s: quant_generic.dequantize_rows(m.layout, m.views, ids_dev, out, s)

        return self.steps.op(("get_rows", id(w), n), n, build)

    def _quantized(self, x):
        """int8 blocks of x for the dp4a kernels, shared by matmuls of the same input."""
        blocks = self.steps.blocks_of(x)
        if blocks is not None:
            return blocks
        quant_fast = self._k.quant_fast

        def build():
            xq, xd = quant_fast.activation_buffers(x.shape[0], x.shape[1], self.stream)
            return (xq, xd), lambda s: quant_fast.quantize_activations(x, xq, xd, s)

        blocks = self.steps.op(("quantize", x.shape), x.shape[0], build)
        self.steps.keep_blocks(x, blocks)
        return blocks

    def _fast_ok(self, x, ws: list[Weight]) -> bool:
        """Whether the dp4a matvec takes x @ W.T for every W (a few rows, Q4_0/Q8_0 of one type)."""
        m0: DeviceMatrix = ws[0].data
        return (
            x.ndim == 2
            and x.shape[0] <= MATVEC_MAX_ROWS
            and m0.fast is not None
            and m0.n_cols % 32 == 0
            and all(w.data.fast == m0.fast and w.data.n_cols == m0.n_cols for w in ws)
        )

    def matmul(self, x: Array, w: Weight, bias: Weight | None = None) -> Array:
        """[n, n_in] @ W.T (+ bias): quantized matvec for small n, float16 cuBLAS GEMM otherwise."""
        m: DeviceMatrix = w.data
        if x.ndim != 2:
            x = self.view(x, (x.size // m.n_cols, m.n_cols))
        if self._fast_ok(x, [w]):
            return self._matvec_fast(x, [w], [bias])[0]
        n = x.shape[0]
        b = bias.data if bias is not None else None
        if n > MATVEC_MAX_ROWS and self._cp is not None:
            return self._gemm(x, m, b)
        launch = self.int8_matvecs.get(m.layout)
        if launch is not None:
            return self._int8_matvec(x, w, b, launch)
        quant_generic = self._k.quant_generic

        def build():
            y = self._empty((n, m.n_rows))
            return y, lambda s: quant_generic.matvec(m.layout, m.views, x, b, y, s)

        return self.steps.op(("matvec", id(w), n, bias is not None), n, build)

    def _int8_matvec(self, x, w: Weight, b, launch):
        """A decode matvec on int8 activation blocks (dp4a), the blocks shared with other matmuls of x."""
        m: DeviceMatrix = w.data
        xq, xd = self._quantized(x)
        n = x.shape[0]

        def build():
            y = self._empty((n, m.n_rows))
            return y, lambda s: launch(m.layout, m.views, xq, xd, b, y, s)

        return self.steps.op(("int8_matvec", id(w), n, b is not None), n, build)

    def matmuls(self, x: Array, ws: list[Weight], biases: list[Weight | None] | None = None) -> list[Array]:
        """Several x @ W.T (+ b) with one input: up to three Q4_0/Q8_0 matvecs in one launch."""
        biases = list(biases or [None] * len(ws))
        if (
            len(ws) <= 3
            and self._fast_ok(x, ws)
            and (all(b is None for b in biases) or all(b is not None for b in biases))
        ):
            return self._matvec_fast(x, ws, biases)
        return Backend.matmuls(self, x, ws, biases)

    def _matvec_fast(self, x, ws: list[Weight], biases: list) -> list:
        """One dp4a launch for 1-3 repacked matrices; a single one stays open for a residual fusion."""
        xq, xd = self._quantized(x)
        n = x.shape[0]

        def build():
            ys = [self._empty((n, w.data.n_rows)) for w in ws]
            mats = [
                (w.data.views[0], w.data.views[1], b.data if b is not None else None, y)
                for w, b, y in zip(ws, biases, ys, strict=True)
            ]
            return ys, MatvecLaunch(self._k.quant_fast, ws[0].data.fast, mats, xq, xd)

        key = ("matvec_fast", tuple(id(w) for w in ws), n, biases[0] is not None)
        return self.steps.op(key, n, build, keep_open=len(ws) == 1)

    def _f16_input(self, x):
        """Float16 copy of x for the GEMMs (from the op that made x, or converted once)."""
        x16 = self.steps.f16_of(x)
        if x16 is not None:
            return x16
        elementwise = self._k.elementwise

        def build():
            x16 = self._empty(x.shape, np.float16)
            scale = elementwise.SCALE
            return x16, lambda s: elementwise.unary(x.reshape(x.size), x16.reshape(x16.size), scale, 1.0, s)

        x16 = self.steps.op(("to_f16", x.shape), x.shape[0], build)
        self.steps.keep_f16(x, x16)
        return x16

    def _gemm(self, x, m: DeviceMatrix, b):
        elementwise, gemm = self._k.elementwise, self._k.gemm
        n = x.shape[0]

        def build():
            x16 = self._f16_input(x)
            y = self._empty((n, m.n_rows))

            def fn(s):
                w16 = self._f16_weight(m, s)
                gemm.gemm_f16(x16, w16, y, self._cp_stream.ptr)
                if b is not None:
                    yf = y.reshape(y.size)
                    elementwise.binary(yf, b, yf, elementwise.ADD, s)

            return y, fn

        return self.steps.op(("gemm", id(m), n), n, build)

    def _want(self, x) -> tuple[bool, bool]:
        """(int8 blocks, float16 copy): what the next matmul of x [n, d] will read."""
        if x.ndim != 2:
            return False, False
        n, d = x.shape
        if n <= MATVEC_MAX_ROWS:
            return d % 32 == 0, False
        return False, self._cp is not None
