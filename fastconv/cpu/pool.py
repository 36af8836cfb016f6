"""Max pooling on the CPU: ``numba.njit(parallel=True, cache=True)`` kernels.

Layout: NCHW, C-contiguous, viewed as P = N*C independent H x W planes.  The
forward kernels are parallel over the P*OH output rows (flattened, so a batch
of 1 with few channels still spreads its rows over both cores); the backward
is parallel over planes.  Every inner loop runs over output columns with
unit-stride (or stride-2) accesses so LLVM vectorises it; those loops index
slices that start at the loop's first element with a counter from 0, because a
possibly negative index makes Numba emit a wrap-around select that stops
LLVM's vectoriser ("cannot identify array bounds").

Window order and ties: PyTorch's CPU rule, the running maximum is replaced when
``v > m or v != v``, scanning the window row-major.  So the first maximum wins
a tie and a NaN always wins (the last NaN for indices).  Padding is -inf.

Forward, values only (``_pool_fwd``): max is separable for values, so each
output row is two passes through a per-thread scratch row ``t`` (-inf in the
padding columns, so no bounds test is left in the loops): (1) ``t`` = the
element-wise max of the window's in-bounds input rows (contiguous, vectorised);
(2) each output element = max over the KW taps of ``t`` (strides 1 and 2 and
KW 2 and 3 get their own loops so LLVM sees constant strides and keeps the taps
in registers).  Rows are split into one contiguous chunk per thread so each
thread allocates its scratch row once.

Forward with indices (``_pool_fwd_idx``): a column-first (separable) scan would
break the tie rule, so windows are scanned row-major.  The int64 index is what
keeps a loop scalar (8-byte lanes next to 4-byte values), so the loops that
compare values carry only a small int32 offset of the argmax inside its window
(``code``, one scratch row per block of output rows) as selects, and a second
unit-stride pass widens it to the flat int64 index (``_widen_codes``).  Fast
path for the common CNN cases (2x2 or 3x3, horizontal stride 2, no dilation) on
rows whose window rows are all inside the input: one unrolled loop of selects
over the interior output columns, the at most few border columns through the
scalar ``_window_idx``.  Every other row (``_row_generic``): taps outer, output
columns inner, one vectorised pass per in-bounds tap updating the running max
and the offset; each tap's valid column range is computed once per row, so no
bounds test is left in the inner loop.  The running max starts at -inf with the
offset of the window's first in-bounds element, PyTorch's initialisation, so an
all -inf window points at that element.  The P*OH rows are cut into a fixed
number of contiguous blocks (one scratch allocation each, no division per row).

Backward (``_pool_bwd``): race-free by ownership.  It is parallel over the P
planes only, and one iteration owns one whole grad_x plane: it zeroes the plane
and then scatter-adds that plane's grad_output serially, so the updates of
overlapping windows (stride < kernel) only ever meet inside one thread; no
update is lost, no atomics are needed and the summation order is deterministic.

``index_range`` (the backend's pre-kernel range check of the backward's
indices) is one parallel min/max pass: two serial NumPy reductions took as long
as the backward kernel itself.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .. import _alloc
from .._params import Pool2dParams
from .common import tap_cols

__all__ = ["index_range", "max_pool2d_backward", "max_pool2d_forward"]

_NEG_INF = -np.inf


@njit(cache=True, inline="always")
def _window_idx(xp, top, left, kh, kw, dh, dw):
    """Max and argmax of one window with bounds tests (border windows only)."""
    h, w = xp.shape
    m = xp[0, 0]
    i = -1
    for a in range(kh):
        ih = top + a * dh
        if ih < 0 or ih >= h:
            continue
        for b in range(kw):
            iw = left + b * dw
            if iw < 0 or iw >= w:
                continue
            v = xp[ih, iw]
            if i < 0:  # PyTorch: max -inf, argmax at the first in-bounds element
                m = _NEG_INF
                i = ih * w + iw
            if (v > m) | (v != v):
                m = v
                i = ih * w + iw
    return m, i


@njit(parallel=True, cache=True)
def _pool_fwd(x, y, kh, kw, sh, sw, ph, pw, dh, dw, nchunk):
    """y[p, i, j] = max of window (i, j), values only.  x (P, H, W), y (P, OH, OW).

    The P*OH rows are cut into ``nchunk`` contiguous chunks, one scratch row each."""
    np_, h, w = x.shape
    oh, ow = y.shape[1], y.shape[2]
    # scratch row: pw columns of left padding, the W input columns, then right padding
    # up to the last tap of the last window (ceil_mode windows may pass the padded input)
    tw = max(pw + w, (ow - 1) * sw + (kw - 1) * dw + 1)
    rows = np_ * oh
    nchunk = max(1, min(rows, nchunk))
    for ch in prange(nchunk):
        t = np.empty(tw, dtype=x.dtype)
        for j in range(tw):
            t[j] = _NEG_INF
        tc = t[pw : pw + w]
        for r in range(ch * rows // nchunk, (ch + 1) * rows // nchunk):
            p = r // oh
            oi = r - p * oh
            top = oi * sh - ph
            a0 = 0 if top >= 0 else (-top + dh - 1) // dh
            # (1) vertical: tc = max over the in-bounds window rows (at least one exists:
            # pool2d_params rejects windows lying entirely in the padding)
            xr = x[p, top + a0 * dh]
            for j in range(w):
                tc[j] = xr[j]
            for a in range(a0 + 1, kh):
                ih = top + a * dh
                if ih >= h:
                    break
                xr = x[p, ih]
                for j in range(w):
                    v = xr[j]
                    m = tc[j]
                    tc[j] = v if (v > m) | (v != v) else m
            # (2) horizontal: y[oj] = max over taps t[oj*sw + b*dw]
            yr = y[p, oi]
            if sw == 2 and dw == 1 and kw == 2:
                for k in range(ow):
                    m = t[2 * k]
                    v = t[2 * k + 1]
                    yr[k] = v if (v > m) | (v != v) else m
            elif sw == 2 and dw == 1 and kw == 3:
                for k in range(ow):
                    m = t[2 * k]
                    v = t[2 * k + 1]
                    m = v if (v > m) | (v != v) else m
                    v = t[2 * k + 2]
                    yr[k] = v if (v > m) | (v != v) else m
            elif sw == 1 and dw == 1 and kw == 3:
                for k in range(ow):
                    m = t[k]
                    v = t[k + 1]
                    m = v if (v > m) | (v != v) else m
                    v = t[k + 2]
                    yr[k] = v if (v > m) | (v != v) else m
            else:
                for k in range(ow):
                    yr[k] = t[k * sw]
                for b in range(1, kw):
                    ts = t[b * dw :]
                    if sw == 1:
                        for k in range(ow):
                            v = ts[k]
                            m = yr[k]
                            yr[k] = v if (v > m) | (v != v) else m
                    elif sw == 2:
                        for k in range(ow):
                            v = ts[2 * k]
                            m = yr[k]
                            yr[k] = v if (v > m) | (v != v) else m
                    else:
                        for k in range(ow):
                            v = ts[k * sw]
                            m = yr[k]
                            yr[k] = v if (v > m) | (v != v) else m


@njit(cache=True, inline="always")
def _wins(v, m):
    """PyTorch's replacement rule: strictly greater, or NaN."""
    return (v > m) | (v != v)


