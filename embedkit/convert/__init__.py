"""Hugging Face model folders -> GGUF files with llama.cpp's names and metadata."""

from embedkit.convert.hf_to_gguf import OUTTYPES, convert_hf_to_gguf
from embedkit.convert.safetensors import read_safetensors

__all__ = ["OUTTYPES", "convert_hf_to_gguf", "read_safetensors"]
