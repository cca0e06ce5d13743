"""The ggml tensor type table: one row per type, the single source of block sizes.

Ids and sizes mirror ggml's `ggml_type` enum and `type_traits` (ggml/src/ggml.c).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from embedkit.errors import GGUFError


class GGMLType(IntEnum):
    """ggml tensor element types, with ggml's numeric ids."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


@dataclass(frozen=True)
class TypeInfo:
    """Layout of one ggml type: `block_size` elements stored in `type_size` bytes."""

    ggml_type: GGMLType
    block_size: int
    type_size: int

    @property
    def name(self) -> str:
        return self.ggml_type.name

    @property
    def quantized(self) -> bool:
        return self.block_size > 1

    def row_bytes(self, n_elements: int) -> int:
        """Bytes taken by `n_elements` consecutive elements (a multiple of the block size)."""
        if n_elements % self.block_size:
            raise GGUFError(
                f"{self.name}: {n_elements} elements is not a multiple of the block size {self.block_size}"
            )
        return n_elements // self.block_size * self.type_size


_SIZES: dict[GGMLType, tuple[int, int]] = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q8_1: (32, 40),
    GGMLType.Q2_K: (256, 84),
    GGMLType.Q3_K: (256, 110),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.Q8_K: (256, 292),
    GGMLType.IQ2_XXS: (256, 66),
    GGMLType.IQ2_XS: (256, 74),
    GGMLType.IQ3_XXS: (256, 98),
    GGMLType.IQ1_S: (256, 50),
    GGMLType.IQ4_NL: (32, 18),
    GGMLType.IQ3_S: (256, 110),
    GGMLType.IQ2_S: (256, 82),
    GGMLType.IQ4_XS: (256, 136),
    GGMLType.I8: (1, 1),
    GGMLType.I16: (1, 2),
    GGMLType.I32: (1, 4),
    GGMLType.I64: (1, 8),
    GGMLType.F64: (1, 8),
    GGMLType.IQ1_M: (256, 56),
    GGMLType.BF16: (1, 2),
    GGMLType.TQ1_0: (256, 54),
    GGMLType.TQ2_0: (256, 66),
    GGMLType.MXFP4: (32, 17),
}

GGML_TYPES: dict[GGMLType, TypeInfo] = {t: TypeInfo(t, *bs) for t, bs in _SIZES.items()}


def ggml_type(value: int | str | GGMLType) -> GGMLType:
    """Turn an id, a name such as ``"Q4_K"`` (any case) or a GGMLType into a GGMLType."""
    if isinstance(value, GGMLType):
        return value
    if isinstance(value, str):
        try:
            return GGMLType[value.upper()]
        except KeyError:
            raise GGUFError(f"unknown ggml type name {value!r}") from None
    try:
        return GGMLType(int(value))
    except ValueError:
        raise GGUFError(f"unknown ggml type id {value}") from None


def type_info(value: int | str | GGMLType) -> TypeInfo:
    """The TypeInfo row of a ggml type given by id, name or enum."""
    return GGML_TYPES[ggml_type(value)]
