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
from .simd import dot_tile

__all__ = [
    "grad_weight_contiguous",
    "grad_weight_per_image",
    "grad_weight_rows",
    "gw_channel_blocks",
    "gw_chunks",
    "gw_rows",
    "pair_offsets",
]

# (input channel, tap) pairs per pass of the output-channel quads: 8 channels
# of a 3x3 kernel, whose input rows stay in L1
_PAIR_BLOCK = 72


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
def _dot_channels(gys, gq, gkstride, xs, xq, xoffs, ln, nseg, sstride, nk, zero, pa):
    """pa (nk, J) += the dot products of the nk grad_output rows from gq on
    (gkstride apart) with the J shifted input rows xs[xq + xoffs[j] + ...],
    over nseg segments of ln Q, sstride apart.

    The (input channel, tap) pairs j are flattened, so the 4 x 3 register
    tile fills for any tap count (a 1x1 kernel takes 3 input channels per
    tile).  Pairs in blocks of _PAIR_BLOCK outer, output-channel quads inner:
    the block's input rows stay in L1 while the quads' grad_output rows come
    from L2."""
    npair = xoffs.shape[0]
    for j0 in range(0, npair, _PAIR_BLOCK):
        j1 = min(npair, j0 + _PAIR_BLOCK)
        xo = xoffs[j0:j1]
        k = 0
        while k < nk:
            if nk - k >= 4:
                _dot4(gys, gq + k * gkstride, gkstride, xs, xq, xo, ln, nseg, sstride, zero, pa[k : k + 4, j0:j1])
                k += 4
            else:
                _dot1(gys, gq + k * gkstride, xs, xq, xo, ln, nseg, sstride, zero, pa[k, j0:j1])
                k += 1


@njit(fastmath=FASTMATH, cache=True)
def _dot_segment(gys, gq, gkstride, xs, xq, gstride, xoffs, ln, nseg, sstride, groups, zero, pa):
    """pa (K, J) += every (k, pair) dot product over nseg segments of ln Q,
    sstride apart; group g's input channels start gstride * g after xq."""
    kg = pa.shape[0] // groups
    for g in range(groups):
        k = g * kg
        _dot_channels(
            gys, gq + k * gkstride, gkstride, xs, xq + g * gstride, xoffs, ln, nseg, sstride, kg, zero, pa[k : k + kg]
        )


