"""Every ggml tensor type the engine reads, declared once: block layout, activation format, kernel paths.

Block sizes and bytes per block come from the file-format table (`embedkit.gguf.types`); this table adds
what the engine does with each type. The dispatch tables of the kernels (`kernels.cpu.dispatch`,
`kernels.cpu.matmul`, `kernels.cpu.ggml_exact.dots`, `backend.ggml_cpu`, `kernels.cuda.*`) are derived
from it, and so are the tests' parametrisations; a kernel module names its functions after the type
(`dequant_q4_k`, `matvec_q4_k_i8`, ...), so adding a type is a row here plus its kernels.

Paths (which kernel family implements `x @ W.T` or a conversion for the type):

| path | module | what |
|---|---|---|
| cpu.dequant | kernels/cpu/dequant | GGUF rows -> float32 (get_rows; prompt matmuls: tiles + BLAS) |
| cpu.quantize | kernels/cpu/quantizers | float32 -> GGUF rows (random test weights, `convert`) |
| cpu.matvec | kernels/cpu/matvec_legacy, matvec_kquants | decode matvec, float32 activations |
| cpu.int16 | kernels/cpu/matvec_int8, multirow_int16 | decode (1 or 2-8 rows), x in int16 blocks (before cpu.matvec) |
| cpu.packed | kernels/cpu/<type>_packed | cpu.int16 on a layout repacked at the first decode |
| cpu.multirow | kernels/cpu/matmul_multirow | a few rows (short prompts): each block dequantized once for all rows |
| ggml_exact | kernels/cpu/ggml_exact | llama.cpp's x86 AVX2 kernels, bit for bit (`--cpu-math ggml`) |
| cuda.generic | kernels/cuda/quant_elem, quant_generic | element decode: dequantize, float32 matvec |
| cuda.fast | kernels/cuda/quant_fast | repacked at upload, int8 activations, dp4a |
| cuda.legacy | kernels/cuda/quant_legacy | GGUF bytes, int8 activations, dp4a |
| cuda.kmatvec | kernels/cuda/quant_kmatvec | K-quant decode matvecs, int8 activations, dp4a |
"""

from __future__ import annotations

from dataclasses import dataclass

from embedkit.gguf.types import GGMLType, type_info

CPU_DEQUANT = "cpu.dequant"
CPU_QUANTIZE = "cpu.quantize"
CPU_MATVEC = "cpu.matvec"
CPU_INT16 = "cpu.int16"
CPU_PACKED = "cpu.packed"
CPU_MULTIROW = "cpu.multirow"
GGML_EXACT = "ggml_exact"
CUDA_GENERIC = "cuda.generic"
CUDA_FAST = "cuda.fast"
CUDA_LEGACY = "cuda.legacy"
CUDA_KMATVEC = "cuda.kmatvec"
PATHS = (CPU_DEQUANT, CPU_QUANTIZE, CPU_MATVEC, CPU_INT16, CPU_PACKED, CPU_MULTIROW, GGML_EXACT,
         CUDA_GENERIC, CUDA_FAST, CUDA_LEGACY, CUDA_KMATVEC)  # fmt: skip


# Bytes per block of the activation types llama.cpp's CPU kernels quantize x to (ggml's block_q8_0, block_q8_1,
# block_q8_K). ggml's block_q8_1 holds two float16 (d, s): 36 bytes, where gguf-py's size table (and
# embedkit.gguf.types, which mirrors it for reading files) still says 40; no GGUF file holds Q8_1 tensors.
ACTIVATION_BLOCK_BYTES = {GGMLType.Q8_0: 34, GGMLType.Q8_1: 36, GGMLType.Q8_K: 292}


@dataclass(frozen=True)
class QuantType:
    """One ggml type: its block's fields (ggml's block_<type>), the byte offsets of its float16 scale fields
    in a block (where random test blocks put finite scales), the activation type llama.cpp's CPU build
    quantizes x to before a matmul with it (its vec_dot_type; None for float types), and its kernel paths."""

    ggml_type: GGMLType
    layout: str
    f16_scales: tuple[int, ...]
    activation: GGMLType | None
    paths: frozenset[str]

    @property
    def name(self) -> str:
        """ggml's name, e.g. `Q4_K`."""
        return self.ggml_type.name

    @property
    def kernel_suffix(self) -> str:
        """How kernel functions spell the type (`dequant_q4_k`)."""
        return self.ggml_type.name.lower()

    @property
    def block_size(self) -> int:
        """Elements per block."""
        return type_info(self.ggml_type).block_size

    @property
    def type_size(self) -> int:
        """Bytes per block."""
        return type_info(self.ggml_type).type_size

    @property
    def activation_bytes(self) -> int:
        """Bytes per block of the activation type (`activation`)."""
        if self.activation is None:
            raise ValueError(f"{self.name} has no activation type")
        return ACTIVATION_BLOCK_BYTES[self.activation]

    def has(self, path: str) -> bool:
        """Whether `path` has a kernel for this type."""
        return path in self.paths


