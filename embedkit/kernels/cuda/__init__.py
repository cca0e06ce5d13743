"""CUDA kernels on numba-cuda (optional extra `embedkit[cuda]`).

Modules, one family of ops each: `quant_elem` (per-type element dequantization), `quant_generic`
(matvec / dequantize for every type), `quant_fast` (Q4_0/Q8_0 repacked dp4a matvec),
`quant_kmatvec` (Q4_K/Q6_K decode matvecs), `quant_legacy` (Q4_1/Q5_0/Q5_1 dp4a decode matvecs),
`gemm` (cuBLAS through CuPy), `norms`, `rope`, `softmax`, `attention`, `elementwise`, `pooling`,
`memory` (numba allocations from CuPy's pool), `launch` (kernel launches with a per-signature fast
path). Importing this package does not touch the GPU.
"""

from __future__ import annotations

import numpy as _np

# numba-cuda 0.30 registers an overload for np.row_stack, which NumPy 2.5 removed: without this
# alias every kernel compile fails with AttributeError (seen on the H100 image, numpy 2.5).
if not hasattr(_np, "row_stack"):
    _np.row_stack = _np.vstack


def cuda_available() -> bool:
    """True when numba-cuda is installed and sees a usable GPU (or runs its simulator)."""
    try:
        from numba import cuda
    except ImportError:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def cuda_unavailable_reason() -> str:
    """One line saying why `cuda_available()` is False (for errors and test skips)."""
    try:
        from numba import cuda
    except ImportError:
        return "numba-cuda is not installed (pip install 'embedkit[cuda]')"
    if not cuda.is_available():
        return "no CUDA GPU (numba.cuda.is_available() is False)"
    return ""
