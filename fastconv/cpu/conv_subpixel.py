"""grad_x of a strided convolution as stride-1 correlations on its sub-pixel grids.

With stride (sh, sw) and dilation 1, grad_x pixel (i, j) only receives the
taps r = (i + ph) mod sh + sh*t (and likewise s): grad_x splits into sh*sw
interleaved grids, and each grid is a stride-1 correlation of grad_output
with the sub-kernel of its taps, mirrored, read as (C, K/groups).  Each grid
runs the direct forward (plan in ``ConvPlan.cpu.grad_input_phases``, geometry
from ``fastconv._plan._phase_axis``), so the strided grad_x gets the engine's
register tiles instead of a scatter, and computes only (output, tap) pairs
that exist plus the zero margins of grad_output.

Those margins are multiplied by weights, so this path runs only when the
weights are finite (``conv_direct.backward`` falls back to its exact scatter
otherwise); NaN/Inf in grad_output propagate to the grad_x pixels it reaches,
as in PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit, prange

if TYPE_CHECKING:
    from .._params import Conv2dParams
    from .._plan import SubPixelPhase

__all__ = ["grad_input_subpixel"]


def _sub_kernel(weight: np.ndarray, p: Conv2dParams, tap_r0: int, tap_s0: int) -> np.ndarray:
    """(C, K/groups, J, L): taps tap_r0::sh, tap_s0::sw, mirrored, in/out channels swapped per group."""
    w5 = weight.reshape(p.groups, p.kg, p.cg, p.kh, p.kw)[:, :, :, tap_r0 :: p.sh, tap_s0 :: p.sw][..., ::-1, ::-1]
    j, l_ = w5.shape[3], w5.shape[4]
    return np.ascontiguousarray(w5.transpose(0, 2, 1, 3, 4)).reshape(p.c, p.kg, j, l_)


def grad_input_subpixel(
    gy: np.ndarray, weight: np.ndarray, gx: np.ndarray, p: Conv2dParams, phases: tuple[SubPixelPhase, ...]
) -> np.ndarray:
    """gx (N, C, H, W) <- grad_x of a strided convolution, grid by grid."""
    from .registry import algorithm_module

    for ph in phases:
        grid = gx[:, :, ph.row0 :: p.sh, ph.col0 :: p.sw]
        if ph.plan is None:
            grid[...] = 0
            continue
        sp = ph.plan.params
        g = np.ascontiguousarray(gy[:, :, ph.gy_row0 : ph.gy_row0 + sp.h, ph.gy_col0 : ph.gy_col0 + sp.w])
        y, _ = algorithm_module(ph.plan.algorithm, ph.plan.layout).forward(
            g, _sub_kernel(weight, p, ph.tap_r0, ph.tap_s0), None, ph.plan
        )
        _to_grid(y, gx, ph.row0, ph.col0, p.sh, p.sw)
    return gx


@njit(parallel=True, cache=True)
def _to_grid(y, gx, row0, col0, sh, sw):
    """gx[:, :, row0::sh, col0::sw] = y, parallel over the (image, channel)
    planes (NumPy's strided assignment runs on one thread)."""
    n_img, c_n, rows, cols = y.shape
    for t in prange(n_img * c_n):
        n = t // c_n
        c = t - n * c_n
        src = y[n, c]
        dst = gx[n, c]
        for i in range(rows):
            drow = dst[row0 + i * sh]
            srow = src[i]
            for j in range(cols):
                drow[col0 + j * sw] = srow[j]
    return gx
