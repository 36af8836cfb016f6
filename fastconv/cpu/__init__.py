"""CPU backend: Numba ``njit(parallel=True, cache=True)`` kernels.

This package's namespace is the backend interface that ``fastconv/__init__.py``
calls through ``_dispatch.backend``; ``fastconv.cuda`` exposes the same names.
Arguments arriving here are validated, of the compute dtype and C-contiguous;
``p`` is the op's parameter object from ``fastconv._params``.  Kernel entry
functions allocate outputs with ``fastconv._alloc.empty`` (poisoned in tests).
Kernel modules are imported on first use so ``import fastconv`` stays cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _cache
from .._params import Conv2dParams, Pool2dParams, as_host_array

_cache.install()  # before any kernel module: it picks where their Numba cache lives


def asarray(a: Any, name: str) -> np.ndarray:
    """The argument as a host array with a real dtype (no copy if already one)."""
    return as_host_array(a, name)


def ascompute(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous array of ``dtype``; copies only when layout or dtype differ."""
    return np.ascontiguousarray(a, dtype=dtype)


def zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def index_range(indices: np.ndarray) -> tuple[int, int]:
    """(min, max) of non-empty max_pool2d indices, one parallel pass (fastconv.cpu.pool)."""
    from .pool import index_range as rng

    return rng(indices)


def conv2d_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, p: Conv2dParams,
                   algorithm: str, saved: dict | None = None) -> np.ndarray:
    """``saved``: see ``fastconv._conv2d`` (only the direct kernels use it)."""
    if algorithm == "direct":
        from .conv_direct import conv2d_forward_direct

        return conv2d_forward_direct(x, weight, bias, p, saved)
    from .conv_im2col import conv2d_forward_im2col

    return conv2d_forward_im2col(x, weight, bias, p)


def conv2d_backward(gy: np.ndarray, x: np.ndarray, weight: np.ndarray, p: Conv2dParams, algorithm: str,
                    need_input_grad: bool = True, saved: dict | None = None
                    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gx, gw, gb); gx is None (never computed) when ``need_input_grad`` is False."""
    if algorithm == "direct":
        from .conv_direct import conv2d_backward_direct

        return conv2d_backward_direct(gy, x, weight, p, need_input_grad, saved)
    from .conv_im2col import conv2d_backward_im2col

    return conv2d_backward_im2col(gy, x, weight, p, need_input_grad)


def max_pool2d_forward(x: np.ndarray, p: Pool2dParams, return_indices: bool):
    from .pool import max_pool2d_forward as fwd

    return fwd(x, p, return_indices)


def max_pool2d_backward(gy: np.ndarray, indices: np.ndarray, p: Pool2dParams) -> np.ndarray:
    from .pool import max_pool2d_backward as bwd

    return bwd(gy, indices, p)
