"""`--device` and `-ngl/--gpu-layers`, shared by the commands that run a model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def device_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--device auto|cpu|cuda` and `-ngl/--gpu-layers N` (llama.cpp's meaning) to a command."""
    fn = click.option(
        "-ngl", "--gpu-layers", "gpu_layers", type=click.IntRange(min=-1), default=None,
        help="Layers on the GPU: 0 none, -1 all (with the output layer; the default with a GPU).",
    )(fn)
    fn = click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
        help="Where to run: auto uses a CUDA GPU when one is usable, else the CPU.",
    )(fn)
    return fn


def placement_from_options(device: str, gpu_layers: int | None, input_on_gpu: bool | None = None):
    """The placement factory that `load_model` / `Embedder` take, from the two options."""
    from embedkit.backend.placement import make_placement

    return make_placement(device, gpu_layers, input_on_gpu=input_on_gpu)
