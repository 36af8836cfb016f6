"""Average pooling on the CPU: ``numba.njit(parallel=True, cache=True)`` kernels.

PyTorch's CPU semantics (aten/src/ATen/native/cpu/AvgPoolKernel.cpp): window
(i, j) starts at (i*sh - ph, j*sw - pw); its "pool size" runs to at most
H + ph / W + pw (the ceil-mode overhang past the right padding is not
counted), its sum only over the taps inside the input; the divisor is
divisor_override if given, else the pool size with ``count_include_pad``,
else the number of taps inside the input.  The divisor is separable (a row
factor times a column factor), so both are precomputed per output row and
column (``divisors``).  No window is empty: the size rules make every window
start before the input's end and end after its start.

Forward: the sum is separable, like max pooling's values: a per-thread
scratch row ``t`` (zeros in the padding columns, so no bounds tests in the
loops) takes the sum of the window's in-bounds input rows (contiguous,
vectorised), then each output element sums KW taps of ``t``.  Parallel over
the P*OH output rows (P = N*C planes), one contiguous chunk per thread.

Backward: race-free by ownership, like max pooling's: parallel over planes,
one iteration zeroes its grad_x plane and adds each output's gradient /
divisor to the window's in-bounds taps (row segments, vectorised at stride 1).

A pooling with a single window per plane (OH = OW = 1: global average
pooling, e.g. ResNet's last 7x7 planes) takes its own pair of kernels, parallel
over planes: the window's rows are summed as flat runs, and the backward
writes each plane's value into the window once, instead of a scratch row,
KW tap passes and their one-element slices per plane.

No fastmath: NaN and +-Inf propagate as in PyTorch (a sum with a NaN is NaN).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import njit, prange

from .. import _alloc
from .._params import AvgPool2dParams
from .common import tap_cols

__all__ = ["avg_pool2d_backward", "avg_pool2d_forward", "divisors"]


def _factors(size: int, k: int, s: int, p: int, out: int, include_pad: bool) -> np.ndarray:
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    if include_pad:
        return (end - start).astype(np.float64)
    return (np.minimum(end, size) - np.maximum(start, 0)).astype(np.float64)


def divisors(p: AvgPool2dParams) -> tuple[np.ndarray, np.ndarray]:
    """(row factors (OH,), column factors (OW,)): window (i, j) is divided by
    rows[i] * cols[j] (float64, exact integers)."""
    if p.divisor:
        return np.full(p.oh, float(p.divisor)), np.ones(p.ow)
    return (
        _factors(p.h, p.kh, p.sh, p.ph, p.oh, p.count_include_pad),
        _factors(p.w, p.kw, p.sw, p.pw, p.ow, p.count_include_pad),
    )


@njit(parallel=True, cache=True)
def _avg_fwd(x, y, kh, kw, sh, sw, ph, pw, rdiv, cdiv, nchunk):
    """y[p, i, j] = sum of window (i, j) / (rdiv[i] * cdiv[j]).  x (P, H, W), y (P, OH, OW)."""
    np_, h, w = x.shape
    oh, ow = y.shape[1], y.shape[2]
    tw = max(pw + w, (ow - 1) * sw + kw)
    rows = np_ * oh
    nchunk = max(1, min(rows, nchunk))
    for ch in prange(nchunk):
        t = np.zeros(tw, dtype=x.dtype)
        tc = t[pw : pw + w]
        dv = np.empty(ow, dtype=x.dtype)
        for r in range(ch * rows // nchunk, (ch + 1) * rows // nchunk):
            p = r // oh
            oi = r - p * oh
            top = oi * sh - ph
            a0 = max(0, top)
            a1 = min(h, top + kh)
            xr = x[p, a0]
            for j in range(w):
                tc[j] = xr[j]
            for ih in range(a0 + 1, a1):
                xr = x[p, ih]
                for j in range(w):
                    tc[j] += xr[j]
            yr = y[p, oi]
            for k in range(ow):
                dv[k] = rdiv[oi] * cdiv[k]
            if sw == 1:
                for k in range(ow):
                    yr[k] = t[k]
                for b in range(1, kw):
                    ts = t[b:]
                    for k in range(ow):
                        yr[k] += ts[k]
            else:
                for k in range(ow):
                    yr[k] = t[k * sw]
                for b in range(1, kw):
                    ts = t[b:]
                    for k in range(ow):
                        yr[k] += ts[k * sw]
            for k in range(ow):
                yr[k] = yr[k] / dv[k]


@njit(parallel=True, cache=True)
def _avg_bwd(gy, gx, kh, kw, sh, sw, ph, pw, rdiv, cdiv):
    """gx[p] = sum over windows of gy[p, i, j] / (rdiv[i] * cdiv[j]) on the
    window's in-bounds taps.  gy (P, OH, OW), gx (P, H, W); one plane per iteration."""
    np_, h, w = gx.shape
    oh, ow = gy.shape[1], gy.shape[2]
    for p in prange(np_):
        g = np.empty(ow, dtype=gx.dtype)
        plane = gx[p]
        for ih in range(h):
            for j in range(w):
                plane[ih, j] = 0
        for oi in range(oh):
            gr = gy[p, oi]
            for k in range(ow):
                g[k] = gr[k] / (rdiv[oi] * cdiv[k])
            top = oi * sh - ph
            for ih in range(max(0, top), min(h, top + kh)):
                xr = plane[ih]
                for b in range(kw):
                    off, lo, hi = tap_cols(b, 1, pw, sw, w, ow)
                    if sw == 1:
                        xs = xr[lo + off : hi + off]
                        gs = g[lo:hi]
                        for k in range(hi - lo):
                            xs[k] += gs[k]
                    else:
                        for k in range(lo, hi):
                            xr[k * sw + off] += g[k]


