"""The quant registry (embedkit/quant/registry.py) is the one declaration of each type's kernels: the dispatch
tables are exactly what it declares, its layouts agree with the file-format table, and the CUDA backend's type
sets (backend/cuda.py, which does not import the registry yet) agree with it."""

from __future__ import annotations

import pytest

from embedkit.gguf.types import GGML_TYPES, GGMLType
from embedkit.quant import PATHS, QUANT_TYPES, names_with, quant_type, types_with
from embedkit.quant import registry as r


def test_every_type_is_a_gguf_type_with_known_paths() -> None:
    for t, q in QUANT_TYPES.items():
        assert t in GGML_TYPES and q.ggml_type is t
        assert q.paths and q.paths <= set(PATHS)
        assert (q.activation is None) == (q.block_size == 1), q.name
        assert q.has(r.CPU_DEQUANT), f"{q.name}: every type the engine reads can be dequantized"
    assert quant_type(int(GGMLType.Q4_K)) is QUANT_TYPES[GGMLType.Q4_K] and quant_type(GGMLType.IQ2_XXS) is None
    with pytest.raises(ValueError, match="unknown kernel path"):
        types_with("cpu.fast")


def test_cpu_tables_are_the_registry() -> None:
    from embedkit.backend.ggml_cpu import EXACT_MATMUL_TYPES
    from embedkit.kernels.cpu import dispatch, matmul
    from embedkit.kernels.cpu.ggml_exact import dots

    assert list(dispatch.DEQUANTIZERS) == list(types_with(r.CPU_DEQUANT))
    assert set(dispatch.QUANTIZERS) == {t for t in types_with(r.CPU_QUANTIZE) if QUANT_TYPES[t].block_size > 1}
    assert list(matmul.MATVECS) == list(types_with(r.CPU_MATVEC))
    assert list(matmul.INT8_MATVECS) == list(types_with(r.CPU_INT16))
    assert list(matmul.PACKED_MATVECS) == list(types_with(r.CPU_PACKED))
    assert EXACT_MATMUL_TYPES == set(types_with(r.GGML_EXACT))
    # a decode type has one decode kernel family: integer activations or float32 ones
    assert not set(matmul.MATVECS) & set(matmul.INT8_MATVECS)
    assert set(matmul.PACKED_MATVECS) <= set(matmul.INT8_MATVECS)
    # the exact kernels' layout: weight block bytes from the file format, activation blocks as ggml's structs
    for t in types_with(r.GGML_EXACT):
        block, w_bytes, x_bytes = dots._LAYOUT[int(t)]
        assert (block, w_bytes) == (GGML_TYPES[t].block_size, GGML_TYPES[t].type_size)
        assert x_bytes == {"Q8_0": 34, "Q8_1": 36, "Q8_K": 292}[QUANT_TYPES[t].activation.name]


def test_cuda_backend_type_sets_match_the_registry() -> None:
    cuda = pytest.importorskip("embedkit.backend.cuda_weights")
    assert set(names_with(r.CUDA_GENERIC)) == cuda.GENERIC_TYPES
    assert set(names_with(r.CUDA_FAST)) == cuda.FAST_TYPES
    assert set(names_with(r.CUDA_LEGACY)) | set(names_with(r.CUDA_KMATVEC)) <= cuda.GENERIC_TYPES


def test_architecture_doc_table_is_the_registry() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    header = next(line for line in text.splitlines() if line.startswith("| type |"))
    paths = [c.strip() for c in header.strip("|").split("|")][4:]
    assert tuple(paths) == PATHS
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not line.startswith("| ") or cells[0] not in GGMLType.__members__:
            continue
        q = QUANT_TYPES[GGMLType[cells[0]]]
        assert (int(cells[1]), int(cells[2])) == (q.block_size, q.type_size), cells[0]
        assert {p for p, c in zip(paths, cells[4:], strict=True) if c == "x"} == set(q.paths), cells[0]
