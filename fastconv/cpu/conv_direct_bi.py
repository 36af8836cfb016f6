"""Direct convolution in the batch-inner layout: small planes, stride 1.

The direct kernels (``conv_direct._corr``, ``_gw_dot``) run over one flat
index Q of a prepared buffer in which every kernel tap is a constant shift.
In the standard layout Q = n*plane + oh*pitch + ow walks image by image, and
the padding rows and columns of every image are computed and dropped: for a
5x5 input and a 3x3 kernel, 9 output pixels per 25 Q.  Here channel c of the
prepared buffer is a (Hp, Wp, N) block -- the padded plane with the batch
innermost -- so Q = (oh*Wp + ow)*N + n and tap (r, s) is the shift
(r*dh*Wp + s*dw)*N.  Only the Wp - OW padding columns of each output row are
garbage (no per-image rows), e.g. 13 Q per 9 outputs for 5x5 -> 3x3, 141 per
121 for 13x13 -> 11x11.  The vector lanes run over the batch.  The same
register tiles do the arithmetic; the price is the transposing copies in
(``embed_bi``: x, grad_output) and out (``conv_direct._corr`` writes y and
grad_x back in NCHW from its accumulators), which are small in exactly the
cases this layout is chosen for (``use_batch_inner``).

grad_x reads grad_output's buffer at negative tap offsets, as the standard
layout's stride-1 path does (see ``conv_direct``): a read before an output
row lands in the zero columns after the previous row (Wp - OW = (KW-1)*dw),
before a channel's first row in the zero rows after the previous channel's
last (Hp - OH = (KH-1)*dh) or, for channel 0, in ``lead`` zeros.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .. import _alloc
from .._params import Conv2dParams
from ._conv_common import FASTMATH, bias_grad, empty_bias, tap_cols

__all__ = ["use_batch_inner", "conv2d_forward_bi", "conv2d_backward_bi"]

# Elements the register tiles may read past a buffer's last Q.
_OVERRUN = 64
# Input channels per pass of the register tiles (``_corr``'s cblk).  Taps are
# whole pixels (N elements) apart here, so a tile's loads for different taps
# do not share cache lines as in the standard layout: 8 channels x 9 taps x
# 3 vectors stay in L1 (measured on (64,32,13,13)->64: 1.22 ms vs 1.41 ms
# with the standard layout's 32).
_CBLK_BI = 8


def use_batch_inner(p: Conv2dParams) -> bool:
    """Stride 1, a batch of >= 8 and at most 3/4 of the standard layout's
    (H + max pad) x (W + max pad) Q per image.  Measured (2 threads, float32):
    (64,64,5,5)->64 3x3 (13 vs 25 Q) forward 0.44 vs 0.72 ms, backward 1.48 vs
    2.00 ms; (64,32,13,13)->64 (141 vs 169 Q) is 1.06x-1.12x *slower* in this
    layout (the transposing copies cost more than the saved Q)."""
    if p.sh != 1 or p.sw != 1 or p.n < 8:
        return False
    wp = p.w + p.pw + p.pw_end
    std = (p.h + max(p.ph, p.ph_end)) * (p.w + max(p.pw, p.pw_end))
    bi = (p.oh - 1) * wp + p.ow
    return bi <= 0.75 * std


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


class _PrepBI:
    """``src`` (N, C, H, W) embedded in the batch-inner layout of a (hp, wp) plane."""

    def __init__(self, src, top, left, hp, wp, lead=0):
        n, c = src.shape[0], src.shape[1]
        self.pitch = wp * n
        self.plane = hp * self.pitch
        line = 64 // src.dtype.itemsize
        lines = -(-self.plane // line)
        self.cstride = (lines + 1 - lines % 2) * line  # odd number of lines: see conv_direct._Prep
        self.lead = lead
        self.buf = _alloc.empty((lead + c * self.cstride + _OVERRUN,), src.dtype)
        embed_bi(src, self.buf, lead, top, left, hp, wp, self.cstride)


def _corr_bi(inp: _PrepBI, offs, w4, bias, out):
    """out (N, Kout, OH, OW) = register-tile correlation of a batch-inner buffer
    (``_corr`` in its batch-inner mode writes NCHW directly)."""
    from .conv_direct import _block, _corr, _pack4

    kt = 8 if w4.shape[1] >= 8 else 4
    wpk = _pack4(w4, kt)
    n, _, oh, ow = out.shape
    qn = (oh - 1) * inp.pitch + ow * n
    blk = _block(qn, wpk.shape[0] * wpk.shape[1])
    return _corr(inp.buf, inp.cstride, offs, inp.plane, inp.pitch, wpk, bias, out, blk, _CBLK_BI, 0, n)


def _geometry(p: Conv2dParams) -> tuple[int, int]:
    return p.h + p.ph + p.ph_end, p.w + p.pw + p.pw_end


def conv2d_forward_bi(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                      p: Conv2dParams, saved: dict | None = None) -> np.ndarray:
    """y (N, K, OH, OW) = conv2d(x, weight) + bias, stride 1, batch-inner layout;
    the prepared x goes into ``saved["bi"]`` when a dict is given."""
    hp, wp = _geometry(p)
    xb = _PrepBI(x, p.ph, p.pw, hp, wp)
    if saved is not None:
        saved["bi"] = xb
    r = np.arange(p.kh).repeat(p.kw)
    s = np.tile(np.arange(p.kw), p.kh)
    offs = ((r * p.dh * wp + s * p.dw) * p.n).astype(np.int64)
    b = empty_bias(x.dtype) if bias is None else bias
    return _corr_bi(xb, offs, weight.reshape(p.groups, p.kg, p.cg, p.kh * p.kw), b, _alloc.empty(p.y_shape, x.dtype))


def conv2d_backward_bi(gy: np.ndarray, x: np.ndarray, weight: np.ndarray, p: Conv2dParams,
                       need_input_grad: bool = True, xb: "_PrepBI | None" = None):
    """(gx or None, gw, gb) as ``conv_direct.conv2d_backward_direct``, stride 1,
    batch-inner layout; None when grad_weight came out NaN (a 0 * inf at a
    garbage Q may cause that): the caller then redoes it exactly.  ``xb``: the
    forward's prepared x of this very x, if kept."""
    from .conv_direct import _NO_SUMS, _SEG, _gw_dot

    dtype = x.dtype
    hp, wp = _geometry(p)
    n = p.n
    if xb is None:
        xb = _PrepBI(x, p.ph, p.pw, hp, wp)
    # grad_x (finite weights only: it multiplies zeros by weights) reads the
    # grad_output buffer down to -lead
    fast_gx = need_input_grad and bool(np.isfinite(weight).all())
    lead = max(0, ((p.kh - 1) * p.dh - p.ph) * wp + (p.kw - 1) * p.dw - p.pw) * n if fast_gx else 0
    gyb = _PrepBI(gy, 0, 0, hp, wp, lead)
    r = np.arange(p.kh).repeat(p.kw)
    s = np.tile(np.arange(p.kw), p.kh)
    offs = ((r * p.dh * wp + s * p.dw) * n).astype(np.int64)
    qn = (p.oh - 1) * xb.pitch + p.ow * n
    part = _alloc.empty((max(1, min(qn, numba.get_num_threads())), p.k, p.cg, p.kh * p.kw), np.float64)
    _gw_dot(gyb.buf, lead, gyb.cstride, xb.plane, xb.pitch, xb.buf, xb.cstride, offs, max(xb.plane, qn),
            xb.pitch, 1, p.oh, p.ow * n, p.groups, True, _SEG, 0, part, _NO_SUMS)
    gw64 = part.sum(axis=0)
    if np.isnan(gw64).any():
        return None
    gb = bias_grad(gy, _alloc.empty((p.k,), dtype))
    gw = gw64.astype(dtype).reshape(p.weight_shape)
    if not need_input_grad:
        return None, gw, gb
    gx = _alloc.empty(p.x_shape, dtype)
    if not fast_gx:
        from .conv_direct import _gx_scatter

        return _gx_scatter(gy, weight, gx, 1, 1, p.ph, p.pw, p.dh, p.dw), gw, gb
    offs_gx = (lead + ((p.ph - r * p.dh) * wp + (p.pw - s * p.dw)) * n).astype(np.int64)
    w4 = weight.reshape(p.groups, p.kg, p.cg, p.kh * p.kw).transpose(0, 2, 1, 3)
    return _corr_bi(gyb, offs_gx, w4, empty_bias(dtype), gx), gw, gb
