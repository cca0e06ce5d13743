"""Small GGUF files built with our writer for reader tests (every value type, a few tensors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit.gguf import ValueType
from embedkit.gguf.writer import GGUFWriter


def write_sample(path: Path, seed: int = 0) -> Path:
    """A GGUF v3 file with every metadata value type, nested arrays and F32/F16/Q8_0 tensors."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter("llama")
    w.add("general.name", "sample")
    w.add("test.u8", 7, ValueType.UINT8)
    w.add("test.i8", -7, ValueType.INT8)
    w.add("test.u16", 65000, ValueType.UINT16)
    w.add("test.i16", -32000, ValueType.INT16)
    w.add("test.u32", 4_000_000_000, ValueType.UINT32)
    w.add("test.i32", -2_000_000_000, ValueType.INT32)
    w.add("test.f32", 0.25, ValueType.FLOAT32)
    w.add("test.bool", True, ValueType.BOOL)
    w.add("test.str", "héllo wörld ✓")
    w.add("test.u64", 2**63 + 5, ValueType.UINT64)
    w.add("test.i64", -(2**62), ValueType.INT64)
    w.add("test.f64", 1.0 / 3.0, ValueType.FLOAT64)
    w.add("test.arr_f32", rng.standard_normal(17).astype(np.float32))
    w.add("test.arr_str", [f"tok{i}" * (i % 4) for i in range(50)], ValueType.ARRAY, ValueType.STRING)
    w.add("test.arr_nested", [[1, 2, 3], [4], []], ValueType.ARRAY, ValueType.ARRAY)
    w.add("test.arr_bool", np.array([True, False, True]), ValueType.ARRAY, ValueType.BOOL)
    w.add_tensor("a.weight", rng.standard_normal((4, 64)).astype(np.float32))
    w.add_tensor("b.weight", rng.standard_normal((3, 32)).astype(np.float32), "F16")
    q8 = rng.integers(0, 256, size=(2, 2 * 34), dtype=np.uint8)
    q8.reshape(2, 2, 34)[:, :, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    w.add_tensor("c.weight", q8, "Q8_0", (2, 64))
    return w.write(path)
