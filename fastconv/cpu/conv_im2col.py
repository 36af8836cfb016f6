"""im2col + GEMM 2-D convolution on the CPU: forward and backward.

The batch is processed in chunks of images (the plan's ``images_per_chunk``)
so the workspace is bounded: a column matrix ``col`` (C*R*S, nb*OH*OW) and a
channel-major copy of grad_output ``gyc`` (K, nb*OH*OW) (backward), together
at most ``fastconv._plan.COLUMN_WORKSPACE_BYTES`` -- or one image's worth when
a single image needs more.  Rows of both matrices are ``layout.column_ld``
long (odd cache lines, a zeroed tail the register tiles may read).

The GEMMs are not BLAS calls: they run on the engine's register-tile
correlation and dot products, which are written for "a prepared buffer in
which every kernel tap is a constant shift of one index Q".  The column
matrix is such a buffer (``layout.column_layout``) with no garbage Q at all:
Q = i*OH*OW + oh*OW + ow runs over exactly the output pixels of the chunk,
and tap t of input channel c is row c*T + t, i.e. channel stride T*ld and
tap offsets t*ld.  So im2col trades the direct kernels' wasted work on
padding columns and rows for the memory traffic of a T-times larger buffer,
and runs parallel over every core with no BLAS thread pool to contend with
Numba's.  Per chunk:

forward   ``_im2col`` fills col (zeros where a tap falls in the padding);
          ``engine.correlate`` computes y[i, k] = bias[k] + W[k] . col[:, Q of image i].
backward  grad_weight[k, c, t] += gyc[k] . col[c*T + t] (float64 partial sums
          per thread, summed over threads and chunks), over grad_output in
          place, image by image, when the plan says so (``_out_to_cols`` copies
          it to gyc otherwise, and for grad_x); the column gradient
          gcol[i, c*T + t] = sum_k W[k, c, t] gyc[k, Q of image i] (a
          correlation with the weights read as (C*T, K)) is written over col
          (no longer needed) and ``_col2im`` adds it into grad_x.  grad_bias
          comes with the in-place grad_weight pass, else from ``bias_grad``.

The copies are parallel over (channel, tap, image) rows (``_im2col``, so a
batch of one with one channel still fills col on every core) or (image,
channel); ``_col2im`` over grad_x planes, each plane owned by one iteration
(race-free: overlapping windows meet only inside one thread).

Semantics: col holds explicit zeros for the padding, so forward and
grad_weight multiply the padding like PyTorch and the reference do; grad_x
only adds the (output, tap) pairs that exist (products landing in the
padding are dropped by ``_col2im``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit, prange

from .. import _alloc
from .._params import Conv2dParams
from .common import FASTMATH, bias_grad, empty_bias, tap_cols
from .engine import correlate, grad_weight_contiguous, grad_weight_rows, pack_weights
from .layout import column_layout, column_ld, tap_offsets

if TYPE_CHECKING:
    from .._plan import ConvPlan

__all__ = ["backward", "forward"]

# The column gradient's only "tap": row k of the channel-major grad_output.
_ROW_TAP = np.zeros(1, dtype=np.int64)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _im2col(x, n0, nb, geo, col, nsplit):
    """col[c*T + r*KW + s, i*P + oh*OW + ow] = x[n0+i, c, oh*sh - ph + r*dh,
    ow*sw - pw + s*dw], zero outside x.  col (C*T, ld >= nb*P), P = OH*OW;
    each row's tail past nb*P is zeroed.  geo = (KH, KW, sh, sw, ph, pw, dh,
    dw, OH, OW).

    Parallel over the C*T rows of col, each split into ``nsplit`` runs of
    images (so one input channel still keeps every core busy).  Flat integer
    indexing, no array slices: for small planes (3x3 outputs) the per-row
    bookkeeping, not the copying, is the cost."""
    kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n = geo
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    ntap = kh * kw
    plane = oh_n * ow_n
    ld = col.shape[1]
    xf = x.reshape(-1)
    cf = col.reshape(-1)
    nrow = c_n * ntap
    for task in prange(nrow * nsplit):
        # image runs outermost: a thread fills the columns of a run of images,
        # the Q range its later GEMM tasks read (no cross-core cache traffic)
        part = task // nrow
        row = task - part * nrow
        tap = row % ntap
        c = row // ntap
        r = tap // kw
        s = tap - r * kw
        # output columns whose input column ow*sw + off lies in [0, W)
        off, lo, hi = tap_cols(s, dw, pw, sw, w, ow_n)
        d0 = row * ld
        if part == nsplit - 1:
            for j in range(d0 + nb * plane, d0 + ld):
                cf[j] = 0
        for i in range(part * nb // nsplit, (part + 1) * nb // nsplit):
            xc = ((n0 + i) * c_n + c) * h * w
            for oh in range(oh_n):
                d = d0 + i * plane + oh * ow_n
                ih = oh * sh - ph + r * dh
                if ih < 0 or ih >= h:
                    for j in range(d, d + ow_n):
                        cf[j] = 0
                    continue
                for j in range(d, d + lo):
                    cf[j] = 0
                for j in range(d + hi, d + ow_n):
                    cf[j] = 0
                xr = xc + ih * w + off
                if sw == 1:
                    for ow in range(lo, hi):
                        cf[d + ow] = xf[xr + ow]
                else:
                    for ow in range(lo, hi):
                        cf[d + ow] = xf[xr + ow * sw]
    return col


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _col2im(gcol, n0, geo, gx):
    """gx[n0+i, c] = sum over taps of the rows gcol[i, c*T + tap] (OH, OW)
    scattered back to the input pixels they were read from (the adjoint of
    ``_im2col``; padding dropped).  Parallel over the nb*C planes of gx, each
    owned by one iteration (flat indexing, as ``_im2col``); geo as ``_im2col``'s."""
    kh, kw, sh, sw, ph, pw, dh, dw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7]
    nb, _, oh_n, ow_n = gcol.shape
    c_n, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    ntap = kh * kw
    plane = oh_n * ow_n
    gf = gcol.reshape(-1)
    xf = gx.reshape(-1)
    for t in prange(nb * c_n):
        i = t // c_n
        c = t - i * c_n
        x0 = ((n0 + i) * c_n + c) * h * w
        for j in range(x0, x0 + h * w):
            xf[j] = 0
        for tap in range(ntap):
            r = tap // kw
            s = tap - r * kw
            g0 = (i * c_n * ntap + c * ntap + tap) * plane
            off, lo, hi = tap_cols(s, dw, pw, sw, w, ow_n)
            if hi == lo:
                continue
            for oh in range(oh_n):
                ih = oh * sh - ph + r * dh
                if ih < 0 or ih >= h:
                    continue
                gr = g0 + oh * ow_n
                xr = x0 + ih * w + off
                if sw == 1:
                    for ow in range(lo, hi):
                        xf[xr + ow] += gf[gr + ow]
                else:
                    for ow in range(lo, hi):
                        xf[xr + ow * sw] += gf[gr + ow]
    return gx


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _out_to_cols(gy, n0, nb, gyc):
    """gyc[k, i*P:(i+1)*P] = gy[n0+i, k] (flattened); each row's tail past
    nb*P zeroed."""
    k_n = gy.shape[1]
    plane = gy.shape[2] * gy.shape[3]
    g3 = gy.reshape(gy.shape[0], k_n, plane)
    for t in prange(nb * k_n):
        i = t // k_n
        k = t - i * k_n
        if i == nb - 1:
            tail = gyc[k, nb * plane :]
            for j in range(tail.shape[0]):
                tail[j] = 0
        src = g3[n0 + i, k]
        dst = gyc[k, i * plane : (i + 1) * plane]
        for j in range(plane):
            dst[j] = src[j]
    return gyc


