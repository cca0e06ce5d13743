"""`--device`, `-ngl/--gpu-layers` and `--cpu-math`, shared by the commands that run a model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def device_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add `--device auto|cpu|cuda`, `-ngl/--gpu-layers N` (llama.cpp's meaning) and `--cpu-math` to a command."""
    fn = click.option(
        "--cpu-math", "cpu_math", type=click.Choice(["float32", "ggml"]), default=None,
        help="Decoders' CPU arithmetic: float32 (default; EMBEDKIT_CPU_MATH) or ggml, bit-identical to "
             "llama.cpp's x86 AVX2 CPU build.",
    )(fn)
    fn = click.option(
        "-ngl", "--gpu-layers", "gpu_layers", type=click.IntRange(min=-1), default=None,
        help="Layers on the GPU: 0 none, -1 all (with the output layer; the default with a GPU).",
    )(fn)
    fn = click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
        help="Where to run: auto uses a CUDA GPU when one is usable, else the CPU.",
    )(fn)
    return fn


def placement_from_options(
    device: str, gpu_layers: int | None, input_on_gpu: bool | None = None, cpu_math: str | None = None
):
    """The placement factory that `load_model` / `Embedder` take, from the options."""
    from embedkit.backend.placement import make_placement

    return make_placement(device, gpu_layers, input_on_gpu=input_on_gpu, cpu_math=cpu_math)
