"""Max unpooling on the CPU: the scatter of ``max_unpool2d`` and its gather backward.

Parallel over the N*C planes, one plane per iteration: the plane is zeroed and
x's values are written at their indices in order, so a repeated index keeps
the last value, as PyTorch's CPU kernel does.  The backward reads grad_output
at each index (every input position gets the gradient of its index).
Indices are range-checked before these kernels run.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import _alloc

__all__ = ["max_unpool2d_backward", "max_unpool2d_forward"]


@njit(parallel=True, cache=True)
def _unpool(x, idx, y):
    """y (P, HW) <- zeros with x (P, M) written at idx (P, M)."""
    np_, m = x.shape
    hw = y.shape[1]
    for p in prange(np_):
        row = y[p]
        for j in range(hw):
            row[j] = 0
        xs = x[p]
        ix = idx[p]
        for j in range(m):
            row[ix[j]] = xs[j]


@njit(parallel=True, cache=True)
def _unpool_bwd(gy, idx, gx):
    """gx (P, M) <- gy (P, HW) read at idx (P, M)."""
    np_, m = gx.shape
    for p in prange(np_):
        g = gy[p]
        ix = idx[p]
        out = gx[p]
        for j in range(m):
            out[j] = g[ix[j]]


def max_unpool2d_forward(x: np.ndarray, indices: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """x, indices (N, C, H, W) -> y (N, C, OH, OW), zeros except at the indices."""
    n, c, h, w = x.shape
    y = _alloc.empty((n, c) + tuple(out_hw), x.dtype)
    _unpool(x.reshape(n * c, h * w), indices.reshape(n * c, h * w), y.reshape(n * c, -1))
    return y


def max_unpool2d_backward(gy: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """gy (N, C, OH, OW), indices (N, C, H, W) -> grad_x (N, C, H, W)."""
    n, c = gy.shape[:2]
    gx = _alloc.empty(indices.shape, gy.dtype)
    _unpool_bwd(gy.reshape(n * c, -1), indices.reshape(n * c, -1), gx.reshape(n * c, -1))
    return gx