def _q(t: GGMLType, layout: str, f16_scales: tuple[int, ...], activation: GGMLType | None, *paths: str) -> QuantType:
    unknown = set(paths) - set(PATHS)
    if unknown:
        raise ValueError(f"{t.name}: unknown kernel paths {sorted(unknown)}")
    return QuantType(t, layout, f16_scales, activation, frozenset(paths))


_T = GGMLType
QUANT_TYPES: dict[GGMLType, QuantType] = {
    q.ggml_type: q
    for q in (
        _q(_T.F32, "f32", (), None, CPU_DEQUANT, CPU_QUANTIZE, CUDA_GENERIC),
        _q(_T.F16, "f16", (), None, CPU_DEQUANT, CPU_QUANTIZE, CPU_MATVEC, CUDA_GENERIC),
        _q(_T.BF16, "bf16", (), None, CPU_DEQUANT, CPU_QUANTIZE, CPU_MATVEC),
        _q(_T.Q4_0, "f16 d; u8 qs[16] (4-bit, -8)", (0,), _T.Q8_0,
           CPU_DEQUANT, CPU_QUANTIZE, CPU_INT16, CPU_MULTIROW, GGML_EXACT, CUDA_GENERIC, CUDA_FAST),
        _q(_T.Q4_1, "f16 d, m; u8 qs[16] (4-bit)", (0, 2), _T.Q8_1,
           CPU_DEQUANT, CPU_QUANTIZE, CPU_INT16, CPU_MULTIROW, CPU_PACKED, GGML_EXACT, CUDA_GENERIC, CUDA_LEGACY),
        _q(_T.Q5_0, "f16 d; u8 qh[4]; u8 qs[16] (5-bit, -16)", (0,), _T.Q8_0,
           CPU_DEQUANT, CPU_QUANTIZE, CPU_INT16, CPU_MULTIROW, CPU_PACKED, GGML_EXACT, CUDA_GENERIC, CUDA_LEGACY),
        _q(_T.Q5_1, "f16 d, m; u8 qh[4]; u8 qs[16] (5-bit)", (0, 2), _T.Q8_1,
           CPU_DEQUANT, CPU_QUANTIZE, CPU_INT16, CPU_MULTIROW, CUDA_GENERIC, CUDA_LEGACY),
        _q(_T.Q8_0, "f16 d; i8 qs[32]", (0,), _T.Q8_0,
           CPU_DEQUANT, CPU_QUANTIZE, CPU_INT16, CPU_MULTIROW, GGML_EXACT, CUDA_GENERIC, CUDA_FAST),
        _q(_T.IQ4_NL, "f16 d; u8 qs[16] (4-bit indices into a 16-value table)", (0,), _T.Q8_0, CPU_DEQUANT, CPU_MATVEC),
        _q(_T.Q2_K, "u8 scales[16]; u8 qs[64]; f16 d, dmin", (80, 82), _T.Q8_K, CPU_DEQUANT),
        _q(_T.Q3_K, "u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d", (108,), _T.Q8_K, CPU_DEQUANT),
        _q(_T.Q4_K, "f16 d, dmin; u8 scales[12] (6-bit); u8 qs[128]", (0, 2), _T.Q8_K,
           CPU_DEQUANT, CPU_QUANTIZE, CPU_INT16, CPU_MULTIROW, GGML_EXACT, CUDA_GENERIC, CUDA_KMATVEC),
        _q(_T.Q5_K, "f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]", (0, 2), _T.Q8_K,
           CPU_DEQUANT, CPU_MATVEC, GGML_EXACT),
        _q(_T.Q6_K, "u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d", (208,), _T.Q8_K,
           CPU_DEQUANT, CPU_QUANTIZE, CPU_INT16, CPU_MULTIROW, GGML_EXACT, CUDA_GENERIC, CUDA_KMATVEC),
        _q(_T.IQ4_XS, "f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]", (0,), _T.Q8_K, CPU_DEQUANT, CPU_MATVEC),
    )
}  # fmt: skip


def quant_type(t: GGMLType | int) -> QuantType | None:
    """The registry row of a type, or None for a type the engine does not read."""
    return QUANT_TYPES.get(GGMLType(int(t)))


def types_with(path: str) -> tuple[GGMLType, ...]:
    """Types with a kernel on `path`, in ggml's id order."""
    if path not in PATHS:
        raise ValueError(f"unknown kernel path {path!r}; known: {', '.join(PATHS)}")
    return tuple(sorted((t for t, q in QUANT_TYPES.items() if path in q.paths), key=int))


def names_with(path: str) -> tuple[str, ...]:
    """`types_with(path)` as ggml names (the CUDA kernels key their tables by name)."""
    return tuple(t.name for t in types_with(path))