@njit(fastmath=FASTMATH, cache=True)
def _walk(gys, gbase, gkstride, xs, xbase, gstride, xoffs, walk, groups, lo, hi, zero, pa):
    """pa (K, J) += the dot products over the walk's segments lo <= s < hi,
    grad_output Q at gbase + Q, the input's at xbase + Q.
    walk = (qn, plane, span, per, seg): span > 0 walks images (segment s =
    images s*per ... of span Q each, plane apart, up to qn images), else
    contiguous Q (segment s = Q s*seg ... of at most seg, up to qn Q)."""
    qn, plane, span, per, seg = walk
    for s in range(lo, hi):
        if span > 0:
            n0 = s * per
            cnt = min(per, qn - n0)
            _dot_segment(
                gys,
                gbase + n0 * plane,
                gkstride,
                xs,
                xbase + n0 * plane,
                gstride,
                xoffs,
                span,
                cnt,
                plane,
                groups,
                zero,
                pa,
            )
        else:
            q0 = s * seg
            ln = min(seg, qn - q0)
            _dot_segment(gys, gbase + q0, gkstride, xs, xbase + q0, gstride, xoffs, ln, 1, 0, groups, zero, pa)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gw_chunks(gys, gbase, gkstride, xs, gstride, xoffs, walk, nwalk, groups, part):
    """part (nchunk, K, J) float64 <- partial sums of every (k, pair) dot
    product, chunk ch over its own share of the walk's nwalk segments."""
    nchunk = part.shape[0]
    for ch in prange(nchunk):
        pa = part[ch]
        pa[:] = 0.0
        zero = np.zeros(1, dtype=gys.dtype)[0]
        lo, hi = ch * nwalk // nchunk, (ch + 1) * nwalk // nchunk
        _walk(gys, gbase, gkstride, xs, 0, gstride, xoffs, walk, groups, lo, hi, zero, pa)
    return part


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gw_channel_blocks(gys, gbase, gkstride, xs, gstride, xoffs, walk, nwalk, groups, kblk, out):
    """out (K, J) float64 <- every (k, pair) dot product over the whole walk,
    parallel over blocks of kblk output channels of a group: each task owns
    its rows of ``out`` (no partial results to zero and sum)."""
    kk_n = out.shape[0]
    kg = kk_n // groups
    nkb = -(-kg // kblk)
    for t in prange(groups * nkb):
        g = t // nkb
        k0 = g * kg + (t - g * nkb) * kblk
        nk = min(kblk, (g + 1) * kg - k0)
        pa = out[k0 : k0 + nk]
        pa[:] = 0.0
        zero = np.zeros(1, dtype=gys.dtype)[0]
        _walk(gys, gbase + k0 * gkstride, gkstride, xs, g * gstride, 0, xoffs, walk, 1, 0, nwalk, zero, pa)
    return out


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gw_rows(gys, gstrides, xs, gstride, xoffs, plane, pitch, dims, groups, part, gsum):
    """The dot products over exact output rows: gy[k, n, oh, ow] at gbase +
    k*gkstride + n*gnstride + oh*gpitch + ow (``gstrides`` = (gbase, gkstride,
    gnstride, gpitch)), x at n*plane + oh*pitch + ow; ``dims`` = (N, OH, OW).
    part (nchunk, K, J) float64, chunk ch over its own rows; gsum (nchunk, K)
    float64 <- the chunk's sums of grad_output per channel."""
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
            _dot_segment(gys, g0, gkstride, xs, n * plane + oh * pitch, gstride, xoffs, ow_n, 1, 0, groups, zero, pa)
            for k in range(kk_n):
                gr = gys[g0 + k * gkstride : g0 + k * gkstride + ow_n]
                tot = 0.0
                for q in range(ow_n):
                    tot += gr[q]
                gsum[ch, k] += tot
    return part


def pair_offsets(cstride: int, offs: np.ndarray, cg: int) -> np.ndarray:
    """Offsets of the flattened (input channel of a group, tap) pairs:
    c*cstride + offs[tap] at index c*T + tap."""
    return (np.arange(cg, dtype=np.int64)[:, None] * cstride + offs[None, :]).ravel()


def _gw(gys, gbase, gkstride, xs, cstride, offs, walk, nwalk, groups, shape, tiling):
    """float64 grad_weight (K, C/groups, T) over the walk's nwalk segments:
    by output-channel blocks (``tiling.channel_block`` > 0) or by chunks of
    the walk with private partial results."""
    k, cg, t = shape
    xoffs = pair_offsets(cstride, offs, cg)
    gstride = cg * cstride
    walk = tuple(int(v) for v in walk)
    if tiling.channel_block > 0:
        out = _alloc.empty((k, cg * t), np.float64)
        gw_channel_blocks(gys, gbase, gkstride, xs, gstride, xoffs, walk, nwalk, groups, tiling.channel_block, out)
        return out.reshape(shape)
    part = _alloc.empty((max(1, min(nwalk, tiling.threads)), k, cg * t), np.float64)
    gw_chunks(gys, gbase, gkstride, xs, gstride, xoffs, walk, nwalk, groups, part)
    return _chunk_sum(part).reshape(shape)


def _chunk_sum(part: np.ndarray) -> np.ndarray:
    return part.sum(axis=0) if part.shape[0] > 1 else part[0]


def grad_weight_contiguous(gys, gbase, gkstride, xs, cstride, offs, qn, groups, shape, tiling):
    """float64 grad_weight (K, C/groups, T) over all qn Q, in segments of
    ``tiling.segment``."""
    seg = tiling.segment
    return _gw(gys, gbase, gkstride, xs, cstride, offs, (qn, 0, 0, 0, seg), -(-qn // seg), groups, shape, tiling)


def grad_weight_per_image(gys, gbase, gkstride, xs, cstride, offs, plane, n_img, groups, shape, tiling):
    """float64 grad_weight (K, C/groups, T) over the first ``tiling.span`` Q
    of each image, in calls of about ``tiling.segment`` Q."""
    per = max(1, tiling.segment // tiling.span)
    walk = (n_img, plane, tiling.span, per, 0)
    return _gw(gys, gbase, gkstride, xs, cstride, offs, walk, -(-n_img // per), groups, shape, tiling)


def grad_weight_rows(gys, gstrides, xs, cstride, offs, plane, pitch, dims, groups, shape, tiling):
    """(float64 grad_weight (K, C/groups, T), float64 per-channel sums of
    grad_output (K,)) by ``gw_rows``."""
    k, cg, t = shape
    part = _alloc.empty((max(1, min(dims[0] * dims[1], tiling.threads)), k, cg * t), np.float64)
    gsum = _alloc.empty((part.shape[0], k), np.float64)
    gw_rows(gys, gstrides, xs, cg * cstride, pair_offsets(cstride, offs, cg), plane, pitch, dims, groups, part, gsum)
    return _chunk_sum(part).reshape(shape), gsum.sum(axis=0)