@njit(parallel=True, cache=True)
def _avg_fwd_single(x, y, a0, a1, c0, c1, div):
    """y[p] = sum of x[p, a0:a1, c0:c1] / div.  x (P, H, W), y (P,)."""
    for p in prange(x.shape[0]):
        xr = x[p, a0]
        s = xr[c0]  # windows are never empty
        for j in range(c0 + 1, c1):
            s += xr[j]
        for ih in range(a0 + 1, a1):
            xr = x[p, ih]
            for j in range(c0, c1):
                s += xr[j]
        y[p] = s / div


@njit(parallel=True, cache=True)
def _avg_fwd_flat(x2, y, lo, hi, div, zero):
    """y[p] = sum of x2[p, lo:hi] / div.  x2 (P, H*W): a window of whole rows is
    one flat run, summed in four interleaved partial sums (an add's latency,
    not its throughput, bounds one running sum)."""
    for p in prange(x2.shape[0]):
        xr = x2[p]
        s0 = s1 = s2 = s3 = zero
        j = lo
        while j + 4 <= hi:
            s0 += xr[j]
            s1 += xr[j + 1]
            s2 += xr[j + 2]
            s3 += xr[j + 3]
            j += 4
        while j < hi:
            s0 += xr[j]
            j += 1
        y[p] = ((s0 + s1) + (s2 + s3)) / div


