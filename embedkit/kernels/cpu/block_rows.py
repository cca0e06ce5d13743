"""The row-parallel driver of the per-type conversion kernels (`dequant`, `quantizers`): a kernel that maps
every block of an input row to a block of the output row, compiled once per type over that type's block
function (the "codec": `codec(src_row, src_offset, dst_row, dst_offset)`), which is inlined.

`block_rows_kernel(name, codec, in_block, out_block, params)` builds `name(inp, out)`: for each row r (in
parallel) and each block b, `codec(inp[r], in_block * b, out[r], out_block * b, *params)`. The kernel closes
over the codec's qualified name, the block strides and `params` (none, or a pair of ints and bools: a type's
constants for a codec shared by several types): Numba keys a closure's disk cache on its pickled closure values, the
same in every process, and treats them as constants, so the codec is picked at compile time and the block
offsets are multiplications by constants, as in a loop written for the type. The name carries a hash of the
codec's module source, so editing a codec recompiles the kernels that inline it (Numba checks only the
timestamp of the file that defines a cached function: this one).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange, types
from numba.extending import overload


def call_codec(codec, src, i, dst, j, params):
    """In jitted code: the block function named by `codec` (a compile-time string `module:function@hash`)
    on (src, i, dst, j, *params), resolved at typing time, so the call compiles to the function inlined."""
    raise TypeError("call_codec runs only in jitted code")


def _resolve(codec: str) -> Any:
    module, function = codec.split("@")[0].split(":")
    return getattr(importlib.import_module(module), function)


@overload(call_codec, prefer_literal=True, inline="always")
def _call_codec(codec, src, i, dst, j, params):
    if not isinstance(codec, types.StringLiteral):
        return None
    function = _resolve(codec.literal_value)
    # Numba inlines no call with *args: one implementation per number of params
    if len(params) == 0:

        def impl0(codec, src, i, dst, j, params):
            function(src, i, dst, j)

        return impl0
    if len(params) == 2:

        def impl2(codec, src, i, dst, j, params):
            function(src, i, dst, j, params[0], params[1])

        return impl2
    raise TypeError(f"call_codec: {len(params)} params; 0 or 2 are supported")


@functools.cache
def _source_hash(module: str) -> str:
    return hashlib.sha1(inspect.getsource(importlib.import_module(module)).encode()).hexdigest()[:16]


def block_rows_kernel(
    name: str, codec: Any, in_block: int, out_block: int, params: tuple[int | bool, ...] = ()
) -> Callable[[np.ndarray, np.ndarray], None]:
    """The parallel kernel `name(inp, out)` applying the jitted block function `codec` to every block of every
    row: block b of row r reads `inp[r]` from `in_block * b` and writes `out[r]` from `out_block * b`, with
    `params` as the codec's trailing arguments. Compiled at the first call and cached on disk."""
    return _kernel(name, f"{codec.py_func.__module__}:{codec.py_func.__name__}", in_block, out_block, params)


@functools.cache
def _kernel(
    name: str, codec_path: str, in_block: int, out_block: int, params: tuple[int | bool, ...]
) -> Callable[[np.ndarray, np.ndarray], None]:
    codec = f"{codec_path}@{_source_hash(codec_path.split(':')[0])}"

    def kernel(inp, out):
        nb = inp.shape[1] // in_block
        for r in prange(inp.shape[0]):
            src = inp[r]
            dst = out[r]
            for b in range(nb):
                call_codec(codec, src, in_block * b, dst, out_block * b, params)

    kernel.__name__ = kernel.__qualname__ = name
    return njit(parallel=True, cache=True)(kernel)