@njit(cache=True, inline="always")
def _widen_codes(ir, code, base, step):
    """ir[k] = base + k*step + code[k]: the int64 flat indices from the int32
    in-window offsets (a separate pass, so the max loop works in 32-bit lanes)."""
    for k in range(ir.size):
        ir[k] = base + k * step + code[k]


@njit(cache=True, inline="always")
def _row_k2s2(xp, yr, ir, code, top, pw, lo, hi):
    """Interior columns [lo, hi) of one output row, 2x2 window, column stride 2."""
    w = xp.shape[1]
    c0 = 2 * lo - pw
    x0 = xp[top, c0:]
    x1 = xp[top + 1, c0:]
    ys = yr[lo:hi]
    cz = code[: hi - lo]
    d1, dw0, dw1 = np.int32(1), np.int32(w), np.int32(w + 1)
    for k in range(hi - lo):
        c = 2 * k
        m = x0[c]
        d = np.int32(0)
        v = x0[c + 1]
        u = _wins(v, m)
        m = v if u else m
        d = d1 if u else d
        v = x1[c]
        u = _wins(v, m)
        m = v if u else m
        d = dw0 if u else d
        v = x1[c + 1]
        u = _wins(v, m)
        m = v if u else m
        d = dw1 if u else d
        ys[k] = m
        cz[k] = d
    _widen_codes(ir[lo:hi], cz, top * w + c0, 2)


