"""A numba-cuda External Memory Management plugin backed by CuPy's memory pool.

numba's default allocator calls cuMemAlloc/cuMemFree for every array (tens of microseconds, and
frees are batched behind synchronisations); a decode step allocates a few hundred small arrays.
CuPy's pool recycles them. Both libraries issue work on the legacy default stream, so a block
returned to the pool is only reused by work ordered after its last use.

numba reads the plugin only when it creates a context: a context made earlier (any
`cuda.get_current_device()`, `cuda.to_device` ... before the backend exists) keeps numba's own
allocator, whose frees are queued and flushed with cuMemFree (which synchronises the device) every
ten or so arrays. `attach_cupy_pool` gives such a context the plugin as well.
"""

from __future__ import annotations

import ctypes

from numba import cuda
from numba.cuda import GetIpcHandleMixin, HostOnlyCUDAMemoryManager, MemoryInfo, MemoryPointer


class CupyPoolMemoryManager(GetIpcHandleMixin, HostOnlyCUDAMemoryManager):
    """numba EMM plugin: device allocations come from cupy.get_default_memory_pool()."""

    def initialize(self) -> None:
        super().initialize()

    def memalloc(self, size: int) -> MemoryPointer:
        import cupy

        buf = cupy.cuda.alloc(size)
        ptr = ctypes.c_void_p(int(buf.ptr))

        def finalizer(buf=buf) -> None:
            buf.mem  # keep the CuPy allocation alive until numba drops the pointer  # noqa: B018

        return MemoryPointer(self.context, ptr, size, owner=None, finalizer=finalizer)

    def get_memory_info(self) -> MemoryInfo:
        import cupy

        free, total = cupy.cuda.runtime.memGetInfo()
        return MemoryInfo(free=free, total=total)

    @property
    def interface_version(self) -> int:
        return 1


_installed = False


def install_cupy_pool() -> bool:
    """Route numba-cuda allocations through CuPy's pool; False if CuPy is missing or a context exists."""
    global _installed
    if _installed:
        return True
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    cuda.set_memory_manager(CupyPoolMemoryManager)
    _installed = True
    return True


def attach_cupy_pool(ctx) -> None:
    """Make the existing numba context `ctx` allocate from CuPy's pool (if it does not already).

    Arrays the old allocator made keep their own finalizers; its queued frees are flushed first."""
    old = ctx.memory_manager
    if isinstance(old, CupyPoolMemoryManager):
        return
    try:
        old.deallocations.clear()
    except AttributeError:  # another plugin without a deallocation queue
        pass
    mm = CupyPoolMemoryManager(context=ctx)
    mm.initialize()
    ctx.memory_manager = mm
