"""im2col + GEMM 2-D convolution on the CPU: forward and backward.

The batch is processed in chunks of ``nb`` images so the workspace is bounded:
a column matrix ``col`` (C*R*S, nb*OH*OW) and an output-side matrix ``tmp``
(K, nb*OH*OW), together at most ``WORKSPACE_BYTES`` (64 MiB) -- or one image's
worth when a single image needs more.  Per chunk:

forward   ``_im2col`` fills col (zeros where a tap falls in the padding), one
          GEMM per group tmp[g] = W[g] (K/G, C/G*R*S) @ col[g], then
          ``_cols_to_out`` copies tmp into y (N, K, OH, OW), adding the bias.
backward  ``_out_to_cols`` gathers grad_output into tmp (K, nb*OH*OW);
          grad_weight[g] += tmp[g] @ col[g]^T (one GEMM per group, summed over
          chunks); the column gradient W[g]^T @ tmp[g] is written over col
          (no longer needed) and ``_col2im`` adds it into grad_x.  grad_bias
          is ``bias_grad`` over the whole batch.

The GEMMs are NumPy ``matmul`` calls (OpenBLAS) made from Python, one per
chunk and operation (the groups form one stacked call), outside any parallel
region, so BLAS runs its own threads over both cores; a handful of Python-level
calls per chunk is the only interpreter work.  The Numba kernels around them
are parallel: ``_im2col`` over (channel, tap, image) rows of col, so a batch
of one with one channel still fills col on every core; the copies over
(image, output channel); ``_col2im`` over grad_x planes, each plane owned by
one iteration (race-free: overlapping windows meet only inside one thread).
Their inner loops run over contiguous output columns (vectorised copies /
adds; strided for a horizontal stride > 1).

Semantics: col holds explicit zeros for the padding, so forward and
grad_weight multiply the padding like PyTorch and the reference do; grad_x
only adds the (output, tap) pairs that exist.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import _alloc
from .._params import Conv2dParams
from ._conv_common import FASTMATH, bias_grad, tap_cols

__all__ = ["conv2d_forward_im2col", "conv2d_backward_im2col", "WORKSPACE_BYTES", "chunk_images"]

WORKSPACE_BYTES = 64 * 2**20


def chunk_images(p: Conv2dParams, itemsize: int) -> int:
    """Images per chunk so that col + tmp stay within WORKSPACE_BYTES (at least 1)."""
    per_image = (p.c * p.kh * p.kw + p.k) * p.oh * p.ow * itemsize
    return max(1, min(p.n, WORKSPACE_BYTES // per_image))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _im2col(x, n0, nb, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, col):
    """col[c*T + r*KW + s, i*P + oh*OW + ow] = x[n0+i, c, oh*sh - ph + r*dh,
    ow*sw - pw + s*dw], zero outside x.  col (C*T, >= nb*P), P = OH*OW."""
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    ntap = kh * kw
    plane = oh_n * ow_n
    for t in prange(c_n * ntap * nb):
        i = t % nb
        u = t // nb
        tap = u % ntap
        c = u // ntap
        r = tap // kw
        s = tap - r * kw
        dst = col[c * ntap + tap, i * plane:(i + 1) * plane]
        src = x[n0 + i, c]
        # output columns whose input column ow*sw + off lies in [0, W)
        off, lo, hi = tap_cols(s, dw, pw, sw, w, ow_n)
        for oh in range(oh_n):
            drow = dst[oh * ow_n:(oh + 1) * ow_n]
            ih = oh * sh - ph + r * dh
            if ih < 0 or ih >= h:
                drow[:] = 0
                continue
            for ow in range(lo):
                drow[ow] = 0
            for ow in range(hi, ow_n):
                drow[ow] = 0
            srow = src[ih]
            if sw == 1:
                ss = srow[lo + off:hi + off]
                ds = drow[lo:hi]
                for j in range(hi - lo):
                    ds[j] = ss[j]
            else:
                for ow in range(lo, hi):
                    drow[ow] = srow[ow * sw + off]
    return col


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _col2im(gcol, n0, nb, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, gx):
    """gx[n0+i, c] = sum over taps of gcol rows scattered back to the input
    pixels they were read from (the adjoint of ``_im2col``; padding dropped).
    Parallel over the nb*C planes of gx, each owned by one iteration."""
    c_n, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    ntap = kh * kw
    plane = oh_n * ow_n
    for t in prange(nb * c_n):
        i = t // c_n
        c = t - i * c_n
        dst = gx[n0 + i, c]
        dst[:] = 0
        for tap in range(ntap):
            r = tap // kw
            s = tap - r * kw
            src = gcol[c * ntap + tap, i * plane:(i + 1) * plane]
            off, lo, hi = tap_cols(s, dw, pw, sw, w, ow_n)
            if hi == lo:
                continue
            for oh in range(oh_n):
                ih = oh * sh - ph + r * dh
                if ih < 0 or ih >= h:
                    continue
                srow = src[oh * ow_n:(oh + 1) * ow_n]
                xrow = dst[ih]
                if sw == 1:
                    xs = xrow[lo + off:hi + off]
                    ss = srow[lo:hi]
                    for j in range(hi - lo):
                        xs[j] += ss[j]
                else:
                    for ow in range(lo, hi):
                        xrow[ow * sw + off] += srow[ow]
    return gx


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _cols_to_out(tmp, bias, n0, nb, y):
    """y[n0+i, k] = tmp[k, i*P:(i+1)*P] (+ bias[k] if bias is not empty)."""
    k_n = y.shape[1]
    plane = y.shape[2] * y.shape[3]
    y3 = y.reshape(y.shape[0], k_n, plane)
    has_bias = bias.shape[0] > 0
    for t in prange(nb * k_n):
        i = t // k_n
        k = t - i * k_n
        src = tmp[k, i * plane:(i + 1) * plane]
        dst = y3[n0 + i, k]
        if has_bias:
            b = bias[k]
            for j in range(plane):
                dst[j] = src[j] + b
        else:
            for j in range(plane):
                dst[j] = src[j]
    return y


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _out_to_cols(gy, n0, nb, tmp):
    """tmp[k, i*P:(i+1)*P] = gy[n0+i, k] (flattened)."""
    k_n = gy.shape[1]
    plane = gy.shape[2] * gy.shape[3]
    g3 = gy.reshape(gy.shape[0], k_n, plane)
    for t in prange(nb * k_n):
        i = t // k_n
        k = t - i * k_n
        src = g3[n0 + i, k]
        dst = tmp[k, i * plane:(i + 1) * plane]
        for j in range(plane):
            dst[j] = src[j]
    return tmp


def _geometry(p: Conv2dParams):
    return (p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw, p.oh, p.ow)


def conv2d_forward_im2col(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                          p: Conv2dParams) -> np.ndarray:
    """y (N, K, OH, OW) = conv2d(x (N, C, H, W), weight (K, C/groups, KH, KW)) + bias."""
    dtype = x.dtype
    g, plane = p.groups, p.oh * p.ow
    crs = p.c * p.kh * p.kw
    nb = chunk_images(p, dtype.itemsize)
    # workspaces: every element a chunk reads was written by that chunk
    colbuf = _alloc.empty((crs * nb * plane,), dtype)
    tmpbuf = _alloc.empty((p.k * nb * plane,), dtype)
    w3 = weight.reshape(g, p.kg, crs // g)
    b = np.zeros(0, dtype=dtype) if bias is None else bias
    y = _alloc.empty(p.y_shape, dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        col = colbuf[:crs * m * plane].reshape(crs, m * plane)
        tmp = tmpbuf[:p.k * m * plane].reshape(p.k, m * plane)
        _im2col(x, n0, m, *_geometry(p), col)
        np.matmul(w3, col.reshape(g, crs // g, m * plane), out=tmp.reshape(g, p.kg, m * plane))
        _cols_to_out(tmp, b, n0, m, y)
    return y


def conv2d_backward_im2col(gy: np.ndarray, x: np.ndarray, weight: np.ndarray, p: Conv2dParams,
                           need_input_grad: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gx, gw, gb) of conv2d for gy (N, K, OH, OW); shapes of x, weight and (K,).
    gx is None (not computed) when ``need_input_grad`` is false."""
    dtype = x.dtype
    g, plane = p.groups, p.oh * p.ow
    crs = p.c * p.kh * p.kw
    crsg = crs // g
    nb = chunk_images(p, dtype.itemsize)
    # workspaces: every element a chunk reads was written by that chunk
    colbuf = _alloc.empty((crs * nb * plane,), dtype)
    tmpbuf = _alloc.empty((p.k * nb * plane,), dtype)
    w3 = weight.reshape(g, p.kg, crsg)
    w3t = w3.transpose(0, 2, 1)
    gb = bias_grad(gy, _alloc.empty((p.k,), dtype))
    gx = _alloc.empty(p.x_shape, dtype) if need_input_grad else None
    gw = _alloc.empty(p.weight_shape, dtype)
    gw3 = gw.reshape(g, p.kg, crsg)
    part = _alloc.empty(gw3.shape, dtype) if p.n > nb else gw3
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        col = colbuf[:crs * m * plane].reshape(g, crsg, m * plane)
        tmp = tmpbuf[:p.k * m * plane].reshape(p.k, m * plane)
        _im2col(x, n0, m, *_geometry(p), col.reshape(crs, m * plane))
        _out_to_cols(gy, n0, m, tmp)
        tmp3 = tmp.reshape(g, p.kg, m * plane)
        if n0 == 0:
            np.matmul(tmp3, col.transpose(0, 2, 1), out=gw3)
        else:
            np.matmul(tmp3, col.transpose(0, 2, 1), out=part)
            gw3 += part
        if not need_input_grad:
            continue
        np.matmul(w3t, tmp3, out=col)  # column gradient overwrites the columns
        _col2im(col.reshape(crs, m * plane), n0, m, *_geometry(p), gx)
    return gx, gw, gb