@njit(cache=True, inline="always")
def _row_k3s2(xp, yr, ir, code, top, pw, lo, hi):
    """Interior columns [lo, hi) of one output row, 3x3 window, column stride 2."""
    w = xp.shape[1]
    c0 = 2 * lo - pw
    x0 = xp[top, c0:]
    x1 = xp[top + 1, c0:]
    x2 = xp[top + 2, c0:]
    ys = yr[lo:hi]
    cz = code[: hi - lo]
    d01, d02 = np.int32(1), np.int32(2)
    d10, d11, d12 = np.int32(w), np.int32(w + 1), np.int32(w + 2)
    d20, d21, d22 = np.int32(2 * w), np.int32(2 * w + 1), np.int32(2 * w + 2)
    for k in range(hi - lo):
        c = 2 * k
        m = x0[c]
        d = np.int32(0)
        v = x0[c + 1]
        u = _wins(v, m)
        m = v if u else m
        d = d01 if u else d
        v = x0[c + 2]
        u = _wins(v, m)
        m = v if u else m
        d = d02 if u else d
        v = x1[c]
        u = _wins(v, m)
        m = v if u else m
        d = d10 if u else d
        v = x1[c + 1]
        u = _wins(v, m)
        m = v if u else m
        d = d11 if u else d
        v = x1[c + 2]
        u = _wins(v, m)
        m = v if u else m
        d = d12 if u else d
        v = x2[c]
        u = _wins(v, m)
        m = v if u else m
        d = d20 if u else d
        v = x2[c + 1]
        u = _wins(v, m)
        m = v if u else m
        d = d21 if u else d
        v = x2[c + 2]
        u = _wins(v, m)
        m = v if u else m
        d = d22 if u else d
        ys[k] = m
        cz[k] = d
    _widen_codes(ir[lo:hi], cz, top * w + c0, 2)


# A plain call, not inline="always": Numba-level inlining of this body into the
# parallel kernel costs much compile time and gained nothing measurable.
@njit(cache=True)
def _row_generic(xp, yr, ir, code, rel0, top, kh, kw, sw, pw, dh, dw):
    """One output row of any window: taps outer, output columns inner, one
    vectorised pass per in-bounds tap updating the running max and the int32
    offset of the argmax from the window's top-left corner (row-major order)."""
    h, w = xp.shape
    ow = yr.size
    a0 = 0 if top >= 0 else (-top + dh - 1) // dh
    first_row = np.int32(a0 * dh * w)
    for oj in range(ow):
        yr[oj] = _NEG_INF
        code[oj] = first_row + rel0[oj]
    for a in range(a0, kh):
        ih = top + a * dh
        if ih >= h:
            break
        for b in range(kw):
            cb, tlo, thi = tap_cols(b, dw, pw, sw, w, ow)
            if thi == tlo:
                continue
            xs = xp[ih, tlo * sw + cb :]
            ys = yr[tlo:thi]
            cz = code[tlo:thi]
            rel = np.int32(a * dh * w + b * dw)
            if sw == 1:
                for k in range(thi - tlo):
                    v = xs[k]
                    m = ys[k]
                    u = _wins(v, m)
                    ys[k] = v if u else m
                    cz[k] = rel if u else cz[k]
            elif sw == 2:
                for k in range(thi - tlo):
                    v = xs[2 * k]
                    m = ys[k]
                    u = _wins(v, m)
                    ys[k] = v if u else m
                    cz[k] = rel if u else cz[k]
            else:
                for k in range(thi - tlo):
                    v = xs[k * sw]
                    m = ys[k]
                    u = _wins(v, m)
                    ys[k] = v if u else m
                    cz[k] = rel if u else cz[k]
    _widen_codes(ir, code[:ow], top * w - pw, sw)


# Row blocks of the forward with indices: enough for load balance on many
# threads, few enough that each block's scratch allocation is negligible.
_IDX_BLOCKS = 256


