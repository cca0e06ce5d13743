"""Which backend runs which part of a model: token embeddings, each layer, the output head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from embedkit.backend.base import Array, Backend


@dataclass
class Placement:
    """Backends for the input embeddings, each of `n_layer` layers, and the output norm + head.

    The forward moves activations with `move(x, src, dst)` when it enters a layer, so a model runs
    unchanged whether everything sits on one backend or layers are split across several (split.py).
    """

    input: Backend
    layers: list[Backend]
    output: Backend
    # decoders' CPU arithmetic (`float32` or `ggml`); None: EMBEDKIT_CPU_MATH, else float32
    cpu_math: str | None = None
    # hand_off(x, src, dst): x as dst's array without the host (GPU to GPU, cuda_devices.hand_off), or None
    hand_off: Callable[[Array, Backend, Backend], Array | None] | None = None

    def layer(self, i: int) -> Backend:
        """Backend of layer i."""
        return self.layers[i]

    def move(self, x: Array, src: Backend, dst: Backend) -> Array:
        """x, computed on `src`, as an array `dst` works on: x itself on one backend; a device-to-device
        copy where `hand_off` makes one; otherwise `src` ends its step (a device backend runs what it
        deferred or recorded, as a decode step's CUDA graph) and its host copy goes to `dst`."""
        if src is dst:
            return x
        if self.hand_off is not None:
            moved = self.hand_off(x, src, dst)
            if moved is not None:
                return moved
        return dst.take(src.to_host(x))

    @property
    def backends(self) -> list[Backend]:
        """The distinct backends used, in first-use order."""
        seen: list[Backend] = []
        for b in [self.input, *self.layers, self.output]:
            if all(b is not s for s in seen):
                seen.append(b)
        return seen

    def for_decoder(self, weight_types: set[int]) -> Placement:
        """The placement a decoder (text generation) whose matrices have `weight_types` runs on.

        The default, float32, is the placement itself (the arithmetic closest to the model). With the
        compatibility arithmetic `ggml` (`cpu_math`, else EMBEDKIT_CPU_MATH), a placement that is all on
        the plain CPU backend gets `GGMLCPUBackend` instead (logits bit-identical to llama.cpp's x86 AVX2
        CPU build) when it has exact kernels for every weight type; other placements and float models
        (F32/F16 weights) keep float32.
        """
        from embedkit.backend.cpu import CPUBackend
        from embedkit.backend.ggml_cpu import EXACT_MATMUL_TYPES, GGMLCPUBackend, cpu_math

        if cpu_math(self.cpu_math) != "ggml":
            return self
        plain = [b for b in self.backends if type(b) is CPUBackend and b.batch_offload is None]
        if len(self.backends) != 1 or not plain or not weight_types <= EXACT_MATMUL_TYPES:
            return self
        return Placement.single(GGMLCPUBackend(), len(self.layers))

    def for_encoder(self) -> Placement:
        """The placement an encoder runs on: each backend's `for_encoder()` (the GPU's fused encoder ops)."""
        swap = {id(b): b.for_encoder() for b in self.backends}
        return Placement(swap[id(self.input)], [swap[id(b)] for b in self.layers], swap[id(self.output)])

    @classmethod
    def single(cls, backend: Backend, n_layer: int) -> Placement:
        """Everything on one backend."""
        return cls(backend, [backend] * n_layer, backend)

    @classmethod
    def offload(cls, cpu: Backend, gpu: Backend, n_layer: int, n_gpu_layers: int) -> Placement:
        """llama.cpp's -ngl: the last N layers on the GPU; N > n_layer (or -1) also moves the output.

        Token embeddings stay on the CPU (as in llama.cpp); 0 puts everything on the CPU.
        """
        if n_gpu_layers < 0:
            n_gpu_layers = n_layer + 1
        first_gpu = max(n_layer - n_gpu_layers, 0)
        layers = [gpu if i >= first_gpu else cpu for i in range(n_layer)]
        output = gpu if n_gpu_layers > n_layer else cpu
        return cls(cpu, layers, output)


def cpu_placement(n_layer: int) -> Placement:
    """All parts on a fresh CPU backend."""
    from embedkit.backend.cpu import CPUBackend

    return Placement.single(CPUBackend(), n_layer)


def cpu_fallback(device: str, gpu_layers: int | None, cpu_math: str | None) -> Callable[[int], Placement] | None:
    """The CPU placement factory when the request (`--device cpu`, `-ngl 0`) or the host (no usable GPU with
    `--device auto`) leaves no GPU to use; None when a GPU is to be used. `--device cuda` without a usable
    GPU raises DeviceError naming why."""

    def on_cpu(n_layer: int) -> Placement:
        placement = cpu_placement(n_layer)
        placement.cpu_math = cpu_math
        return placement

    if device == "cpu" or gpu_layers == 0:
        return on_cpu
    from embedkit.kernels.cuda import cuda_available, cuda_unavailable_reason

    if not cuda_available():
        if device == "cuda":
            from embedkit.errors import DeviceError

            raise DeviceError(f"--device cuda: {cuda_unavailable_reason()}")
        return on_cpu
    return None


def make_placement(
    device: str = "auto",
    gpu_layers: int | None = None,
    input_on_gpu: bool | None = None,
    cpu_math: str | None = None,
    split_mode: str | None = None,
    tensor_split: str | list[float] | None = None,
    main_gpu: int | None = None,
):
    """A placement factory (n_layer -> Placement) for `--device auto|cpu|cuda`, `-ngl N` and `--cpu-math`.

    gpu_layers follows llama.cpp: N layers (the last ones) on the GPU, 0 none, -1 (or None, or more than
    the model has) all of them plus the output head. `cuda` without a usable GPU raises DeviceError;
    `auto` falls back to the CPU. The GPU's part of a decode step (all of it with full offload, else its
    layers, and the output head when N exceeds the layers) runs as a CUDA graph. Token embeddings stay on
    the CPU (as in llama.cpp) unless `input_on_gpu` and every layer is on the GPU (worth it for encoders,
    whose embedding stage is a large batch). The default (None) puts them on the GPU with full offload:
    the lookup then joins the decode step's graph instead of costing a host dequantization and an upload
    per token. With partial offload the CPU layers' matmuls over 32 or more tokens run on the GPU too, as
    llama.cpp's do. cpu_math chooses decoders' arithmetic on the CPU (see `Placement.for_decoder`).
    split_mode, tensor_split, main_gpu (or EMBEDKIT_CUDA_DEVICES): the model over several GPUs (split.py).
    """
    from embedkit.backend.ggml_cpu import cpu_math as check_cpu_math
    from embedkit.backend.split import make_split_placement, split_requested
    from embedkit.errors import InputError

    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, not {device!r}")
    if cpu_math is not None:
        check_cpu_math(cpu_math)
    if split_requested(split_mode, tensor_split, main_gpu):
        return make_split_placement(device, gpu_layers, split_mode, tensor_split, main_gpu, input_on_gpu, cpu_math)

    on_cpu = cpu_fallback(device, gpu_layers, cpu_math)
    if on_cpu is not None:
        return on_cpu
    n_gpu = -1 if gpu_layers is None else int(gpu_layers)

    def factory(n_layer: int) -> Placement:
        from embedkit.backend.cpu import CPUBackend
        from embedkit.backend.cuda import cuda_backend

        full = n_gpu < 0 or n_gpu > n_layer
        gpu = cuda_backend(graphs=True)
        # the CPU layers hand their prompt-sized matmuls to the GPU (see Backend.offload_takes, host_matmuls)
        placement = Placement.offload(CPUBackend(batch_offload=gpu), gpu, n_layer, n_gpu)
        on_gpu = full if input_on_gpu is None else input_on_gpu
        if on_gpu and (full or n_gpu >= n_layer):
            placement.input = gpu
        return placement

    return factory
