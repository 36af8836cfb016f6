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


def _sub_kernels(weight: np.ndarray, p: Conv2dParams, phases: tuple[SubPixelPhase, ...]) -> list[np.ndarray]:
    """Each phase's (C, K/groups, J, L) kernel: taps tap_r0::sh, tap_s0::sw,
    mirrored, in/out channels swapped per group; all from one pass over the
    weights."""
    shapes = [(len(range(ph.tap_r0, p.kh, p.sh)), len(range(ph.tap_s0, p.kw, p.sw))) for ph in phases]
    outs = tuple(np.empty((p.c, p.kg, j, l_), weight.dtype) for j, l_ in shapes)
    # taps[i, m]: offset in a (KH, KW) kernel of element m of phase i's mirrored (J, L) grid
    taps = np.zeros((len(phases), max(j * l_ for j, l_ in shapes)), dtype=np.int64)
    for i, (ph, (j, l_)) in enumerate(zip(phases, shapes)):
        rows = ph.tap_r0 + p.sh * np.arange(j - 1, -1, -1)
        cols = ph.tap_s0 + p.sw * np.arange(l_ - 1, -1, -1)
        taps[i, : j * l_] = (rows[:, None] * p.kw + cols[None, :]).ravel()
    flat = tuple(o.reshape(-1) for o in outs)
    sizes = np.array([j * l_ for j, l_ in shapes], dtype=np.int64)
    _fill_sub_kernels(np.ascontiguousarray(weight).reshape(-1), flat, taps, sizes, p.groups, p.cg, p.kg, p.kh * p.kw)
    return list(outs)


@njit(parallel=True, cache=True)
def _fill_sub_kernels(w, outs, taps, sizes, groups, cg, kg, khw):
    """outs[i] (C, K/groups, J*L flat, J*L = sizes[i]): row g*cg + c, kernel
    k, element m = w[g*kg + k, c] at tap offset taps[i, m].  Parallel over
    blocks of 8 channels of a group: for each k the block's 8 kernels are one
    contiguous read, and every phase is filled from it (NumPy's copy of a 5-D
    transposed view, per phase, ran on one thread element by element)."""
    nblk = -(-cg // 8)
    for t in prange(groups * nblk):
        g = t // nblk
        c0 = (t - g * nblk) * 8
        c1 = min(cg, c0 + 8)
        for k in range(kg):
            row = (g * kg + k) * cg
            for c in range(c0, c1):
                src0 = (row + c) * khw
                u = g * cg + c
                for i in range(len(outs)):
                    dst = outs[i]
                    n = sizes[i]
                    d0 = (u * kg + k) * n
                    for m in range(n):
                        dst[d0 + m] = w[src0 + taps[i, m]]
    return outs


def grad_input_subpixel(
    gy: np.ndarray, weight: np.ndarray, gx: np.ndarray, p: Conv2dParams, phases: tuple[SubPixelPhase, ...]
) -> np.ndarray:
    """gx (N, C, H, W) <- grad_x of a strided convolution, grid by grid."""
    from .registry import algorithm_module

    live = tuple(ph for ph in phases if ph.plan is not None)
    kernels = iter(_sub_kernels(weight, p, live) if live else [])
    for ph in phases:
        grid = gx[:, :, ph.row0 :: p.sh, ph.col0 :: p.sw]
        if ph.plan is None:
            grid[...] = 0
            continue
        sp = ph.plan.params
        g = np.ascontiguousarray(gy[:, :, ph.gy_row0 : ph.gy_row0 + sp.h, ph.gy_col0 : ph.gy_col0 + sp.w])
        y, _ = algorithm_module(ph.plan.algorithm, ph.plan.layout).forward(g, next(kernels), None, ph.plan)
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
