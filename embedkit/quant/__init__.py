"""The quant type registry: each ggml type the engine reads, its block layout and its kernel paths."""

from embedkit.quant.registry import PATHS, QUANT_TYPES, QuantType, names_with, quant_type, types_with

__all__ = ["PATHS", "QUANT_TYPES", "QuantType", "names_with", "quant_type", "types_with"]
