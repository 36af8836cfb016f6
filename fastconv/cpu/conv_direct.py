"""Direct 2-D convolution on the CPU (no column buffer): forward and backward.

Prepared input.  ``embed`` copies x once into a channel-major, zero-padded
(and for stride > 1 polyphase) flattened buffer (see ``_conv_common``), in
which every kernel tap (r, s) is a constant shift ``offs[r*KW + s]`` of one
index ``Q = n*plane + oh*pitch + ow`` running over the whole batch (images'
planes are consecutive for each channel).  Stride,
padding ("same" included, asymmetric) and dilation are then only numbers in
``offs``: the loops have no bounds tests, and they are long even for 13x13
images.  Workspace: one padded copy of x (not KH*KW copies like a column
buffer).

Forward (``_corr``), in the style of Zhang/Franchetti/Low's direct
convolution.  Parallel over tasks (group, block of _BLOCK consecutive Q,
block of 4 output channels; channel blocks vary fastest so a thread's
consecutive tasks reuse the input block from L2), so a batch of one still
spreads over every core.  Each task runs register tiles (``corr_tile8``,
512-bit LLVM vector IR): 8 output channels x 3 vectors of Q (48 float32), 24
accumulators, 3 input loads and 8 weight broadcasts per 24 FMAs (measured
1.1-1.2x faster than the 4 x 4 tile); groups of 4 to 7 output channels use
``corr_tile``: 4 output channels x 4 vectors of Q (64 float32),
16 accumulators held in registers across the whole reduction over the
group's input channels and taps; per (channel, tap) 4 unaligned vector loads
of the prepared input, 4 weight broadcasts and 16 FMAs (FMA-bound: ~140
GFLOP/s per core measured in isolation).  Tiles round the block up to a
multiple of the tile width (the buffers have a zeroed tail to read).  The reduction is
split into blocks of _CBLK input channels (outer), each pass of the tiles
adding into the block's accumulator, so a tile's inputs and weights stay in
L1 for deep C.  For stride 1 the forward's prepared input is "compact":
consecutive rows (and images) share their zero padding (pitch W + max(left,
right), rows H + max(top, bottom)), e.g. 15x15 instead of 16x16 planes for
14x14 images with padding 1, so fewer garbage Q are computed.  When it
needs fewer tiles, each image of a block gets its own tiles covering its
output rows only (``img_tiles``: the padding rows between images are
skipped).  Garbage Q (the padding columns/rows of each plane) are computed
and dropped when the block is copied into y, where the bias is added.  Groups with fewer than 4 output
channels (depthwise) take a 1-channel loop that LLVM vectorises, so no work
is wasted on padding channels.

Small planes (stride 1, a batch of >= 8, e.g. 5x5 inputs with a 3x3 kernel)
use the batch-inner layout of ``conv_direct_bi`` instead: the same kernels
over a buffer with the batch innermost, so the padding rows of each image are
no longer computed (``use_batch_inner`` has the rule and its measurements).

Backward.  grad_bias: the per-plane sums ``embed`` takes while it copies
grad_output into the prepared layout (no pass of its own).  grad_weight (``_gw_dot``): for each
(output channel, input channel, tap) a dot product over Q of grad_output,
embedded in the same layout as the prepared input (zeros at garbage Q), with
the shifted prepared input; register tiles ``dot_tile`` of 4 output channels
x 3 taps (12 vector accumulators, 7 vector loads per 12 FMAs), channel quads
outer and input channels inner so the quad's grad_output rows stay in L1.
Where it saves work the dot products run over each image's output rows only
(several images per call, one horizontal sum: ``span``).  Parallel over
chunks of Q (on 16-element boundaries: with the 64-byte aligned buffers of
``_alloc.workspace`` the grad_output loads are aligned), each with a private
float64 partial grad_weight summed afterwards: race-free, and deterministic
for a fixed thread count.  grad_input, stride 1: a transposed convolution is
a correlation of grad_output with the weights read as (C, K) and the taps
mirrored, i.e. ``_corr`` again, reading the *same* grad_output buffer at
negative tap offsets: a read before a row or plane lands in the previous
one's zero padding (pitch - OW = (KW-1)*dw, rows - OH = (KH-1)*dh at stride
1), before the first plane in ``lead`` zeros.  Stride > 1 (and the exact
fallback, below): ``_gx_scatter``, parallel over grad_x planes, each owned
by one iteration (race-free).

Exactness with NaN/Inf.  The fast gradient paths multiply things PyTorch never
multiplies: zero margins of grad_output by weights (grad_x) and zero garbage
Q of grad_output by input values (grad_weight).  Those products are exact
zeros when the other factor is finite, so grad_x's fast path runs only when
the weights are all finite, and a grad_weight containing a NaN is recomputed
over exact output rows only (``flat=False``).  The forward multiplies the zero
padding like PyTorch and the reference do, and drops garbage outputs.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .. import _alloc
from .._params import Conv2dParams
from .conv_direct_bi import conv2d_backward_bi, conv2d_forward_bi, use_batch_inner
from ._conv_common import (
    FASTMATH,
    TILE_VECTORS,
    corr_tile,
    corr_tile8,
    dot_tile,
    embed,
    empty_bias,
    phase_geometry,
    tap_cols,
    tap_offsets,
)

__all__ = ["conv2d_forward_direct", "conv2d_backward_direct"]

# Q elements per ``_corr`` task: a 4 x 1024 float32 accumulator is 16 KiB (L1).
_BLOCK = 1024
# Input channels per pass of the register tiles over a ``_corr`` block: the
# tile's input rows (~12 KiB) and weights (~5 KiB float32) for 32 channels
# stay in L1 (measured: 1.25x faster forward for C = 256, 14x14).
_CBLK = 32
# Per-image register tiles in ``_corr`` when they are fewer (see ``_correlate``);
# measured: (64,32,13,13)->64 forward 1.97-2.11 -> 1.75-1.78 ms, others unchanged.
_IMG_TILES = True
# Per-image grad_weight segments in ``_gw_dot`` when they skip >= 16 Q per image.
_IMG_SEGMENTS = True
# ``_gw_dot``'s gsum argument when no grad_output sums are wanted.
_NO_SUMS = np.zeros((0, 0), dtype=np.float64)
# Q elements per ``_gw_dot`` segment: 4 grad_output rows (16 KiB in float32) stay in L1.
_SEG = 1024


# --------------------------------------------------------------------------- forward core


@njit(fastmath=FASTMATH, cache=True)
def _acc1(inp, base, cstride, cgi, wk, kk, offs, nv, a0):
    """a0 (>= 16*nv) += sum over c < cgi and taps t of
    wk[c, t, kk] * inp[base + c*cstride + offs[t] + q], q < 16*nv (one output
    channel; taps three at a time, a loop LLVM vectorises)."""
    ln = nv * 16
    ntap = offs.shape[0]
    for c in range(cgi):
        cb = base + c * cstride
        wc = wk[c]
        j = 0
        while j + 3 <= ntap:
            o0 = cb + offs[j]
            o1 = cb + offs[j + 1]
            o2 = cb + offs[j + 2]
            x0 = inp[o0:o0 + ln]
            x1 = inp[o1:o1 + ln]
            x2 = inp[o2:o2 + ln]
            u0, u1, u2 = wc[j, kk], wc[j + 1, kk], wc[j + 2, kk]
            for q in range(ln):
                a0[q] += u0 * x0[q] + u1 * x1[q] + u2 * x2[q]
            j += 3
        while j < ntap:
            o0 = cb + offs[j]
            x0 = inp[o0:o0 + ln]
            u0 = wc[j, kk]
            for q in range(ln):
                a0[q] += u0 * x0[q]
            j += 1


@njit(inline="always", cache=True)
def _tiles(ln, tw, plane, img_tiles):
    """(tiles, accumulator length) for a block of ln Q: contiguous tiles, or
    img_tiles per image (``_corr``)."""
    if img_tiles == 0:
        ntile = (ln + tw - 1) // tw
        return ntile, ntile * tw
    nimg = (ln + plane - 1) // plane
    return nimg * img_tiles, (nimg - 1) * plane + img_tiles * tw


@njit(inline="always", cache=True)
def _tile_start(ti, tw, plane, img_tiles):
    if img_tiles == 0:
        return ti * tw
    i = ti // img_tiles
    return i * plane + (ti - i * img_tiles) * tw


@njit(fastmath=FASTMATH, cache=True)
def _copy_out_bi(acc, q0, ln, nb, wpx, out, k0, nk, bias, has_bias):
    """out[n, k0 + kk, oh, ow] (+ bias) = acc[kk, Q - q0] for the batch-inner Q
    = (oh*wpx + ow)*nb + n in [q0, q0 + ln) that are output pixels."""
    oh_n, ow_n = out.shape[2], out.shape[3]
    for pix in range(q0 // nb, (q0 + ln - 1) // nb + 1):
        oh = pix // wpx
        ow = pix - oh * wpx
        if ow >= ow_n or oh >= oh_n:
            continue
        n_lo = max(0, q0 - pix * nb)
        n_hi = min(nb, q0 + ln - pix * nb)
        a0 = pix * nb - q0
        for kk in range(nk):
            k = k0 + kk
            ar = acc[kk, a0 + n_lo:a0 + n_hi]
            if has_bias:
                b = bias[k]
                for i in range(n_hi - n_lo):
                    out[n_lo + i, k, oh, ow] = ar[i] + b
            else:
                for i in range(n_hi - n_lo):
                    out[n_lo + i, k, oh, ow] = ar[i]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _corr(inp, cstride, offs, plane, pitch, wpk, bias, out, blk, cblk, img_tiles, bi_n):
    """out (N, Kout, OH, OW) = bias + correlation of a prepared buffer.

    out[n, g*kgo + k, oh, ow] = bias[...] + sum over the cgi input channels c
    of group g and the taps of wpk[g, k//4, c, tap, k%4] *
    inp[(g*cgi + c)*cstride + offs[tap] + n*plane + oh*pitch + ow].
    bias (Kout,) or (0,) for none; blk (a multiple of 64) Q per task; the
    reduction runs over blocks of cblk input channels, the register tiles
    adding each block's sums into acc (so its inputs and weights stay in L1).
    ``img_tiles`` > 0: blk is a multiple of plane and each image of a block
    gets img_tiles tiles from its first Q on, covering its output rows only
    (the padding rows after them, up to the next image, are skipped).
    ``bi_n`` > 0: the batch-inner layout of ``conv_direct_bi`` with N = bi_n,
    out[n, k, oh, ow] at Q = (oh*W' + ow)*N + n, pitch = W'*N (``plane`` unused);
    the copy transposes the batch back out of the vector lanes."""
    n_img, kout, oh_n, ow_n = out.shape
    groups, nkb, cgi, _, kt = wpk.shape
    kgo = kout // groups
    if bi_n > 0:
        qn = (oh_n - 1) * pitch + ow_n * bi_n
    else:
        qn = (n_img - 1) * plane + (oh_n - 1) * pitch + ow_n
    nblk = (qn + blk - 1) // blk
    has_bias = bias.shape[0] > 0
    for t in prange(groups * nkb * nblk):
        # output-channel blocks vary fastest: consecutive tasks of a thread
        # reuse the same input block from L2
        kb = t % nkb
        u = t // nkb
        bi = u % nblk
        g = u // nblk
        q0 = bi * blk
        ln = min(blk, qn - q0)
        nk = min(kt, kgo - kb * kt)
        base = g * cgi * cstride + q0
        if kt == 8 or kgo >= 4:
            # register tiles: 8 channels x 3 vectors (kt == 8) or 4 x 4; lanes
            # past kgo have zero weights and are not stored
            tw = (3 if kt == 8 else TILE_VECTORS) * 64 // out.itemsize
            ntile, accn = _tiles(ln, tw, plane, img_tiles)
            acc = np.empty((kt, accn), dtype=out.dtype)
            for c0 in range(0, cgi, cblk):
                cn = min(cblk, cgi - c0)
                wkc = wpk[g, kb, c0:c0 + cn]
                for ti in range(ntile):
                    qq = _tile_start(ti, tw, plane, img_tiles)
                    if kt == 8:
                        corr_tile8(inp, base + c0 * cstride + qq, cstride, cn, wkc, offs, acc, qq, c0)
                    else:
                        corr_tile(inp, base + c0 * cstride + qq, cstride, cn, wkc, offs, acc, qq, c0)
        else:
            nv = (ln + 15) // 16
            acc = np.zeros((4, nv * 16), dtype=out.dtype)
            for kk in range(nk):
                _acc1(inp, base, cstride, cgi, wpk[g, kb], kk, offs, nv, acc[kk])
        if bi_n > 0:
            _copy_out_bi(acc, q0, ln, bi_n, pitch // bi_n, out, g * kgo + kb * kt, nk, bias, has_bias)
            continue
        # copy the output pixels among Q in [q0, q0 + ln) into out
        for n in range(q0 // plane, min(n_img, (q0 + ln - 1) // plane + 1)):
            nb0 = n * plane
            oh_lo = max(0, (q0 - nb0) // pitch)
            oh_hi = min(oh_n, (q0 + ln - 1 - nb0) // pitch + 1)
            for oh in range(oh_lo, oh_hi):
                rs = nb0 + oh * pitch
                c0 = max(rs, q0)
                c1 = min(rs + ow_n, q0 + ln)
                if c1 <= c0:
                    continue
                for kk in range(nk):
                    k = g * kgo + kb * kt + kk
                    yr = out[n, k, oh, c0 - rs:c1 - rs]
                    ar = acc[kk, c0 - q0:c1 - q0]
                    if has_bias:
                        b = bias[k]
                        for i in range(c1 - c0):
                            yr[i] = ar[i] + b
                    else:
                        for i in range(c1 - c0):
                            yr[i] = ar[i]
    return out


# --------------------------------------------------------------------------- grad_weight


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
            g0 = gys[g:g + ln]
            g1 = gys[g + gkstride:g + gkstride + ln]
            g2 = gys[g + 2 * gkstride:g + 2 * gkstride + ln]
            g3 = gys[g + 3 * gkstride:g + 3 * gkstride + ln]
            o0 = xq + sg * sstride + offs[j]
            x0 = xs[o0:o0 + ln]
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
        g0 = gys[gq + sg * sstride:gq + sg * sstride + ln]
        xb = xq + sg * sstride
        j = 0
        while j + 3 <= ntap:
            o0 = xb + offs[j]
            o1 = xb + offs[j + 1]
            o2 = xb + offs[j + 2]
            x0 = xs[o0:o0 + ln]
            x1 = xs[o1:o1 + ln]
            x2 = xs[o2:o2 + ln]
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
            x0 = xs[o0:o0 + ln]
            s0 = zero
            for q in range(ln):
                s0 += g0[q] * x0[q]
            pa[j] += s0
            j += 1


@njit(fastmath=FASTMATH, cache=True)
def _dot_segment(gys, gq, gkstride, xs, xq, cstride, offs, ln, nseg, sstride, groups, cg, kg, zero, pa):
    """pa (K, cg, T) += every (k, c, tap) dot product over nseg segments of
    ln Q, sstride apart.

    Output-channel quads outer, input channels inner: the 4 grad_output rows
    of a quad stay in L1 while the input rows stream from L2."""
    for g in range(groups):
        k = g * kg
        ke = k + kg
        while k < ke:
            nk = min(4, ke - k)
            for ci in range(cg):
                xc = xq + (g * cg + ci) * cstride
                if nk == 4:
                    _dot4(gys, gq + k * gkstride, gkstride, xs, xc, offs, ln, nseg, sstride, zero, pa[k:k + 4, ci])
                else:
                    for kk in range(k, k + nk):
                        _dot1(gys, gq + kk * gkstride, xs, xc, offs, ln, nseg, sstride, zero, pa[kk, ci])
            k += nk


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _gw_dot(gys, gbase, gkstride, gnstride, gpitch, xs, cstride, offs, plane, pitch,
            n_img, oh_n, ow_n, groups, flat, seg, span, part, gsum):
    """part (nchunk, K, C/groups, T) float64 <- partial grad_weight sums.

    gw[k, c, tap] = sum over n, oh, ow of
    gys[gbase + k*gkstride + n*gnstride + oh*gpitch + ow] *
    xs[(g*cg + c)*cstride + offs[tap] + n*plane + oh*pitch + ow].
    ``flat``: grad_output is laid out like xs (gnstride == plane, gpitch ==
    pitch) with zeros at garbage Q, and the dot products run over all Q in
    segments of ``seg`` -- or, with ``span`` > 0 (<= plane), over the first
    span Q of each image only (its output rows; the padding rows up to the
    next image are skipped), images grouped into calls of ~seg Q.  Otherwise
    over exact output rows only.  Chunk ch of the Q range (images, rows)
    accumulates into its own part[ch].  gsum (nchunk, K) float64, or (0, 0):
    with exact rows, also the sums of grad_output per channel (grad_bias, taken
    while each row is in cache)."""
    nchunk, kk_n, cg, _ = part.shape
    kg = kk_n // groups
    qn = (n_img - 1) * plane + (oh_n - 1) * pitch + ow_n
    nrow = n_img * oh_n
    for ch in prange(nchunk):
        pa = part[ch]
        pa[:] = 0.0
        zero = np.zeros(1, dtype=gys.dtype)[0]
        if flat and span > 0:
            per = max(1, seg // span)
            for n0 in range(ch * n_img // nchunk, (ch + 1) * n_img // nchunk, per):
                cnt = min(per, (ch + 1) * n_img // nchunk - n0)
                _dot_segment(gys, gbase + n0 * plane, gkstride, xs, n0 * plane, cstride, offs, span, cnt, plane,
                             groups, cg, kg, zero, pa)
        elif flat:
            # chunk bounds on multiples of 16 elements: with 64-byte aligned
            # rows (``_alloc.workspace``) every grad_output load is aligned
            qa = ch * qn // nchunk // 16 * 16
            qb = (ch + 1) * qn // nchunk // 16 * 16 if ch < nchunk - 1 else qn
            for s0 in range(qa, qb, seg):
                ln = min(seg, qb - s0)
                _dot_segment(gys, gbase + s0, gkstride, xs, s0, cstride, offs, ln, 1, 0, groups, cg, kg, zero, pa)
        else:
            sums = gsum.shape[0] > 0
            if sums:
                gsum[ch, :] = 0.0
            for row in range(ch * nrow // nchunk, (ch + 1) * nrow // nchunk):
                n = row // oh_n
                oh = row - n * oh_n
                g0 = gbase + n * gnstride + oh * gpitch
                _dot_segment(gys, g0, gkstride, xs, n * plane + oh * pitch,
                             cstride, offs, ow_n, 1, 0, groups, cg, kg, zero, pa)
                if sums:
                    for k in range(kk_n):
                        gr = gys[g0 + k * gkstride:g0 + k * gkstride + ow_n]
                        tot = 0.0
                        for q in range(ow_n):
                            tot += gr[q]
                        gsum[ch, k] += tot
    return part


# --------------------------------------------------------------------------- grad_input (exact scatter)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _gx_scatter(gy, w, gx, sh, sw, ph, pw, dh, dw):
    """gx (N, C, H, W) <- transposed convolution of gy (N, K, OH, OW) with
    w (K, C/groups, KH, KW), adding only the (output, tap) pairs that exist.

    Parallel over the N*C planes of gx; one iteration owns one plane, so no two
    threads ever add to the same element.  For each (k, tap, output row) one
    contiguous grad_output segment is added into a (strided) grad_x row."""
    n_img, k_n, oh_n, ow_n = gy.shape
    c_n, h, w_ = gx.shape[1], gx.shape[2], gx.shape[3]
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    groups = c_n // cg
    kg = k_n // groups
    for t in prange(n_img * c_n):
        n = t // c_n
        c = t - n * c_n
        g = c // cg
        ci = c - g * cg
        plane = gx[n, c]
        plane[:] = 0
        for k in range(g * kg, (g + 1) * kg):
            for r in range(kh):
                for s in range(kw):
                    wv = w[k, ci, r, s]
                    # output columns whose input column ow*sw - pw + s*dw lies in [0, W)
                    off, lo, hi = tap_cols(s, dw, pw, sw, w_, ow_n)
                    if hi == lo:
                        continue
                    for oh in range(oh_n):
                        ih = oh * sh - ph + r * dh
                        if ih < 0 or ih >= h:
                            continue
                        grow = gy[n, k, oh]
                        xrow = plane[ih]
                        if sw == 1:
                            xs = xrow[lo + off:hi + off]
                            gs = grow[lo:hi]
                            for i in range(hi - lo):
                                xs[i] += wv * gs[i]
                        else:
                            for ow in range(lo, hi):
                                xrow[ow * sw + off] += wv * grow[ow]
    return gx


# --------------------------------------------------------------------------- entry points


def _pack4(w4: np.ndarray, kt: int = 4) -> np.ndarray:
    """(G, Kout_g, Cin_g, T) -> (G, ceil(Kout_g/kt), Cin_g, T, kt), output channels
    innermost in blocks of kt (zero-filled past Kout_g; those lanes are never stored)."""
    g, kog, cig, t = w4.shape
    nkb = -(-kog // kt)
    wp = np.zeros((g, nkb * kt, cig, t), dtype=w4.dtype)
    wp[:, :kog] = w4
    return np.ascontiguousarray(wp.reshape(g, nkb, kt, cig, t).transpose(0, 1, 3, 4, 2))


class _Prep:
    """A prepared (channel-major, padded, polyphase) buffer and its geometry."""

    def __init__(self, src, top, left, bottom, right, sh=1, sw=1, rows_min=0, pitch_min=0, compact=False,
                 lead=0, sums=False):
        n, c, h, w = src.shape
        hq, wq = phase_geometry(h, w, top, left, bottom, right, sh, sw)
        reach = 0
        if compact and sh == 1 and sw == 1:
            # consecutive rows (images) share their zero columns (rows): the
            # right padding of a row is the left padding of the next one, so
            # a gap of max(left, right) zeros suffices (less garbage Q); the
            # last image's taps then reach past its plane, by ``reach``
            hp, wp = hq, wq
            hq, wq = h + max(top, bottom), w + max(left, right)
            reach = (hp - 1) * max(wq, pitch_min) + wp
        self.pitch = max(wq, pitch_min)
        self.rows = max(hq, rows_min)
        self.plane = self.rows * self.pitch
        self.phase_stride = n * self.plane
        # channel stride: a whole number of cache lines, and an odd one, so the
        # cgi channels a register tile walks through do not all map to the same
        # few L1 sets (a power-of-two stride would, and thrash L1)
        line = 64 // src.dtype.itemsize
        reach = max(0, reach - self.plane)
        lines = -(-(sh * sw * self.phase_stride + reach) // line)
        self.cstride = (lines + 1 - lines % 2) * line
        # tail: reads of rounded-up blocks past the last plane stay inside (zeros)
        # fully written by embed (zeros included), so poisoning may cover it
        # ``lead`` zeros before channel 0 (for reads at negative tap offsets)
        self.lead = lead
        self.buf = _alloc.workspace(lead + c * self.cstride + self.plane + reach + 64, src.dtype)
        self.buf[:lead] = 0
        # sums: per-(channel, phase, image) sums of src, float64 (see ``embed``)
        self.sums = np.empty(c * sh * sw * n if sums else 0, dtype=np.float64)
        embed(src, self.buf[lead:], top, left, sh, sw, hq, self.pitch, self.rows, self.cstride, self.sums)


def _block(qn: int, tasks_per_block: int) -> int:
    """Q per ``_corr`` task: _BLOCK, smaller if that leaves threads idle."""
    blk = _BLOCK
    want = 4 * numba.get_num_threads()
    while blk > 64 and tasks_per_block * -(-qn // blk) < want:
        blk //= 2
    return blk


def _correlate(inp: _Prep, offs, w4: np.ndarray, bias: np.ndarray, out: np.ndarray) -> np.ndarray:
    n, _, oh, ow = out.shape
    kt = 8 if w4.shape[1] >= 8 else 4  # output channels per register tile
    wpk = _pack4(w4, kt)
    qn = (n - 1) * inp.plane + (oh - 1) * inp.pitch + ow
    blk = _block(qn, wpk.shape[0] * wpk.shape[1])
    img_tiles = 0
    tw = (3 if kt == 8 else TILE_VECTORS) * 64 // out.itemsize
    span = (oh - 1) * inp.pitch + ow  # an image's Q from its first output pixel to its last
    if _IMG_TILES and w4.shape[1] >= 4 and n > 1 and inp.plane <= blk:
        # tiles per image (skipping the padding rows between images) when
        # that makes fewer tiles than covering the images' Q contiguously
        per_img = -(-span // tw)
        nimg = blk // inp.plane
        if nimg * per_img < -(-(nimg * inp.plane) // tw):
            img_tiles, blk = per_img, nimg * inp.plane
    return _corr(inp.buf, inp.cstride, offs, inp.plane, inp.pitch, wpk, bias, out, blk, _CBLK, img_tiles, 0)


def conv2d_forward_direct(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                          p: Conv2dParams, saved: dict | None = None) -> np.ndarray:
    """y (N, K, OH, OW) = conv2d(x (N, C, H, W), weight (K, C/groups, KH, KW)) + bias.
    ``saved``: a dict that keeps the prepared x for the backward of the same x
    object (see ``fastconv._conv2d``), or None."""
    if saved is not None:
        saved.clear()
        saved["x"], saved["p"] = x, p
    if use_batch_inner(p):
        return conv2d_forward_bi(x, weight, bias, p, saved)
    xp = _Prep(x, p.ph, p.pw, p.ph_end, p.pw_end, p.sh, p.sw, rows_min=p.oh, pitch_min=p.ow,
               compact=True)
    if saved is not None and p.sh == 1 and p.sw == 1 and xp.rows == p.h + p.ph + p.ph_end \
            and xp.pitch == p.w + p.pw + p.pw_end:
        # the compact layout is the backward's plain padded one here
        # (no row or column to share): the backward can reuse it
        saved["direct"] = xp
    offs = tap_offsets(p.kh, p.kw, p.sh, p.sw, p.dh, p.dw, xp.pitch, xp.phase_stride)
    y = _alloc.empty(p.y_shape, x.dtype)
    b = empty_bias(x.dtype) if bias is None else bias
    return _correlate(xp, offs, weight.reshape(p.groups, p.kg, p.cg, p.kh * p.kw), b, y)


def _grad_weight(gys, gbase, gkstride, gnstride, gpitch, xp: _Prep, offs, p: Conv2dParams, flat: bool):
    qn = (p.n - 1) * xp.plane + (p.oh - 1) * xp.pitch + p.ow
    # per-image segments (skip the padding rows between images) when they
    # cover fewer Q and several images fit one segment of _SEG (whose 4
    # grad_output rows stay in L1); a multiple of 16, so no scalar tails.
    # Measured: (32,256,14,14)->256 pad 1 grad_weight 50.6 -> 42.0 ms;
    # (64,32,13,13)->64 unchanged; (8,64,56,56) (one 3248-Q image per
    # segment) was 1.2x slower, hence the _SEG bound.
    span = -(-((p.oh - 1) * xp.pitch + p.ow) // 16) * 16
    if not (_IMG_SEGMENTS and flat and p.n > 1 and span <= xp.plane - 16 and 2 * span <= _SEG):
        span = 0
    work = (p.n if span else qn) if flat else p.n * p.oh
    nchunk = max(1, min(work, numba.get_num_threads()))
    part = _alloc.empty((nchunk, p.k, p.cg, p.kh * p.kw), np.float64)  # _gw_dot zeroes each chunk
    _gw_dot(gys, gbase, gkstride, gnstride, gpitch, xp.buf, xp.cstride, offs, xp.plane, xp.pitch,
            p.n, p.oh, p.ow, p.groups, flat, _SEG, span, part, _NO_SUMS)
    return part.sum(axis=0) if nchunk > 1 else part[0]


def conv2d_backward_direct(gy: np.ndarray, x: np.ndarray, weight: np.ndarray, p: Conv2dParams,
                           need_input_grad: bool = True, saved: dict | None = None
                           ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gx, gw, gb) of conv2d for gy (N, K, OH, OW); shapes of x, weight and (K,).
    gx is None (not computed) when ``need_input_grad`` is false.  ``saved``:
    the forward's dict (its prepared x is reused when it was kept for this x
    object and these convolution settings)."""
    # the kept buffer only for the very x object and the same geometry
    reuse = saved.get if saved is not None and saved.get("x") is x and saved.get("p") == p else {}.get
    if use_batch_inner(p):
        grads = conv2d_backward_bi(gy, x, weight, p, need_input_grad, reuse("bi"))
        if grads is not None:
            return grads
    dtype = x.dtype
    gw = _alloc.empty(p.weight_shape, dtype)
    # grad_weight: grad_output in the layout of one phase of the prepared
    # input, zeros at its garbage Q, so the dot products run over all Q
    xp = reuse("direct")
    if xp is None:
        xp = _Prep(x, p.ph, p.pw, p.ph_end, p.pw_end, p.sh, p.sw)
    # grad_x (stride 1, finite weights) reads the same buffer at negative tap
    # offsets, down to -lead (see below)
    fast_gx = need_input_grad and p.sh == 1 and p.sw == 1 and bool(np.isfinite(weight).all())
    lead = max(0, ((p.kh - 1) * p.dh - p.ph) * xp.pitch + (p.kw - 1) * p.dw - p.pw) if fast_gx else 0
    lead = -(-lead // 16) * 16  # keeps grad_output's rows on 64-byte boundaries (aligned loads)
    gyf = _Prep(gy, 0, 0, xp.rows - p.oh, xp.pitch - p.ow, rows_min=xp.rows, pitch_min=xp.pitch, lead=lead,
                sums=True)
    gb = gyf.sums.reshape(p.k, p.n).sum(axis=1).astype(dtype)  # grad_bias from the copy's sums
    offs = tap_offsets(p.kh, p.kw, p.sh, p.sw, p.dh, p.dw, xp.pitch, xp.phase_stride)
    gw64 = _grad_weight(gyf.buf, lead, gyf.cstride, xp.plane, xp.pitch, xp, offs, p, True)
    if np.isnan(gw64).any():  # maybe 0 * inf at a garbage Q: redo over exact rows
        gw64 = _grad_weight(gy.reshape(-1), 0, p.oh * p.ow, p.k * p.oh * p.ow, p.ow, xp, offs, p, False)
    gw[...] = gw64.reshape(p.weight_shape)
    if not need_input_grad:
        return None, gw, gb
    gx = _alloc.empty(p.x_shape, dtype)
    if fast_gx:
        # grad_x = correlation of grad_output with the mirrored taps of the
        # weights read as (C, K): gx[h, w] = sum over taps of
        # gy[h + ph - r*dh, w + pw - s*dw] * w[r, s], gy (zero outside its
        # OH x OW) being stored at lead + i*pitch + j of each padded plane.
        # Q = n*plane + h*pitch + w runs over gx's pixels (all of them output
        # pixels for padding 0); a read before a plane's row or image lands in
        # the zero columns/rows after the previous one: pitch - OW =
        # (KW-1)*dw, rows - OH = (KH-1)*dh for stride 1, exactly the reach of
        # the taps; before image 0 of channel 0 in the ``lead`` zeros.
        r = np.arange(p.kh).repeat(p.kw)
        s = np.tile(np.arange(p.kw), p.kh)
        offs_gx = (lead + (p.ph - r * p.dh) * xp.pitch + (p.pw - s * p.dw)).astype(np.int64)
        w4 = weight.reshape(p.groups, p.kg, p.cg, p.kh * p.kw).transpose(0, 2, 1, 3)
        _correlate(gyf, offs_gx, w4, empty_bias(dtype), gx)  # gyf.plane, .pitch are xp's
    else:
        _gx_scatter(gy, weight, gx, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw)
    return gx, gw, gb
