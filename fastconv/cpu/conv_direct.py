"""Direct 2-D convolution on the CPU (no column buffer): forward and backward.

Prepared input.  ``embed`` copies x once into zero-padded, and for stride > 1
polyphase, planes (see ``_conv_common``), so that every kernel tap (r, s) is
a constant shift ``offs[r*KW + s]`` of one flattened index ``q = oh*pitch + ow``.
Stride, padding ("same" included, asymmetric) and dilation are then only
numbers in ``offs``; the loops have no bounds tests.  The copy costs one pass
over x (workspace = one padded copy of x, not KH*KW copies like a column
buffer); with stride 1 and no padding x is used in place.

Forward (``_corr``), Zhang/Franchetti/Low style.  Parallel over tasks
(image, group, block of 4 output channels, block of output rows), so a batch of
one still spreads over every core.  A task owns a 4 x L accumulator (L = rows
in the block * pitch, ~16 KiB: it stays in L1) and, for each input channel,
streams over it once per group of 3 taps: the innermost loop runs over the
contiguous flattened output index and LLVM vectorises it; per vector it loads 3
shifted input vectors and does 12 FMAs into the 4 output rows (register
blocking over output channels and taps, 12 weights hoisted into registers).
Output columns ow >= OW of the flattened rows ("garbage" columns, the pitch
minus the width) are computed and dropped when the block is copied out (bias
added there).  Output channels beyond a multiple of 4 (e.g. depthwise, 1 per
group) take a 1-channel path, so no work is wasted on padding channels.

Backward.  grad_bias: ``bias_grad``.  grad_weight (``_gw_dot``): for each
(output channel, input channel) pair a dot product over q of grad_output with
the shifted prepared input, register-blocked 4 output channels x 3 taps (12
vector accumulators, 7 loads per 12 FMAs).  Parallel over chunks of
(image, row block), one private float64 partial grad_weight per chunk, summed
afterwards: race-free and deterministic for a fixed thread count.
grad_input, stride 1: a transposed convolution is a correlation of grad_output,
zero-embedded with margins, with the same weights read as (C, K) and the taps
mirrored, which is ``_corr`` again with other offsets.  Stride > 1 (and the
exact fallback, below): ``_gx_scatter``, parallel over grad_x planes, each
plane owned by one iteration (race-free), adding w * grad_output row segments.

Exactness with NaN/Inf.  The fast grad paths multiply things PyTorch never
multiplies: zero margins of grad_output by the weights (grad_x), and zero
garbage columns of grad_output by input values (grad_weight).  These products
are exact zeros when the other factor is finite, so grad_x's fast path runs
only when the weights are all finite, and a grad_weight containing a NaN is
recomputed by the same kernel over exact rows only.  The forward multiplies
the zero padding like PyTorch and the reference do, and drops garbage columns.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .. import _alloc
from .._params import Conv2dParams
from ._conv_common import FASTMATH, bias_grad, embed, empty_bias, phase_geometry, tap_offsets

__all__ = ["conv2d_forward_direct", "conv2d_backward_direct"]

# Target accumulator block of ``_corr`` (elements per output channel): 4 rows of
# 1024 float32 = 16 KiB, L1-resident.  ``_gw_dot`` uses segments of the same size.
_BLOCK_ELEMS = 1024


# --------------------------------------------------------------------------- forward core


@njit(fastmath=FASTMATH, cache=True)
def _acc4(xg, wk, offs, q0, acc):
    """acc (4, L) += correlation of the input planes xg (cgi, Lin) with weights
    wk (cgi, T, 4) over the taps at offsets offs (T,), output index q0 + [0, L)."""
    ln = acc.shape[1]
    ntap = offs.shape[0]
    a0 = acc[0]
    a1 = acc[1]
    a2 = acc[2]
    a3 = acc[3]
    for c in range(xg.shape[0]):
        xc = xg[c]
        wc = wk[c]
        j = 0
        while j + 3 <= ntap:
            o0 = offs[j] + q0
            o1 = offs[j + 1] + q0
            o2 = offs[j + 2] + q0
            x0 = xc[o0:o0 + ln]
            x1 = xc[o1:o1 + ln]
            x2 = xc[o2:o2 + ln]
            u0, u1, u2 = wc[j, 0], wc[j + 1, 0], wc[j + 2, 0]
            v0, v1, v2 = wc[j, 1], wc[j + 1, 1], wc[j + 2, 1]
            s0, s1, s2 = wc[j, 2], wc[j + 1, 2], wc[j + 2, 2]
            t0, t1, t2 = wc[j, 3], wc[j + 1, 3], wc[j + 2, 3]
            for q in range(ln):
                e0 = x0[q]
                e1 = x1[q]
                e2 = x2[q]
                a0[q] += u0 * e0 + u1 * e1 + u2 * e2
                a1[q] += v0 * e0 + v1 * e1 + v2 * e2
                a2[q] += s0 * e0 + s1 * e1 + s2 * e2
                a3[q] += t0 * e0 + t1 * e1 + t2 * e2
            j += 3
        while j < ntap:
            o0 = offs[j] + q0
            x0 = xc[o0:o0 + ln]
            u0, v0, s0, t0 = wc[j, 0], wc[j, 1], wc[j, 2], wc[j, 3]
            for q in range(ln):
                e0 = x0[q]
                a0[q] += u0 * e0
                a1[q] += v0 * e0
                a2[q] += s0 * e0
                a3[q] += t0 * e0
            j += 1


@njit(fastmath=FASTMATH, cache=True)
def _acc1(xg, wk, kk, offs, q0, a0):
    """a0 (L,) += correlation for the one output channel kk of wk (cgi, T, 4)."""
    ln = a0.shape[0]
    ntap = offs.shape[0]
    for c in range(xg.shape[0]):
        xc = xg[c]
        wc = wk[c]
        j = 0
        while j + 3 <= ntap:
            o0 = offs[j] + q0
            o1 = offs[j + 1] + q0
            o2 = offs[j + 2] + q0
            x0 = xc[o0:o0 + ln]
            x1 = xc[o1:o1 + ln]
            x2 = xc[o2:o2 + ln]
            u0, u1, u2 = wc[j, kk], wc[j + 1, kk], wc[j + 2, kk]
            for q in range(ln):
                a0[q] += u0 * x0[q] + u1 * x1[q] + u2 * x2[q]
            j += 3
        while j < ntap:
            o0 = offs[j] + q0
            x0 = xc[o0:o0 + ln]
            u0 = wc[j, kk]
            for q in range(ln):
                a0[q] += u0 * x0[q]
            j += 1


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _corr(inp, wpk, offs, bias, out, pitch, rb):
    """out (N, Kout, OH, OW) = bias + sum over the cgi input channels of each
    group and the taps of wpk[g, k//4, c, tap, k%4] * inp[n, g*cgi + c, offs[tap] + q]
    with q = oh*pitch + ow.  inp (N, Cin, Lin); bias (Kout,) or (0,) for none;
    rb output rows per task."""
    n_img = inp.shape[0]
    groups, nkb, cgi, _, _ = wpk.shape
    kout, oh_n, ow_n = out.shape[1], out.shape[2], out.shape[3]
    kgo = kout // groups
    nrb = (oh_n + rb - 1) // rb
    has_bias = bias.shape[0] > 0
    for t in prange(n_img * groups * nkb * nrb):
        rbi = t % nrb
        u = t // nrb
        kb = u % nkb
        u = u // nkb
        g = u % groups
        n = u // groups
        r0 = rbi * rb
        r1 = min(oh_n, r0 + rb)
        q0 = r0 * pitch
        ln = (r1 - 1 - r0) * pitch + ow_n
        nk = min(4, kgo - kb * 4)
        acc = np.zeros((4, ln), dtype=out.dtype)
        xg = inp[n, g * cgi:(g + 1) * cgi]
        if nk == 4:
            _acc4(xg, wpk[g, kb], offs, q0, acc)
        else:
            for kk in range(nk):
                _acc1(xg, wpk[g, kb], kk, offs, q0, acc[kk])
        for kk in range(nk):
            k = g * kgo + kb * 4 + kk
            for oh in range(r0, r1):
                yr = out[n, k, oh]
                ar = acc[kk, (oh - r0) * pitch:(oh - r0) * pitch + ow_n]
                if has_bias:
                    b = bias[k]
                    for ow in range(ow_n):
                        yr[ow] = ar[ow] + b
                else:
                    for ow in range(ow_n):
                        yr[ow] = ar[ow]
    return out


# --------------------------------------------------------------------------- grad_weight


@njit(fastmath=FASTMATH, cache=True)
def _dot4(g4, gq, xc, xq, offs, ln, zero, pa):
    """pa (4, T) += dot products over q in [0, ln) of grad_output rows
    g4[:, gq + q] with the input xc[xq + offs[tap] + q]."""
    ntap = offs.shape[0]
    g0 = g4[0, gq:gq + ln]
    g1 = g4[1, gq:gq + ln]
    g2 = g4[2, gq:gq + ln]
    g3 = g4[3, gq:gq + ln]
    j = 0
    while j + 3 <= ntap:
        o0 = xq + offs[j]
        o1 = xq + offs[j + 1]
        o2 = xq + offs[j + 2]
        x0 = xc[o0:o0 + ln]
        x1 = xc[o1:o1 + ln]
        x2 = xc[o2:o2 + ln]
        s00 = s01 = s02 = s10 = s11 = s12 = zero
        s20 = s21 = s22 = s30 = s31 = s32 = zero
        for q in range(ln):
            e0 = x0[q]
            e1 = x1[q]
            e2 = x2[q]
            f = g0[q]
            s00 += f * e0
            s01 += f * e1
            s02 += f * e2
            f = g1[q]
            s10 += f * e0
            s11 += f * e1
            s12 += f * e2
            f = g2[q]
            s20 += f * e0
            s21 += f * e1
            s22 += f * e2
            f = g3[q]
            s30 += f * e0
            s31 += f * e1
            s32 += f * e2
        pa[0, j] += s00
        pa[0, j + 1] += s01
        pa[0, j + 2] += s02
        pa[1, j] += s10
        pa[1, j + 1] += s11
        pa[1, j + 2] += s12
        pa[2, j] += s20
        pa[2, j + 1] += s21
        pa[2, j + 2] += s22
        pa[3, j] += s30
        pa[3, j + 1] += s31
        pa[3, j + 2] += s32
        j += 3
    while j < ntap:
        o0 = xq + offs[j]
        x0 = xc[o0:o0 + ln]
        s00 = s10 = s20 = s30 = zero
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
def _dot1(g1r, gq, xc, xq, offs, ln, zero, pa):
    """pa (T,) += dot products for one grad_output row (see ``_dot4``)."""
    ntap = offs.shape[0]
    g0 = g1r[gq:gq + ln]
    j = 0
    while j + 3 <= ntap:
        o0 = xq + offs[j]
        o1 = xq + offs[j + 1]
        o2 = xq + offs[j + 2]
        x0 = xc[o0:o0 + ln]
        x1 = xc[o1:o1 + ln]
        x2 = xc[o2:o2 + ln]
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
        o0 = xq + offs[j]
        x0 = xc[o0:o0 + ln]
        s0 = zero
        for q in range(ln):
            s0 += g0[q] * x0[q]
        pa[j] += s0
        j += 1


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _gw_dot(gys, gbase, gpitch, xs, offs, xpitch, oh_n, ow_n, flat, groups, rb, part):
    """part (nchunk, K, C/groups, T) float64 <- partial grad_weight sums.

    gw[k, c, tap] = sum over n, oh, ow of gys[n, k, gbase + oh*gpitch + ow]
    * xs[n, g*cg + c, offs[tap] + oh*xpitch + ow].  ``flat``: one segment per
    block of rb output rows, including the garbage columns between rows (needs
    gpitch == xpitch and zeros in grad_output's garbage columns); otherwise one
    exact segment of OW per output row.  Chunk ch of the (image, row block)
    items accumulates into its own part[ch]."""
    n_img = xs.shape[0]
    kk_n = gys.shape[1]
    cg = xs.shape[1] // groups
    kg = kk_n // groups
    nchunk = part.shape[0]
    nrb = (oh_n + rb - 1) // rb
    nitem = n_img * nrb
    for ch in prange(nchunk):
        pa = part[ch]
        pa[:] = 0.0
        zero = np.zeros(1, dtype=gys.dtype)[0]
        i0 = ch * nitem // nchunk
        i1 = (ch + 1) * nitem // nchunk
        for it in range(i0, i1):
            n = it // nrb
            r0 = (it - n * nrb) * rb
            r1 = min(oh_n, r0 + rb)
            nseg = 1 if flat else r1 - r0
            for sgi in range(nseg):
                if flat:
                    xq = r0 * xpitch
                    gq = gbase + r0 * gpitch
                    ln = (r1 - 1 - r0) * xpitch + ow_n
                else:
                    xq = (r0 + sgi) * xpitch
                    gq = gbase + (r0 + sgi) * gpitch
                    ln = ow_n
                for g in range(groups):
                    for ci in range(cg):
                        xc = xs[n, g * cg + ci]
                        kq = g * kg
                        ke = (g + 1) * kg
                        while kq + 4 <= ke:
                            _dot4(gys[n, kq:kq + 4], gq, xc, xq, offs, ln, zero, pa[kq:kq + 4, ci])
                            kq += 4
                        while kq < ke:
                            _dot1(gys[n, kq], gq, xc, xq, offs, ln, zero, pa[kq, ci])
                            kq += 1
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
                    off = s * dw - pw
                    lo = 0
                    if off < 0:
                        lo = (-off + sw - 1) // sw
                    hi = 0
                    if w_ - off > 0:
                        hi = min(ow_n, (w_ - off + sw - 1) // sw)
                    if hi <= lo:
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


def _pack4(w4: np.ndarray) -> np.ndarray:
    """(G, Kout_g, Cin_g, T) -> (G, ceil(Kout_g/4), Cin_g, T, 4), output channels
    innermost in blocks of 4 (zero-filled past Kout_g; those lanes are never stored)."""
    g, kog, cig, t = w4.shape
    nkb = -(-kog // 4)
    wp = np.zeros((g, nkb * 4, cig, t), dtype=w4.dtype)
    wp[:, :kog] = w4
    return np.ascontiguousarray(wp.reshape(g, nkb, 4, cig, t).transpose(0, 1, 3, 4, 2))


def _rows_per_block(oh: int, pitch: int, tasks_per_row_block: int) -> int:
    """Output rows per task: about _BLOCK_ELEMS accumulator elements, but small
    enough to give every thread a few tasks (batch 1, few channels)."""
    rb = max(1, min(oh, _BLOCK_ELEMS // max(pitch, 1)))
    want = 4 * numba.get_num_threads()
    while rb > 1 and tasks_per_row_block * (-(-oh // rb)) < want:
        rb = -(-rb // 2)
    return rb


def _prepare_x(x: np.ndarray, p: Conv2dParams, pitch_min: int = 0):
    """(xf, hq, wq): x zero-padded (and polyphase for stride > 1), flattened per plane."""
    hq, wq = phase_geometry(p.h, p.w, p.ph, p.pw, p.ph_end, p.pw_end, p.sh, p.sw)
    wq = max(wq, pitch_min)
    if p.sh == 1 and p.sw == 1 and p.ph == p.pw == p.ph_end == p.pw_end == 0 and wq == p.w:
        return x.reshape(p.n, p.c, p.h * p.w), hq, wq
    xf = np.empty((p.n, p.c, p.sh * p.sw * hq * wq), dtype=x.dtype)
    embed(x, xf, p.ph, p.pw, p.sh, p.sw, hq, wq)
    return xf, hq, wq


def conv2d_forward_direct(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                          p: Conv2dParams) -> np.ndarray:
    """y (N, K, OH, OW) = conv2d(x (N, C, H, W), weight (K, C/groups, KH, KW)) + bias."""
    xf, hq, wq = _prepare_x(x, p)
    offs = tap_offsets(p.kh, p.kw, p.sh, p.sw, p.dh, p.dw, hq, wq)
    g = p.groups
    wpk = _pack4(weight.reshape(g, p.kg, p.cg, p.kh * p.kw))
    y = _alloc.empty(p.y_shape, x.dtype)
    b = empty_bias(x.dtype) if bias is None else bias
    rb = _rows_per_block(p.oh, wq, p.n * g * wpk.shape[1])
    _corr(xf, wpk, offs, b, y, wq, rb)
    return y


def _grad_weight(gys, gbase, gpitch, xf, offs, xpitch, p: Conv2dParams, flat: bool) -> np.ndarray:
    rb = max(1, min(p.oh, _BLOCK_ELEMS // max(xpitch if flat else p.ow, 1)))
    nitem = p.n * (-(-p.oh // rb))
    nchunk = max(1, min(nitem, numba.get_num_threads()))
    part = np.empty((nchunk, p.k, p.cg, p.kh * p.kw), dtype=np.float64)
    _gw_dot(gys, gbase, gpitch, xf, offs, xpitch, p.oh, p.ow, flat, p.groups, rb, part)
    return part.sum(axis=0) if nchunk > 1 else part[0]


def conv2d_backward_direct(gy: np.ndarray, x: np.ndarray, weight: np.ndarray,
                           p: Conv2dParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gx, gw, gb) of conv2d for gy (N, K, OH, OW); shapes of x, weight and (K,)."""
    dtype = x.dtype
    gb = bias_grad(gy, _alloc.empty((p.k,), dtype))
    gw = _alloc.empty(p.weight_shape, dtype)
    gx = _alloc.empty(p.x_shape, dtype)
    gy3 = gy.reshape(p.n, p.k, p.oh * p.ow)
    taps = p.kh * p.kw
    if p.sh == 1 and p.sw == 1:
        eff_h, eff_w = p.dh * (p.kh - 1) + 1, p.dw * (p.kw - 1) + 1
        mt, ml = max(0, eff_h - 1 - p.ph), max(0, eff_w - 1 - p.pw)
        # one pitch for grad_output (with margins for grad_x) and the padded input
        pitch = max(p.w + p.pw + p.pw_end, p.w + p.pw + ml, ml + p.ow)
        rows_g = mt + max(p.h + p.ph, p.oh)
        gye = np.empty((p.n, p.k, rows_g * pitch), dtype=dtype)
        embed(gy, gye, mt, ml, 1, 1, rows_g, pitch)
        xf, hq, wq = _prepare_x(x, p, pitch)
        offs = tap_offsets(p.kh, p.kw, 1, 1, p.dh, p.dw, hq, wq)
        gw64 = _grad_weight(gye, mt * pitch + ml, pitch, xf, offs, pitch, p, True)
        if np.isnan(gw64).any():  # maybe 0 * inf from a garbage column: redo exactly
            gw64 = _grad_weight(gy3, 0, p.ow, xf, offs, pitch, p, False)
        if np.isfinite(weight).all():
            r = np.arange(p.kh).repeat(p.kw)
            s = np.tile(np.arange(p.kw), p.kh)
            offs_gx = (p.ph + mt - r * p.dh) * pitch + (p.pw + ml - s * p.dw)
            w4 = weight.reshape(p.groups, p.kg, p.cg, taps).transpose(0, 2, 1, 3)
            wpk = _pack4(w4)
            rb = _rows_per_block(p.h, pitch, p.n * p.groups * wpk.shape[1])
            _corr(gye, wpk, offs_gx.astype(np.int64), empty_bias(dtype), gx, pitch, rb)
        else:
            _gx_scatter(gy, weight, gx, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw)
    else:
        xf, hq, wq = _prepare_x(x, p)
        offs = tap_offsets(p.kh, p.kw, p.sh, p.sw, p.dh, p.dw, hq, wq)
        gw64 = _grad_weight(gy3, 0, p.ow, xf, offs, wq, p, False)
        _gx_scatter(gy, weight, gx, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw)
    gw[...] = gw64.reshape(p.weight_shape)
    return gx, gw, gb