@njit(parallel=True, cache=True)
def _avg_bwd_flat(gy, gxf, hw, lo, hi, div, nchunk):
    """gx[p, lo:hi] = gy[p] / div, 0 elsewhere, gx (P, H*W) as the flat gxf: a
    window of whole rows is one run per plane.  The flat output is cut into
    nchunk equal spans written in one sequential stream each (a per-plane loop
    of H*W stores spends more time entering loops than storing)."""
    np_ = gy.shape[0]
    n = np_ * hw
    nchunk = max(1, min(n, nchunk))
    for ch in prange(nchunk):
        e0 = ch * n // nchunk
        p = e0 // hw
        j = e0 - p * hw
        v = gy[p] / div
        whole = lo == 0 and hi == hw  # a global pool: no zeros, no test per element
        for e in range(e0, (ch + 1) * n // nchunk):
            gxf[e] = v if whole or lo <= j < hi else 0
            j += 1
            if j == hw:
                j = 0
                p += 1
                if p < np_:
                    v = gy[p] / div


@njit(parallel=True, cache=True)
def _avg_bwd_single(gy, gx, a0, a1, c0, c1, div):
    """gx[p] = gy[p] / div on the window x[p, a0:a1, c0:c1], 0 elsewhere.  gy (P,), gx (P, H, W)."""
    _, h, w = gx.shape
    for p in prange(gx.shape[0]):
        v = gy[p] / div
        plane = gx[p]
        for ih in range(h):
            row = plane[ih]
            if ih < a0 or ih >= a1:
                for j in range(w):
                    row[j] = 0
                continue
            for j in range(c0):
                row[j] = 0
            for j in range(c0, c1):
                row[j] = v
            for j in range(c1, w):
                row[j] = 0


def _single_window(p: AvgPool2dParams, dtype: np.dtype) -> tuple[Any, int, int, int, int]:
    """(divisor, first row, end row, first column, end column) of the in-input
    part of the only window of a pooling with OH = OW = 1."""
    rdiv, cdiv = divisors(p)
    div = dtype.type(rdiv[0] * cdiv[0])
    return div, max(0, -p.ph), min(p.h, p.kh - p.ph), max(0, -p.pw), min(p.w, p.kw - p.pw)


def _forward_one_window(x: np.ndarray, y: np.ndarray, p: AvgPool2dParams) -> None:
    div, a0, a1, c0, c1 = _single_window(p, x.dtype)
    if (c0, c1) == (0, p.w):  # whole rows: one flat run per plane
        _avg_fwd_flat(x.reshape(p.n * p.c, p.h * p.w), y.reshape(-1), a0 * p.w, a1 * p.w, div, x.dtype.type(0))
    else:
        _avg_fwd_single(x.reshape(p.n * p.c, p.h, p.w), y.reshape(-1), a0, a1, c0, c1, div)


def _backward_one_window(gy: np.ndarray, gx: np.ndarray, p: AvgPool2dParams) -> None:
    div, a0, a1, c0, c1 = _single_window(p, gy.dtype)
    if (c0, c1) == (0, p.w):
        _avg_bwd_flat(gy.reshape(-1), gx.reshape(-1), p.h * p.w, a0 * p.w, a1 * p.w, div, numba.get_num_threads())
    else:
        _avg_bwd_single(gy.reshape(-1), gx.reshape(p.n * p.c, p.h, p.w), a0, a1, c0, c1, div)


def avg_pool2d_forward(x: np.ndarray, p: AvgPool2dParams) -> np.ndarray:
    """x (N, C, H, W) C-contiguous float32/float64 -> y (N, C, OH, OW)."""
    y = _alloc.empty(p.y_shape, x.dtype)
    if p.oh == p.ow == 1:
        _forward_one_window(x, y, p)
        return y
    rdiv, cdiv = (d.astype(x.dtype) for d in divisors(p))
    _avg_fwd(
        x.reshape(p.n * p.c, p.h, p.w),
        y.reshape(p.n * p.c, p.oh, p.ow),
        p.kh,
        p.kw,
        p.sh,
        p.sw,
        p.ph,
        p.pw,
        rdiv,
        cdiv,
        numba.get_num_threads(),
    )
    return y


def avg_pool2d_backward(gy: np.ndarray, p: AvgPool2dParams) -> np.ndarray:
    """gy (N, C, OH, OW) -> grad_x (N, C, H, W)."""
    gx = _alloc.empty(p.x_shape, gy.dtype)
    if p.oh == p.ow == 1:
        _backward_one_window(gy, gx, p)
        return gx
    rdiv, cdiv = (d.astype(gy.dtype) for d in divisors(p))
    _avg_bwd(
        gy.reshape(p.n * p.c, p.oh, p.ow),
        gx.reshape(p.n * p.c, p.h, p.w),
        p.kh,
        p.kw,
        p.sh,
        p.sw,
        p.ph,
        p.pw,
        rdiv,
        cdiv,
    )
    return gx
