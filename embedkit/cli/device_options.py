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


def _tensor_split(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Checks --tensor-split while the options are parsed (an InputError: one line, exit 1)."""
    from embedkit.backend.split import parse_tensor_split

    parse_tensor_split(value)
    return value


def _split_mode(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from embedkit.backend.split import check_split_mode

    return None if value is None else check_split_mode(value)


def _main_gpu(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    from embedkit.errors import InputError

    if value is not None and value < 0:
        raise InputError(f"--main-gpu must be >= 0, not {value}")
    return value


def split_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add llama.cpp's multi-GPU options `--split-mode`, `--tensor-split`, `--main-gpu` (backend/split.py)."""
    fn = click.option(
        "-mg", "--main-gpu", "main_gpu", type=int, default=None, callback=_main_gpu,
        help="CUDA device for the whole model with --split-mode none; with layer, the one holding the output "
             "head and token embeddings (default: llama.cpp's choice).",
    )(fn)
    fn = click.option(
        "-ts", "--tensor-split", "tensor_split", default=None, callback=_tensor_split,
        help="Shares of the layers per CUDA device, e.g. 3,1 (default: each device's free memory).",
    )(fn)
    fn = click.option(
        "-sm", "--split-mode", "split_mode", default=None, callback=_split_mode,
        help="Several GPUs: layer (whole layers per device; the default), none (one device) or row (not "
             "implemented yet). Devices: every GPU, or EMBEDKIT_CUDA_DEVICES (e.g. 0,0: two on GPU 0).",
    )(fn)
    return fn


def placement_from_options(
    device: str,
    gpu_layers: int | None,
    input_on_gpu: bool | None = None,
    cpu_math: str | None = None,
    split_mode: str | None = None,
    tensor_split: str | None = None,
    main_gpu: int | None = None,
):
    """The placement factory that `load_model` / `Embedder` take, from the options."""
    from embedkit.backend.placement import make_placement

    return make_placement(device, gpu_layers, input_on_gpu=input_on_gpu, cpu_math=cpu_math, split_mode=split_mode,
                          tensor_split=tensor_split, main_gpu=main_gpu)
