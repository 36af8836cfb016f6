"""Copies into the prepared buffers of ``fastconv.cpu.layout``.

``prepare_standard`` / ``prepare_batch_inner`` allocate a buffer of a layout
and fill it from an NCHW array (``embed`` / ``embed_bi``, parallel Numba
kernels); a ``Prepared`` is the pair (layout, buffer).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ... import _alloc
from ..common import FASTMATH, tap_cols
from ..layout import Layout

__all__ = ["Prepared", "embed", "embed_bi", "prepare_batch_inner", "prepare_standard"]


class Prepared:
    """A prepared buffer: its ``layout``, the flat array ``buf`` and, for a
    copy that summed its planes, ``sums`` (float64, one per (channel, phase,
    image) plane; empty otherwise)."""

    def __init__(self, layout: Layout, buf: np.ndarray, sums: np.ndarray):
        self.layout = layout
        self.buf = buf
        self.sums = sums


def prepare_standard(src: np.ndarray, layout: Layout, sums: bool = False, scratch: str | None = None) -> Prepared:
    """``src`` (N, C, H, W) copied into a new buffer of a standard ``layout``
    (an "nchw" layout: ``src`` itself, flat, no copy, no sums); into the
    calling thread's scratch buffer ``scratch`` (``_alloc.scratch``) when the
    copy does not outlive the kernel entry that makes it."""
    lo = layout
    if lo.kind == "nchw":
        return Prepared(layout, np.ascontiguousarray(src).reshape(-1), np.empty(0, dtype=np.float64))
    buf = _alloc.workspace(lo.size, src.dtype) if scratch is None else _alloc.scratch(scratch, lo.size, src.dtype)
    buf[: lo.lead] = 0
    plane_sums = np.empty(lo.c * lo.sh * lo.sw * lo.n if sums else 0, dtype=np.float64)
    embed(src, buf[lo.lead :], lo.top, lo.left, lo.sh, lo.sw, lo.hq, lo.pitch, lo.rows, lo.cstride, plane_sums)
    return Prepared(layout, buf, plane_sums)


def prepare_batch_inner(src: np.ndarray, layout: Layout, scratch: str | None = None) -> Prepared:
    """``src`` (N, C, H, W) copied into a new buffer of a batch-inner
    ``layout`` (or the scratch buffer ``scratch``, as ``prepare_standard``)."""
    lo = layout
    buf = _alloc.empty((lo.size,), src.dtype) if scratch is None else _alloc.scratch(scratch, lo.size, src.dtype)
    embed_bi(src, buf, lo.lead, lo.top, lo.left, lo.rows, lo.pitch // lo.n, lo.cstride)
    return Prepared(layout, buf, np.empty(0, dtype=np.float64))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def embed(src, dst, top, left, sh, sw, hq, wq, rows, cstride, sums):
    """Channel-major prepared copy of src (N, C, H, W) (the standard layout).

    dst (flat, >= C*cstride elements, plane = rows*wq, rows >= hq, cstride >=
    sh*sw*N*plane): element i*wq + j of image n's phase plane (a, b) of
    channel c, at c*cstride + ((a*sw + b)*N + n)*plane, holds the pixel
    (a + sh*i - top, b + sw*j - left) of src[n, c], or 0 outside src.  The
    gaps between channels and the elements after the last one are zeroed.
    ``sums`` (C*sh*sw*N float64, or empty to skip): sums[t] = the sum of the
    values copied into plane t = (c*sh*sw + phase)*N + n (grad_bias of a
    grad_output comes out of the copy, no second pass).  Parallel over
    (channel, phase, image) planes; each row is zeroed and then its valid
    columns copied (contiguous for sw == 1)."""
    n_img, c_n, h, w = src.shape
    nph = sh * sw
    plane = rows * wq
    nplane = c_n * nph * n_img
    want_sums = sums.shape[0] > 0
    for t in prange(nplane):
        n = t % n_img
        u = t // n_img
        phase = u % nph
        c = u // nph
        a = phase // sw
        b = phase - a * sw
        p0 = c * cstride + (phase * n_img + n) * plane
        d = dst[p0 : p0 + plane]
        if t % (nph * n_img) == 0:  # one task per channel zeroes the gap after it
            gap = dst[c * cstride + nph * n_img * plane : (c + 1) * cstride]
            for i in range(gap.shape[0]):
                gap[i] = 0
        # columns j with 0 <= b + sw*j - left < w
        _, j0, j1 = tap_cols(b, 1, left, sw, w, wq)
        tot = 0.0
        for i in range(rows):
            row = d[i * wq : (i + 1) * wq]
            ih = a + sh * i - top
            if i >= hq or ih < 0 or ih >= h or j1 == j0:
                row[:] = 0
                continue
            for j in range(j0):
                row[j] = 0
            for j in range(j1, wq):
                row[j] = 0
            sr = src[n, c, ih]
            if sw == 1:
                s0 = b + j0 - left
                seg = row[j0:j1]
                sseg = sr[s0 : s0 + (j1 - j0)]
                if want_sums:
                    for j in range(j1 - j0):
                        v = sseg[j]
                        seg[j] = v
                        tot += v
                else:
                    for j in range(j1 - j0):
                        seg[j] = sseg[j]
            else:
                for j in range(j0, j1):
                    v = sr[b + sw * j - left]
                    row[j] = v
                    tot += v
        if want_sums:
            sums[t] = tot
    # explicit loops: an array expression here, outside the prange, would be
    # turned into a parallel region of its own (one launch per statement)
    tail = dst[c_n * cstride :]
    for i in range(tail.shape[0]):
        tail[i] = 0
    return dst


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def embed_bi(src, dst, lead, top, left, hp, wp, cstride):
    """dst[lead + c*cstride + (i*wp + j)*N + n] = src[n, c, i - top, j - left],
    zero outside src; dst[:lead], each channel's gap up to cstride and the
    tail after the last channel are zeroed.  Parallel over (channel, row)."""
    n_img, c_n, h, w = src.shape
    row = wp * n_img
    # columns j with 0 <= j - left < w
    _, j0, j1 = tap_cols(0, 1, left, 1, w, wp)
    for t in prange(c_n * hp):
        c = t // hp
        i = t - c * hp
        d0 = lead + c * cstride + i * row
        ih = i - top
        if ih < 0 or ih >= h or j1 == j0:
            for q in range(d0, d0 + row):
                dst[q] = 0
        else:
            for q in range(d0, d0 + j0 * n_img):
                dst[q] = 0
            for q in range(d0 + j1 * n_img, d0 + row):
                dst[q] = 0
            # contiguous source rows, writes at stride N inside one L1-sized row
            for n in range(n_img):
                sr = src[n, c, ih]
                for j in range(j0, j1):
                    dst[d0 + j * n_img + n] = sr[j - left]
        if i == hp - 1:
            for q in range(lead + c * cstride + hp * row, lead + (c + 1) * cstride):
                dst[q] = 0
    for q in range(lead):
        dst[q] = 0
    for q in range(lead + c_n * cstride, dst.shape[0]):
        dst[q] = 0
    return dst