@njit(parallel=True, cache=True)
def _pool_fwd_idx(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw):
    """Values and int64 argmax (flat offset into the H*W plane), row-major window
    scan.  x (P, H, W); y, idx (P, OH, OW).

    The P*OH rows are cut into contiguous blocks; each block has one int32
    scratch row of argmax offsets inside the window, widened to flat int64
    indices once per row."""
    np_, h, w = x.shape
    oh, ow = y.shape[1], y.shape[2]
    # offset of each window's first in-bounds column from its left edge (PyTorch's initial argmax)
    rel0 = np.empty(ow, dtype=np.int32)
    for oj in range(ow):
        c = oj * sw - pw
        r0 = 0
        while c + r0 < 0:
            r0 += dw
        rel0[oj] = r0
    fast = kh == kw and (kh == 2 or kh == 3) and sw == 2 and dh == 1 and dw == 1
    # interior output columns of the fast path: every tap inside the input
    lo = (pw + 1) // 2
    hi = max(lo, min(ow, (w - kw + pw) // 2 + 1))
    rows = np_ * oh
    nblk = max(1, min(rows, _IDX_BLOCKS))
    for blk in prange(nblk):
        code = np.empty(max(ow, 1), dtype=np.int32)
        r0 = blk * rows // nblk
        p = r0 // oh
        oi = r0 - p * oh - 1
        for _ in range(r0, (blk + 1) * rows // nblk):
            oi += 1
            if oi == oh:  # next plane (no division per row)
                oi = 0
                p += 1
            top = oi * sh - ph
            xp = x[p]
            yr = y[p, oi]
            ir = idx[p, oi]
            if fast and top >= 0 and top + kh <= h:
                if kh == 2:
                    _row_k2s2(xp, yr, ir, code, top, pw, lo, hi)
                else:
                    _row_k3s2(xp, yr, ir, code, top, pw, lo, hi)
                for oj in range(lo):
                    yr[oj], ir[oj] = _window_idx(xp, top, oj * 2 - pw, kh, kw, 1, 1)
                for oj in range(hi, ow):
                    yr[oj], ir[oj] = _window_idx(xp, top, oj * 2 - pw, kh, kw, 1, 1)
            else:
                _row_generic(xp, yr, ir, code, rel0, top, kh, kw, sw, pw, dh, dw)


@njit(parallel=True, cache=True)
def _pool_bwd(gy, idx, gx):
    """gx[p, idx[p, m]] += gy[p, m].  gy, idx (P, M); gx (P, H*W).

    Race-free: one prange iteration owns one whole gx plane (module comment)."""
    np_, m = gy.shape
    hw = gx.shape[1]
    for p in prange(np_):
        g = gx[p]
        for j in range(hw):
            g[j] = 0
        gp = gy[p]
        ip = idx[p]
        for j in range(m):
            g[ip[j]] += gp[j]


@njit(parallel=True, cache=True)
def _index_range(a, nchunk):
    """(min, max) of a non-empty 1-D int64 array in one parallel pass."""
    n = a.size
    nchunk = max(1, min(n, nchunk))
    lo = np.empty(nchunk, dtype=np.int64)
    hi = np.empty(nchunk, dtype=np.int64)
    for ch in prange(nchunk):
        s = a[ch * n // nchunk : (ch + 1) * n // nchunk]
        mn = s[0]
        mx = s[0]
        for j in range(s.size):
            v = s[j]
            mn = min(mn, v)
            mx = max(mx, v)
        lo[ch] = mn
        hi[ch] = mx
    return lo.min(), hi.max()


def index_range(indices: np.ndarray) -> tuple[int, int]:
    """(min, max) of max_pool2d indices for the backward's range check: one
    parallel pass instead of NumPy's two serial ones (it costs as much as the
    backward kernel otherwise)."""
    if indices.size == 0:
        raise ValueError("index_range of an empty array")
    if indices.dtype != np.int64 or not indices.flags.c_contiguous:
        return int(indices.min()), int(indices.max())
    lo, hi = _index_range(indices.reshape(-1), numba.get_num_threads())
    return int(lo), int(hi)


def max_pool2d_forward(x: np.ndarray, p: Pool2dParams, return_indices: bool):
    """x (N, C, H, W) C-contiguous float32/float64 -> y (N, C, OH, OW), and int64
    indices (flat offsets into each H*W plane) when ``return_indices``."""
    x3 = x.reshape(p.n * p.c, p.h, p.w)
    y = _alloc.empty(p.y_shape, x.dtype)
    y3 = y.reshape(p.n * p.c, p.oh, p.ow)
    geom = (p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw)
    if not return_indices:
        # read here: numba.get_num_threads() inside the kernel defeats cache=True
        _pool_fwd(x3, y3, *geom, numba.get_num_threads())
        return y
    idx = _alloc.empty(p.y_shape, np.int64)
    _pool_fwd_idx(x3, y3, idx.reshape(y3.shape), *geom)
    return y, idx


def max_pool2d_backward(gy: np.ndarray, indices: np.ndarray, p: Pool2dParams) -> np.ndarray:
    """gy, indices (N, C, OH, OW) -> grad_x (N, C, H, W): gy scattered to the
    argmax positions, summed where windows overlap."""
    gx = _alloc.empty((p.n, p.c, p.h, p.w), gy.dtype)
    planes = p.n * p.c
    _pool_bwd(gy.reshape(planes, -1), indices.reshape(planes, -1), gx.reshape(planes, p.h * p.w))
    return gx
