"""The CUDA backend's weights: uploads (Q4_0/Q8_0 repacked), float16 copies for GEMMs, host matmuls.

Mixed into `CUDABackend`. Vectors are uploaded as float32; matrices stay quantized: Q4_0 and Q8_0 are
repacked into aligned quants + float16 scales for the dp4a decode kernels, other types keep their GGUF
bytes (read through uint8/float16/float32 views by `quant_generic`). A CPU layer's prompt matmul may
run here too (`offload_takes` / `host_matmuls`), its weight crossing the bus for the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedkit.backend.base import Weight
from embedkit.errors import UnsupportedQuantError
from embedkit.gguf import GGMLType

F16_CACHE_MAX_BYTES = 64 << 20  # keep a float16 copy of matrices up to this size for GEMMs
# partial offload: a CPU layer's matmul over at least this many tokens runs here, its weight crossing
# the bus for the call (llama.cpp's threshold for the same move)
OFFLOAD_MIN_TOKENS = 32

GENERIC_TYPES = {"F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K"}  # quant_generic reads
FAST_TYPES = {"Q4_0", "Q8_0"}  # repacked at upload for quant_fast


@dataclass
class DeviceMatrix:
    """A weight matrix in VRAM: `views` (a uint8, b float16, c float32) as `quant_elem` reads them;
    `fast`: the repacked type (`quant_fast`) or None; `f16`: a cached float16 copy for GEMMs."""

    layout: str
    fast: str | None
    views: tuple
    n_rows: int
    n_cols: int
    f16: Any = None


def type_name(ggml_type: int) -> str:
    """The ggml type's name (Q4_0, F16, ...)."""
    return GGMLType(int(ggml_type)).name


def bytes_per_token(m: DeviceMatrix) -> int:
    """Bytes a matvec reads from this matrix (quants + scales), for bandwidth-floor arithmetic: each
    device buffer once (a layout's uint8/float16/float32 views of one upload share their memory)."""
    buffers = {v.__cuda_array_interface__["data"][0]: v.nbytes for v in m.views if v.size > 1}
    return int(sum(buffers.values()))


class CUDAWeights:
    """`weight`, `upload_matrix`, `offload_takes`, `host_matmuls` and the float16 weight copies of
    `CUDABackend`."""

    def weight(self, t) -> Weight:
        """Upload a GGUF TensorInfo once: vectors as float32, matrices quantized (Q4_0/Q8_0 repacked)."""
        from embedkit import kernels

        self.steps.forget()  # a new model
        shape = tuple(int(s) for s in t.np_shape)
        gtype = int(t.ggml_type)
        name = type_name(gtype)
        if len(shape) == 1:
            data = (
                t.data.view(np.float32)
                if gtype == GGMLType.F32
                else kernels.dequantize(t.data, gtype, (1, shape[0])).reshape(shape[0])
            )
            dev = self._cuda.to_device(np.ascontiguousarray(data, dtype=np.float32), stream=self.stream)
            return Weight(t.name, int(GGMLType.F32), shape, dev)
        if len(shape) > 2:
            shape = (int(np.prod(shape[:-1])), shape[-1])
        if name not in GENERIC_TYPES:
            raise UnsupportedQuantError(f"{t.name}: ggml type {name} has no CUDA kernel")
        return Weight(t.name, gtype, shape, self.upload_matrix(np.asarray(t.data), name, *shape))

    def upload_matrix(self, raw: np.ndarray, type_name: str, n_rows: int, n_cols: int) -> DeviceMatrix:
        """Upload raw GGUF bytes of a [n_rows, n_cols] matrix of `type_name` into a DeviceMatrix."""
        quant_fast = self._k.quant_fast
        raw = np.ascontiguousarray(raw).reshape(n_rows, -1)
        dev = self._cuda.to_device(raw, stream=self.stream)
        if type_name in FAST_TYPES:
            qs, d = quant_fast.repack(dev, type_name, n_rows, n_cols, self.stream)
            self.stream.synchronize()
            del dev
            return DeviceMatrix(type_name + "R", type_name, (qs, d, self._dummy_f32), n_rows, n_cols)
        row_bytes = raw.shape[1]
        c = dev.view(np.float32) if row_bytes % 4 == 0 else self._dummy_f32
        return DeviceMatrix(type_name, None, (dev, dev.view(np.float16), c), n_rows, n_cols)

    def offload_takes(self, x: np.ndarray, w: Weight) -> bool:
        """Whether `host_matmuls` should run x @ W.T for a CPU layer: a batch of OFFLOAD_MIN_TOKENS or
        more against a matrix of a type these kernels read."""
        return (
            x.ndim == 2
            and x.shape[0] >= OFFLOAD_MIN_TOKENS
            and len(w.shape) == 2
            and isinstance(w.data, np.ndarray)
            and type_name(w.ggml_type) in GENERIC_TYPES
        )

    def host_matmuls(self, x: np.ndarray, ws: list[Weight]) -> list[np.ndarray]:
        """x @ W.T for host x [n, k] and CPU-resident weights W (their raw GGUF rows): x goes up once, each
        W is uploaded for this call only, dequantized to float16 and multiplied by cuBLAS; the results
        come back to the host. A prompt batch does far more arithmetic per weight byte than the CPU does
        in the time the bus takes to carry the bytes."""
        xd = self.asarray(x)
        ys = []
        for w in ws:
            n_rows, n_cols = w.shape
            m = self.upload_matrix(w.data, type_name(w.ggml_type), n_rows, n_cols)
            ys.append(self.to_host(self.matmul(xd, Weight(w.name, w.ggml_type, w.shape, m))))
            del m  # the upload goes back to the pool before the next one
        self.stats.extra["host_matmuls"] = self.stats.extra.get("host_matmuls", 0) + len(ws)
        return ys

    def _f16_weight(self, m: DeviceMatrix, stream):
        """Float16 copy of W (cached for small matrices, else a fresh pool buffer)."""
        if m.f16 is not None:
            return m.f16
        w16 = self._empty((m.n_rows, m.n_cols), np.float16)
        if m.fast is not None:
            self._k.quant_fast.dequantize_f16(m.fast, m.views[0], m.views[1], w16, stream)
        else:
            self._k.quant_generic.dequantize_all(m.layout, m.views, w16, stream)
        if m.n_rows * m.n_cols * 2 <= F16_CACHE_MAX_BYTES:
            m.f16 = w16
        return w16
