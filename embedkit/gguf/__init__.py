"""GGUF file format: the mmap reader, the ggml type table and a small writer."""

from embedkit.gguf.constants import ValueType
from embedkit.gguf.reader import GGUFFile, StringArray, TensorInfo
from embedkit.gguf.types import GGML_TYPES, GGMLType, TypeInfo, ggml_type, type_info

__all__ = [
    "GGML_TYPES",
    "GGMLType",
    "GGUFFile",
    "StringArray",
    "TensorInfo",
    "TypeInfo",
    "ValueType",
    "ggml_type",
    "type_info",
]
