"""grad_weight as register-tiled dot products over a prepared buffer.

gw[k, c, tap] = sum over Q of gy[k, Q] * x[c*cstride + offs[tap] + Q]: for
each (output channel, input channel, tap) a dot product of a grad_output row
with the shifted prepared input.  Register tiles ``simd.dot_tile`` of 4 output
channels x 3 taps (12 vector accumulators, 7 vector loads per 12 FMAs),
channel quads outer and input channels inner so the quad's grad_output rows
stay in L1.  Parallel over chunks of the Q range, each with a private float64
partial grad_weight summed afterwards: race-free, and deterministic for a
fixed thread count.  Three ways to walk Q, one kernel each:

* ``gw_contiguous``: grad_output in the same layout as x (zeros at garbage Q),
  all Q in segments of ``segment``; chunk bounds on multiples of 16 elements
  (with the 64-byte aligned buffers of ``_alloc.workspace`` every grad_output
  load is aligned).
* ``gw_per_image``: the same buffers, but only each image's first ``span`` Q
  (its output rows; the padding rows up to the next image are skipped),
  several images per call and one horizontal sum.
* ``gw_rows``: an unpadded grad_output (N, K, OH, OW) read in place, exact
  output rows only, with its per-channel sums (grad_bias) taken while each
  row is in cache.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ... import _alloc
from ..common import FASTMATH
from ..layout import GradWeightTiling
from .simd import dot_tile

__all__ = [
    "grad_weight_contiguous",
    "grad_weight_per_image",
    "grad_weight_rows",
    "gw_contiguous",
    "gw_per_image",
    "gw_rows",
]


@njit(fastmath=FASTMATH, cache=True)
def _dot4(gys, gq, gkstride, xs, xq, offs, ln, nseg, sstride, zero, pa):
    """pa (4, T) += dot products over segments s < nseg and q < ln of the
    grad_output rows gys[gq + s*sstride + i*gkstride + q] (i < 4) with the
    input xs[xq + s*sstride + offs[tap] + q]."""
    ntap = offs.shape[0]
    j = 0
    while j + 3 <= ntap:
        r = dot_tile(gys, gq, gkstride, xs, xq, offs[j], offs[j + 1], offs[j + 2], ln, nseg, sstride)
        pa[0, j] += r[0]
        pa[0, j + 1] += r[1]
        pa[0, j + 2] += r[2]
        pa[1, j] += r[3]
        pa[1, j + 1] += r[4]
        pa[1, j + 2] += r[5]
        pa[2, j] += r[6]
        pa[2, j + 1] += r[7]
        pa[2, j + 2] += r[8]
        pa[3, j] += r[9]
        pa[3, j + 1] += r[10]
        pa[3, j + 2] += r[11]
        j += 3
    while j < ntap:
        s00 = s10 = s20 = s30 = zero
        for sg in range(nseg):
            g = gq + sg * sstride
            g0 = gys[g : g + ln]
            g1 = gys[g + gkstride : g + gkstride + ln]
            g2 = gys[g + 2 * gkstride : g + 2 * gkstride + ln]
            g3 = gys[g + 3 * gkstride : g + 3 * gkstride + ln]
            o0 = xq + sg * sstride + offs[j]
            x0 = xs[o0 : o0 + ln]
            for q in range(ln):
                e0 = x0[q]
                s00 += g0[q] * e0
                s10 += g1[q] * e0
                s20 += g2[q] * e0
                s30 += g3[q] * e0
        pa[0, j] += s00
        pa[1, j] += s10
        pa[2, j] += s20
        pa[3, j] += s30
        j += 1


@njit(fastmath=FASTMATH, cache=True)
def _dot1(gys, gq, xs, xq, offs, ln, nseg, sstride, zero, pa):
    """pa (T,) += dot products for one grad_output row (see ``_dot4``)."""
    ntap = offs.shape[0]
    for sg in range(nseg):
        g0 = gys[gq + sg * sstride : gq + sg * sstride + ln]
        xb = xq + sg * sstride
        j = 0
        while j + 3 <= ntap:
            o0 = xb + offs[j]
            o1 = xb + offs[j + 1]
            o2 = xb + offs[j + 2]
            x0 = xs[o0 : o0 + ln]
            x1 = xs[o1 : o1 + ln]
            x2 = xs[o2 : o2 + ln]
            s0 = s1 = s2 = zero
            for q in range(ln):
                f = g0[q]
                s0 += f * x0[q]
                s1 += f * x1[q]
                s2 += f * x2[q]
            pa[j] += s0
            pa[j + 1] += s1
            pa[j + 2] += s2
            j += 3
        while j < ntap:
            o0 = xb + offs[j]
            x0 = xs[o0 : o0 + ln]
            s0 = zero
            for q in range(ln):
                s0 += g0[q] * x0[q]
            pa[j] += s0
            j += 1


@njit(fastmath=FASTMATH, cache=True)
def _dot_segment(gys, gq, gkstride, xs, xq, cstride, offs, ln, nseg, sstride, groups, zero, pa):
    """pa (K, cg, T) += every (k, c, tap) dot product over nseg segments of
    ln Q, sstride apart.

    Output-channel quads outer, input channels inner: the 4 grad_output rows
    of a quad stay in L1 while the input rows stream from L2."""
    cg = pa.shape[1]
    kg = pa.shape[0] // groups
    for g in range(groups):
        k = g * kg
        ke = k + kg
        while k < ke:
            nk = min(4, ke - k)
            for ci in range(cg):
                xc = xq + (g * cg + ci) * cstride
                if nk == 4:
                    _dot4(gys, gq + k * gkstride, gkstride, xs, xc, offs, ln, nseg, sstride, zero, pa[k : k + 4, ci])
                else:
                    for kk in range(k, k + nk):
                        _dot1(gys, gq + kk * gkstride, xs, xc, offs, ln, nseg, sstride, zero, pa[kk, ci])
            k += nk


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gw_contiguous(gys, gbase, gkstride, xs, cstride, offs, qn, seg, groups, part):
    """part (nchunk, K, C/groups, T) float64 <- partial sums of gw[k, c, tap] =
    sum over q < qn of gys[gbase + k*gkstride + q] * xs[(g*cg + c)*cstride +
    offs[tap] + q], chunk ch over its own range of q, in segments of seg."""
    nchunk = part.shape[0]
    for ch in prange(nchunk):
        pa = part[ch]
        pa[:] = 0.0
        zero = np.zeros(1, dtype=gys.dtype)[0]
        qa = ch * qn // nchunk // 16 * 16
        qb = (ch + 1) * qn // nchunk // 16 * 16 if ch < nchunk - 1 else qn
        for s0 in range(qa, qb, seg):
            ln = min(seg, qb - s0)
            _dot_segment(gys, gbase + s0, gkstride, xs, s0, cstride, offs, ln, 1, 0, groups, zero, pa)
    return part


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gw_per_image(gys, gbase, gkstride, xs, cstride, offs, plane, n_img, span, seg, groups, part):
    """``gw_contiguous`` over the first ``span`` Q of each of the n_img images
    (plane Q apart) only; chunk ch over its own images, in calls of
    max(1, seg // span) images."""
    nchunk = part.shape[0]
    for ch in prange(nchunk):
        pa = part[ch]
        pa[:] = 0.0
        zero = np.zeros(1, dtype=gys.dtype)[0]
        per = max(1, seg // span)
        for n0 in range(ch * n_img // nchunk, (ch + 1) * n_img // nchunk, per):
            cnt = min(per, (ch + 1) * n_img // nchunk - n0)
            _dot_segment(
                gys, gbase + n0 * plane, gkstride, xs, n0 * plane, cstride, offs, span, cnt, plane, groups, zero, pa
            )
    return part


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gw_rows(gys, gstrides, xs, cstride, offs, plane, pitch, dims, groups, part, gsum):
    """``gw_contiguous`` over exact output rows: gy[k, n, oh, ow] at gbase +
    k*gkstride + n*gnstride + oh*gpitch + ow (``gstrides`` = (gbase, gkstride,
    gnstride, gpitch)), x at n*plane + oh*pitch + ow; ``dims`` = (N, OH, OW).
    Chunk ch over its own rows; gsum (nchunk, K) float64 <- the chunk's sums
    of grad_output per channel."""
    nchunk, kk_n = part.shape[0], part.shape[1]
    gbase, gkstride, gnstride, gpitch = gstrides
    n_img, oh_n, ow_n = dims
    nrow = n_img * oh_n
    for ch in prange(nchunk):
        pa = part[ch]
        pa[:] = 0.0
        zero = np.zeros(1, dtype=gys.dtype)[0]
        gsum[ch, :] = 0.0
        for row in range(ch * nrow // nchunk, (ch + 1) * nrow // nchunk):
            n = row // oh_n
            oh = row - n * oh_n
            g0 = gbase + n * gnstride + oh * gpitch
            _dot_segment(gys, g0, gkstride, xs, n * plane + oh * pitch, cstride, offs, ow_n, 1, 0, groups, zero, pa)
            for k in range(kk_n):
                gr = gys[g0 + k * gkstride : g0 + k * gkstride + ow_n]
                tot = 0.0
                for q in range(ow_n):
                    tot += gr[q]
                gsum[ch, k] += tot
    return part


def _partials(work: int, shape: tuple[int, int, int], tiling: GradWeightTiling) -> np.ndarray:
    """float64 (nchunk, K, C/groups, T) partial results, one chunk per thread
    at most (each kernel zeroes its chunk)."""
    return _alloc.empty((max(1, min(work, tiling.threads)),) + shape, np.float64)


def _chunk_sum(part: np.ndarray) -> np.ndarray:
    return part.sum(axis=0) if part.shape[0] > 1 else part[0]


def grad_weight_contiguous(gys, gbase, gkstride, xs, cstride, offs, qn, groups, shape, tiling):
    """float64 grad_weight (K, C/groups, T) by ``gw_contiguous``."""
    part = _partials(qn, shape, tiling)
    return _chunk_sum(gw_contiguous(gys, gbase, gkstride, xs, cstride, offs, qn, tiling.segment, groups, part))


def grad_weight_per_image(gys, gbase, gkstride, xs, cstride, offs, plane, n_img, groups, shape, tiling):
    """float64 grad_weight (K, C/groups, T) by ``gw_per_image``."""
    part = _partials(n_img, shape, tiling)
    gw_per_image(gys, gbase, gkstride, xs, cstride, offs, plane, n_img, tiling.span, tiling.segment, groups, part)
    return _chunk_sum(part)


def grad_weight_rows(gys, gstrides, xs, cstride, offs, plane, pitch, dims, groups, shape, tiling):
    """(float64 grad_weight (K, C/groups, T), float64 per-channel sums of
    grad_output (K,)) by ``gw_rows``."""
    part = _partials(dims[0] * dims[1], shape, tiling)
    gsum = _alloc.empty((part.shape[0], shape[0]), np.float64)
    gw_rows(gys, gstrides, xs, cstride, offs, plane, pitch, dims, groups, part, gsum)
    return _chunk_sum(part), gsum.sum(axis=0)
