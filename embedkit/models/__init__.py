"""Model architectures keyed by GGUF `general.architecture`, and `load_model`."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedkit.backend import Placement
from embedkit.errors import GGUFError, UnsupportedModelError
from embedkit.gguf import GGUFFile

# architecture -> "module:Class" (imported on first use)
_REGISTRY: dict[str, str] = {
    "llama": "embedkit.models.llama:LlamaModel",
    "gemma3": "embedkit.models.gemma3:Gemma3Model",
    "qwen2": "embedkit.models.qwen2:Qwen2Model",
    "falcon": "embedkit.models.falcon:FalconModel",
    "bert": "embedkit.models.bert:BertModel",
}
# other names for the same tensors and graph
ALIASES: dict[str, str] = {"mistral": "llama"}

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(sorted([*_REGISTRY, *ALIASES]))
# encoders embed text but cannot generate it (no causal cache, no output head)
ENCODER_ARCHITECTURES: tuple[str, ...] = ("bert",)
GENERATIVE_ARCHITECTURES: tuple[str, ...] = tuple(a for a in SUPPORTED_ARCHITECTURES if a not in ENCODER_ARCHITECTURES)


def model_class(arch: str) -> type:
    """The class implementing `arch` (UnsupportedModelError listing the supported ones)."""
    key = ALIASES.get(arch, arch)
    target = _REGISTRY.get(key)
    if target is None:
        raise UnsupportedModelError(
            f"unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def load_model(
    f: GGUFFile | str | os.PathLike[str],
    placement: Placement | Callable[[int], Placement] | None = None,
) -> Any:
    """Open (if a path) a GGUF file and build its model; weights stay mmap'd and quantized.

    `placement` chooses backends per part: a Placement, a factory n_layer -> Placement, or None
    (everything on the CPU).
    """
    if not isinstance(f, GGUFFile):
        f = GGUFFile(Path(f))
    if not f.tensors:  # e.g. llama.cpp's ggml-vocab-*.gguf: metadata and vocabulary only
        raise GGUFError(f"{f.path}: holds no tensors (a vocabulary-only GGUF?); expected a model with its weights")
    return model_class(f.architecture)(f, placement)


__all__ = [
    "ALIASES",
    "ENCODER_ARCHITECTURES",
    "GENERATIVE_ARCHITECTURES",
    "SUPPORTED_ARCHITECTURES",
    "load_model",
    "model_class",
]
