"""Kernel launches with less host work than numba's dispatcher, for the eager (prompt) path.

`kernel[grid, block, stream](*args)` through numba costs tens of microseconds of Python per launch:
it types every argument afresh (building a numba type per array) and marshals them generically.
`fast(kernel)[grid, block, stream](*args)` makes the first launch for a given argument signature
the normal way, then keeps the compiled kernel for that signature (keyed by each array's dtype,
rank and contiguity, each scalar's Python type, and the stream: a model split over several GPUs launches
each kernel in each GPU's context) and marshals the arguments exactly as numba's
`_Kernel._prepare_args` does for device arrays and scalars. Under the simulator it is the plain
dispatcher.
"""

from __future__ import annotations

import ctypes

from numba.cuda import config

if config.ENABLE_CUDASIM:

    def fast(kernel):
        """The dispatcher itself (simulator)."""
        return kernel

else:
    from cuda.core import LaunchConfig
    from cuda.core import launch as _core_launch
    from numba.cuda import types
    from numba.cuda._compat import CUDA_CORE_GE_1_0
    from numba.cuda.cudadrv import driver

    _SLOW = object()
    _STREAMS: dict[int, object] = {}
    _CONFIGS: dict[tuple, object] = {}

    def _dims(d) -> tuple[int, int, int]:
        if isinstance(d, int):
            return (d, 1, 1)
        d = tuple(int(v) for v in d)
        return d + (1,) * (3 - len(d))

    def _config(grid, block):
        key = (grid, block)
        cfg = _CONFIGS.get(key)
        if cfg is None:
            if CUDA_CORE_GE_1_0:
                cfg = LaunchConfig(grid=_dims(grid), block=_dims(block), shmem_size=0, is_cooperative=False)
            else:
                cfg = LaunchConfig(grid=_dims(grid), block=_dims(block), shmem_size=0, cooperative_launch=False)
            _CONFIGS[key] = cfg
        return cfg

    def _core_stream(stream):
        key = id(stream)
        s = _STREAMS.get(key)
        if s is None or s[0] is not stream:
            s = _STREAMS[key] = (stream, driver._to_core_stream(stream))
        return s[1]

    def _arg_key(v):
        if hasattr(v, "_strided_memory_view_shim"):
            f = v.flags
            return (v.dtype.num, v.ndim, f["C_CONTIGUOUS"], f["F_CONTIGUOUS"])
        return type(v)

    def _converter(ty):
        """A function appending the launch arguments of one value of numba type `ty`."""
        if isinstance(ty, types.Array):

            def conv(v, out):
                sh = v._strided_memory_view_shim
                out += (0, 0, sh.size, sh.dtype.itemsize, sh.ptr)
                out += sh.shape
                out += sh._layout.strides_in_bytes

            return conv
        if isinstance(ty, types.Integer):
            ctor = getattr(ctypes, f"c_{ty}")
            return lambda v, out: out.append(ctor(v))
        if ty == types.float64:
            return lambda v, out: out.append(ctypes.c_double(v))
        if ty == types.float32:
            return lambda v, out: out.append(ctypes.c_float(v))
        if ty == types.boolean:
            return lambda v, out: out.append(v)
        return None

    class _FastKernel:
        __slots__ = ("dispatcher", "signatures")

        def __init__(self, dispatcher) -> None:
            self.dispatcher = dispatcher
            self.signatures: dict = {}

        def __getitem__(self, cfg):
            grid, block, stream = cfg
            return lambda *args: self.launch(grid, block, stream, args)

        def _compiled(self, key, args):
            d = self.dispatcher
            argtypes = tuple(d.typeof_pyval(a) for a in args)
            kernel = d.overloads.get(argtypes)
            convs = None if kernel is None else [_converter(t) for t in kernel.argument_types]
            if kernel is None or any(c is None for c in convs):
                self.signatures[key] = _SLOW
                return
            self.signatures[key] = (kernel._codelibrary.get_cufunc().kernel, convs)

        def launch(self, grid, block, stream, args) -> None:
            # per stream: the compiled kernel belongs to the CUDA context it was loaded in, and a model split
            # over GPUs launches on each GPU's streams (each backend keeps one stream of one device)
            key = (id(stream), *(_arg_key(a) for a in args))
            entry = self.signatures.get(key)
            if entry is None or entry is _SLOW:
                self.dispatcher[grid, block, stream](*args)  # compiles on first use
                if entry is None:
                    self._compiled(key, args)
                return
            cu_kernel, convs = entry
            kernel_args: list = []
            for conv, v in zip(convs, args, strict=True):
                conv(v, kernel_args)
            _core_launch(_core_stream(stream), _config(grid, block), cu_kernel, *kernel_args)

    _FAST: dict[int, _FastKernel] = {}

    def fast(kernel):
        """A launcher for numba kernel `kernel` with a cached per-signature fast path."""
        f = _FAST.get(id(kernel))
        if f is None or f.dispatcher is not kernel:
            f = _FAST[id(kernel)] = _FastKernel(kernel)
        return f
