"""Explicit padding (conv2d's padding_mode) and its adjoint, the fold, on the CPU.

A padded row/column q of a size-n axis with ``top`` leading pads reads source
index ``src(q)`` (``_src``): zeros -> -1 (a zero) outside [0, n); reflect ->
mirrored without repeating the edge (pad < n); replicate -> clamped;
circular -> wrapped once (pad <= n).  ``pad`` gathers by that map; ``fold``
(the gradient of ``pad``) adds every padded cell's gradient to its source
cell.  Both are parallel over the N*C planes, one plane per iteration, so the
fold's additions of several padded cells into one source cell stay inside one
thread (no races, a fixed order).  No fastmath: NaN/Inf propagate.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import _alloc

__all__ = ["MODES", "fold", "pad"]

MODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}


@njit(cache=True, inline="always")
def _src(q, top, n, mode):
    i = q - top
    if 0 <= i < n:
        return i
    if mode == 0:
        return -1
    if mode == 1:
        return -i if i < 0 else 2 * (n - 1) - i
    if mode == 2:
        return 0 if i < 0 else n - 1
    return i + n if i < 0 else i - n


@njit(parallel=True, cache=True)
def _pad(x, out, top, left, mode):
    """out (P, HP, WP) <- x (P, H, W) padded by the map ``_src``."""
    np_, h, w = x.shape
    hp, wp = out.shape[1], out.shape[2]
    for p in prange(np_):
        cols = np.empty(wp, dtype=np.int64)
        for r in range(wp):
            cols[r] = _src(r, left, w, mode)
        for q in range(hp):
            i = _src(q, top, h, mode)
            orow = out[p, q]
            if i < 0:
                for r in range(wp):
                    orow[r] = 0
                continue
            xrow = x[p, i]
            for r in range(wp):
                j = cols[r]
                orow[r] = xrow[j] if j >= 0 else 0


@njit(parallel=True, cache=True)
def _fold(gp, gx, top, left, mode):
    """gx (P, H, W) <- sum of gp (P, HP, WP) over the padded cells mapping to each cell."""
    np_, h, w = gx.shape
    hp, wp = gp.shape[1], gp.shape[2]
    for p in prange(np_):
        cols = np.empty(wp, dtype=np.int64)
        for r in range(wp):
            cols[r] = _src(r, left, w, mode)
        plane = gx[p]
        for i in range(h):
            grow = gp[p, i + top]
            prow = plane[i]
            for j in range(w):
                prow[j] = grow[j + left]
        for q in range(hp):
            i = _src(q, top, h, mode)
            if i < 0:
                continue
            grow = gp[p, q]
            prow = plane[i]
            interior = 0 <= q - top < h
            for r in range(wp):
                j = cols[r]
                if j >= 0 and not (interior and 0 <= r - left < w):
                    prow[j] += grow[r]


def pad(x: np.ndarray, pads: tuple[int, int, int, int], mode: str) -> np.ndarray:
    """x (N, C, H, W) padded by (top, left, bottom, right) in ``mode``."""
    n, c, h, w = x.shape
    top, left, bottom, right = pads
    out = _alloc.empty((n, c, h + top + bottom, w + left + right), x.dtype)
    _pad(x.reshape(n * c, h, w), out.reshape(n * c, out.shape[2], out.shape[3]), top, left, MODES[mode])
    return out


def fold(gp: np.ndarray, pads: tuple[int, int, int, int], mode: str) -> np.ndarray:
    """The gradient of ``pad``: gp (N, C, HP, WP) -> (N, C, H, W)."""
    n, c, hp, wp = gp.shape
    top, left, bottom, right = pads
    gx = _alloc.empty((n, c, hp - top - bottom, wp - left - right), gp.dtype)
    _fold(gp.reshape(n * c, hp, wp), gx.reshape(n * c, gx.shape[2], gx.shape[3]), top, left, MODES[mode])
    return gx