def _geometry(p: Conv2dParams) -> tuple[int, ...]:
    return (p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw, p.oh, p.ow)


class _Columns:
    """The column-matrix workspace of one call: chunk n0..n0+m of x in col."""

    def __init__(self, p: Conv2dParams, dtype: np.dtype, nb: int, threads: int):
        self.p, self.threads = p, threads
        self.rows = p.c * p.kh * p.kw
        self.buf = _alloc.scratch("im2col.columns", self.rows * column_ld(nb * p.oh * p.ow, dtype.itemsize), dtype)

    def fill(self, x: np.ndarray, n0: int, m: int):
        """col <- chunk n0..n0+m of x; (its layout, tap offsets)."""
        p = self.p
        ld = column_ld(m * p.oh * p.ow, self.buf.itemsize)
        col = self.buf[: self.rows * ld].reshape(self.rows, ld)
        # rows split so there are >= 8 tasks per thread
        nsplit = max(1, min(m, -(-8 * self.threads // self.rows)))
        _im2col(x, n0, m, _geometry(p), col, nsplit)
        lay = column_layout(m, self.rows, p.kh * p.kw, ld, p.oh, p.ow)
        return lay, tap_offsets(p.kh, p.kw, 1, 1, p.kw * ld, step=ld)


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, plan: ConvPlan) -> tuple[np.ndarray, None]:
    """(y (N, K, OH, OW), None: no prepared x for the backward)."""
    p, c = plan.params, plan.cpu_part()
    dtype = x.dtype
    cols = _Columns(p, dtype, c.images_per_chunk, plan.threads)
    wpk = pack_weights(weight.reshape(p.groups, p.kg, p.cg, p.kh * p.kw), c.forward_corr())
    b = empty_bias(dtype) if bias is None else bias
    y = _alloc.empty(p.y_shape, dtype)
    for n0 in range(0, p.n, c.images_per_chunk):
        m = min(c.images_per_chunk, p.n - n0)
        lay, offs = cols.fill(x, n0, m)
        correlate(cols.buf, lay, offs, wpk, b, y[n0 : n0 + m], c.forward_corr())
    return y, None


def backward(
    gy: np.ndarray, x: np.ndarray, weight: np.ndarray, plan: ConvPlan, kept: None = None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gx, gw, gb) of conv2d for gy (N, K, OH, OW); shapes of x, weight and (K,).
    gx is None (not computed) when the plan needs no input gradient."""
    p, c = plan.params, plan.cpu_part()
    dtype = x.dtype
    plane, ntap, nb = p.oh * p.ow, p.kh * p.kw, c.images_per_chunk
    need_gx, in_place = plan.need_input_grad, c.grad_output_in_place
    cols = _Columns(p, dtype, nb, plan.threads)
    gycbuf = _alloc.scratch(
        "im2col.grad_output", p.k * column_ld(nb * plane, dtype.itemsize) if need_gx or not in_place else 0, dtype
    )
    # grad_bias: summed by the in-place grad_weight pass while each image's
    # grad_output is in cache, else one pass of its own
    gb = None if in_place else bias_grad(gy, _alloc.empty((p.k,), dtype))
    gb64 = np.zeros(p.k, dtype=np.float64)
    gx = _alloc.empty(p.x_shape, dtype) if need_gx else None
    gx_tiling, wpk_t = c.grad_input_corr(), None
    if gx_tiling is not None:  # column gradient weights: (G, C/G*T output rows, K/G inputs, 1 tap)
        wt = weight.reshape(p.groups, p.kg, p.cg * ntap).transpose(0, 2, 1)
        wpk_t = pack_weights(wt.reshape(p.groups, p.cg * ntap, p.kg, 1), gx_tiling)
    gw64 = np.zeros((p.k, p.cg, ntap), dtype=np.float64)
    shape = (p.k, p.cg, ntap)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        lay, offs = cols.fill(x, n0, m)
        if in_place:  # grad_output read in place, one image's K rows of OH*OW at a time
            gwc, gsum = grad_weight_rows(
                gy.reshape(-1),
                (n0 * p.k * plane, plane, p.k * plane, 0),
                cols.buf,
                lay.cstride,
                offs,
                plane,
                plane,
                (m, 1, plane),
                p.groups,
                shape,
                c.grad_weight,
            )
            gb64 += gsum
        ldm = lay.cstride // ntap
        if need_gx or not in_place:
            _out_to_cols(gy, n0, m, gycbuf[: p.k * ldm].reshape(p.k, ldm))
        if not in_place:
            gwc = grad_weight_contiguous(
                gycbuf, 0, ldm, cols.buf, lay.cstride, offs, m * plane, p.groups, shape, c.grad_weight
            )
        gw64 += gwc
        if gx is not None and gx_tiling is not None and wpk_t is not None:  # all three when need_gx
            # column gradient over col (no longer needed), as (m, C*T, OH, OW)
            gcol = cols.buf[: m * cols.rows * plane].reshape(m, cols.rows, p.oh, p.ow)
            gy_lay = column_layout(m, p.k, 1, ldm, p.oh, p.ow)
            correlate(gycbuf, gy_lay, _ROW_TAP, wpk_t, empty_bias(dtype), gcol, gx_tiling)
            _col2im(gcol, n0, _geometry(p)[:8], gx)
    if gb is None:
        gb = gb64.astype(dtype)
    return gx, gw64.astype(dtype).reshape(p.weight_shape), gb
