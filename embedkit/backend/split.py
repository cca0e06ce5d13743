"""A model over several GPUs: `--split-mode`, `--tensor-split`, `--main-gpu`, with `-ngl`, as llama.cpp.

`layer` (the default with more than one device) gives each device a contiguous run of whole layers: their
weights and KV caches live there, and the hidden state crosses to the next device once per forward
(`cuda_devices.hand_off`: a device-to-device copy where peer access works, else through the host). The
model code is unchanged: a split is a `Placement` whose layers name several backends, one per device.
`none` puts the GPU layers on one device (`--main-gpu`); `row` (each matrix split across the devices) is
not implemented and says so.

Devices are logical: `EMBEDKIT_CUDA_DEVICES=0,1` lists the physical GPU of each (default: every GPU of the
host once); `0,0` puts two logical devices on one GPU, each with its own backend, weights, KV caches and
stream, so one GPU (or the CUDA simulator) runs every path of a split, the copies included.

The layer assignment is llama.cpp's (`llama_model::load_tensors`): the first `n_layer - ngl` layers stay on
the CPU; the shares are normalised into cumulative split points, and GPU layer j of the `min(ngl, n_layer +
1)` offloaded "layers" (the output head counts as one past the last) goes to the first device whose split
point exceeds j / that count. Without `--tensor-split` the shares are each physical GPU's free memory,
divided equally between the logical devices on it.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Callable, Sequence

from embedkit.backend.placement import Placement
from embedkit.errors import InputError

SPLIT_MODES = ("none", "layer", "row")
DEVICES_ENV = "EMBEDKIT_CUDA_DEVICES"


def parse_tensor_split(text: str | None) -> list[float] | None:
    """`--tensor-split a,b,...` -> the shares as floats (None for None or an empty string).

    Each value must be a finite number >= 0 (InputError naming the value otherwise). All zeros means
    "the default split", as in llama.cpp."""
    if text is None or not text.strip():
        return None
    shares = []
    for part in text.split(","):
        try:
            v = float(part.strip())
        except ValueError:
            raise InputError(
                f"--tensor-split {text!r}: {part.strip()!r} is not a number (expected shares such as 3,1)"
            ) from None
        shares.append(check_share(v, text, part.strip()))
    return shares


def check_share(value: float, listed: str, as_given: str | None = None) -> float:
    """`value` if it is a finite number >= 0 (InputError naming it, as given, and the whole list `listed`)."""
    v = float(value)
    if not math.isfinite(v) or v < 0:
        shown = as_given if as_given is not None else str(value)
        raise InputError(f"--tensor-split {listed!r}: {shown!r} must be a finite number >= 0")
    return v


def parse_devices(text: str | None, n_physical: int) -> list[int]:
    """The physical GPU of each logical device from `EMBEDKIT_CUDA_DEVICES` ("0,0", "1,0", ...); None or
    empty: each of the `n_physical` GPUs once."""
    if text is None or not text.strip():
        return list(range(n_physical))
    devices = []
    for part in text.split(","):
        try:
            d = int(part.strip())
        except ValueError:
            raise InputError(f"{DEVICES_ENV}={text!r}: {part.strip()!r} is not a GPU number") from None
        if not 0 <= d < n_physical:
            raise InputError(f"{DEVICES_ENV}={text!r}: GPU {d} does not exist (this host has {n_physical})")
        devices.append(d)
    return devices


def check_split_mode(mode: str) -> str:
    """`mode` if it is a split mode that runs (InputError for an unknown one, and for `row`, not built yet)."""
    if mode not in SPLIT_MODES:
        raise InputError(f"--split-mode must be one of {', '.join(SPLIT_MODES)}, not {mode!r}")
    if mode == "row":
        raise InputError("--split-mode row (matrices split across GPUs) is not implemented yet: use layer or none")
    return mode


def normalized_shares(shares: Sequence[float] | None, n_devices: int, default: Sequence[float]) -> list[float]:
    """The share of each of `n_devices` devices, summing to 1: `shares` (fewer values: the rest get 0, as
    llama.cpp) or, when None or all zero, `default` (e.g. free memory)."""
    if shares is not None and len(shares) > n_devices:
        listed = ",".join(f"{s:g}" for s in shares)
        raise InputError(f"--tensor-split {listed}: {len(shares)} shares for {n_devices} CUDA device(s)")
    if shares is None or not any(shares):
        shares = list(default)
    shares = list(shares) + [0.0] * (n_devices - len(shares))
    total = float(sum(shares))
    if not total > 0 or not math.isfinite(total):
        return [1.0 / n_devices] * n_devices
    return [s / total for s in shares]


def layer_devices(n_layer: int, n_gpu_layers: int, shares: Sequence[float]) -> tuple[list[int | None], int | None]:
    """(device of each layer, device of the output head); None means the CPU. `shares` sum to 1;
    n_gpu_layers < 0 means all layers and the output (see the module docstring for the rule)."""
    if n_gpu_layers < 0 or n_gpu_layers > n_layer + 1:
        n_gpu_layers = n_layer + 1
    first_gpu = max(n_layer - n_gpu_layers, 0)
    act = min(n_gpu_layers, n_layer + 1)
    points, acc = [], 0.0
    for s in shares:
        acc += s
        points.append(acc)
    points[-1] = 1.0  # rounding: the last point is the whole

    def device(i: int) -> int | None:
        if i < first_gpu or i - first_gpu >= act:
            return None
        return min(bisect.bisect_right(points, (i - first_gpu) / act), len(points) - 1)

    return [device(i) for i in range(n_layer)], device(n_layer)


def split_placement(
    n_layer: int,
    n_gpu_layers: int,
    backends: Sequence,
    cpu,
    shares: Sequence[float],
    mode: str = "layer",
    main_gpu: int | None = None,
    input_on_gpu: bool | None = None,
    hand_off: Callable | None = None,
) -> Placement:
    """A Placement of `n_layer` layers over the device `backends` (one per logical device) and `cpu`.

    mode `layer`: layers by `layer_devices`; the output head follows llama.cpp (the device after the last
    layer's share) unless `main_gpu` names one; token embeddings on the first GPU layer's device with full
    offload (else the CPU, as llama.cpp), or on `main_gpu`. mode `none`: every GPU layer and the output on
    `main_gpu` (default 0). `hand_off(x, src, dst)` moves activations between devices (see Placement)."""
    check_split_mode(mode)
    n = len(backends)
    if main_gpu is not None and not 0 <= main_gpu < n:
        raise InputError(f"--main-gpu {main_gpu}: there are {n} CUDA device(s) (0..{n - 1})")
    if mode == "none":
        one = 0 if main_gpu is None else main_gpu
        shares = [1.0 if i == one else 0.0 for i in range(n)]
    per_layer, out = layer_devices(n_layer, n_gpu_layers, shares)
    if mode == "layer" and main_gpu is not None and out is not None:
        out = main_gpu
    layers = [cpu if d is None else backends[d] for d in per_layer]
    output = cpu if out is None else backends[out]
    all_layers = all(d is not None for d in per_layer)
    on_gpu = (all_layers and out is not None) if input_on_gpu is None else (input_on_gpu and all_layers)
    inp = cpu
    if on_gpu:
        inp = backends[main_gpu if main_gpu is not None and mode == "layer" else per_layer[0]]
    return Placement(inp, layers, output, hand_off=hand_off)


def separate_stages(p: Placement, another: Callable[[object, int], object | None]) -> Placement:
    """`p` where each backend serves one contiguous run of the forward (input, layers, output).

    A device that the forward leaves and comes back to (`--main-gpu` naming a device whose layers are not at
    that end) would run two steps per forward on one step recorder, and its decode graph would be recorded
    afresh each time. Each later run goes instead to `another(backend, k)` (k = 1, 2, ...): a backend of its
    own on the same device (None keeps the backend, as for the CPU, which records nothing)."""
    parts = [p.input, *p.layers, p.output]
    placed, ended, prev = [], [], None
    for b in parts:
        if b is prev:
            placed.append(placed[-1])
            continue
        if prev is not None:
            ended.append(prev)
        k = sum(e is b for e in ended)
        placed.append((another(b, k) or b) if k else b)
        prev = b
    return Placement(placed[0], placed[1:-1], placed[-1], cpu_math=p.cpu_math, hand_off=p.hand_off)


def make_split_placement(
    device: str = "auto",
    gpu_layers: int | None = None,
    split_mode: str | None = None,
    tensor_split: str | Sequence[float] | None = None,
    main_gpu: int | None = None,
    input_on_gpu: bool | None = None,
    cpu_math: str | None = None,
    devices: Sequence[int] | None = None,
    peer_copy: bool = True,
) -> Callable[[int], Placement]:
    """A placement factory (n_layer -> Placement) over every logical CUDA device, for `make_placement`.

    devices: the physical GPU of each logical device (default: EMBEDKIT_CUDA_DEVICES, else each GPU once);
    split_mode: layer (default) or none; tensor_split: shares (text as on the command line, or numbers);
    peer_copy False sends activations between devices through the host even where a device-to-device copy
    works (to test that path). Without a usable GPU, `auto` runs on the CPU and `cuda` raises DeviceError."""
    from embedkit.backend.placement import cpu_fallback

    mode = check_split_mode(split_mode or "layer")
    if tensor_split is None or isinstance(tensor_split, str):
        shares = parse_tensor_split(tensor_split)
    else:
        listed = ",".join(str(v) for v in tensor_split)
        shares = [check_share(v, listed) for v in tensor_split]
    if main_gpu is not None and main_gpu < 0:
        raise InputError(f"--main-gpu must be >= 0, not {main_gpu}")
    on_cpu = cpu_fallback(device, gpu_layers, cpu_math)
    if on_cpu is not None:
        return on_cpu
    from embedkit.backend import cuda_devices

    physical = list(devices) if devices is not None else cuda_devices.logical_devices()
    n_physical = cuda_devices.physical_count()
    for d in physical:
        if not 0 <= int(d) < n_physical:
            raise InputError(f"CUDA device {d} does not exist (this host has {n_physical})")
    if main_gpu is not None and main_gpu >= len(physical):
        raise InputError(f"--main-gpu {main_gpu}: there are {len(physical)} CUDA device(s) (0..{len(physical) - 1})")
    normalized = normalized_shares(shares, len(physical), cuda_devices.free_memory_shares(physical))
    n_gpu = -1 if gpu_layers is None else int(gpu_layers)

    def factory(n_layer: int) -> Placement:
        from embedkit.backend.cpu import CPUBackend

        backends = cuda_devices.device_backends(physical, graphs=True)
        main = backends[main_gpu or 0]
        # the CPU layers hand their prompt-sized matmuls to the main device (as in make_placement)
        placement = split_placement(
            n_layer,
            n_gpu,
            backends,
            CPUBackend(batch_offload=main),
            normalized,
            mode,
            main_gpu,
            input_on_gpu,
            cuda_devices.hand_off if peer_copy else None,
        )
        placement.cpu_math = cpu_math
        return separate_stages(placement, cuda_devices.stage_backend)

    return factory


def split_requested(split_mode: str | None, tensor_split, main_gpu: int | None) -> bool:
    """Whether any multi-device option was given (else `make_placement` keeps its one-GPU path)."""
    return (
        split_mode is not None
        or tensor_split is not None
        or main_gpu is not None
        or bool(os.environ.get(DEVICES_ENV, "").strip())
    )
