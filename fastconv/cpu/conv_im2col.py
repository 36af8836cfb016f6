"""im2col + GEMM 2-D convolution on the CPU: forward and backward.

The batch is processed in chunks of ``nb`` images so the workspace is bounded:
a column matrix ``col`` (C*R*S, nb*OH*OW) and a channel-major copy of
grad_output ``gyc`` (K, nb*OH*OW) (backward), together at most
``WORKSPACE_BYTES`` (64 MiB) -- or one image's worth when a single image needs
more.  Rows of both matrices are padded to an odd number of cache lines
(``_ld``) with a zeroed tail the register tiles may read past the end.

The GEMMs are not BLAS calls: they run on the direct convolution's
register-tiled micro-kernels (``conv_direct._corr`` / ``_gw_dot``), which are
written for "a prepared buffer in which every kernel tap is a constant shift
of one index Q".  The column matrix is such a buffer with no garbage Q at all:
Q = i*OH*OW + oh*OW + ow runs over exactly the output pixels of the chunk, and
tap t of input channel c is row c*T + t, i.e. channel stride T*ld and tap
offsets t*ld.  So im2col trades the direct kernel's wasted work on padding
columns and rows (large for small planes: a 5x5 input with a 3x3 kernel has
9 output pixels per 25 computed) for the memory traffic of a T-times larger
buffer, and runs parallel over both cores with no BLAS thread pool to contend
with Numba's.  Per chunk:

forward   ``_im2col`` fills col (zeros where a tap falls in the padding);
          ``_corr`` computes y[i, k] = bias[k] + W[k] . col[:, Q of image i].
backward  ``_out_to_cols`` copies grad_output to gyc; ``_gw_dot``:
          grad_weight[k, c, t] += gyc[k] . col[c*T + t] (float64 partial sums
          per thread, summed over threads and chunks; for planes of >= 256
          output pixels over grad_output in place, image by image, which saves
          the copy when no grad_x is wanted); the column gradient
          gcol[i, c*T + t] = sum_k W[k, c, t] gyc[k, Q of image i] (``_corr``
          with the weights read as (C*T, K)) is written over col (no longer
          needed) and ``_col2im`` adds it into grad_x.  grad_bias is
          ``bias_grad`` over the whole batch.

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

import numba
import numpy as np
from numba import njit, prange

from .. import _alloc
from .._params import Conv2dParams
from ._conv_common import FASTMATH, bias_grad, empty_bias, tap_cols
from .conv_direct import _CBLK, _NO_SUMS, _corr, _gw_dot, _pack4

__all__ = ["conv2d_forward_im2col", "conv2d_backward_im2col", "WORKSPACE_BYTES", "chunk_images"]

WORKSPACE_BYTES = 64 * 2**20

# Elements the register tiles may read past the end of a row (one 8 x 3-vector
# or 4 x 4-vector tile of float32 is at most 64 wide).
_OVERRUN = 64


# Column-matrix bytes a GEMM task's block of Q may span: the tiles of a task
# re-read its block once per output-channel block, so it should stay in L2
# (measured on (64,64,5,5)->64 and (64,32,13,13)->64: blocks of 1024 Q were
# 1.2x-1.4x slower than blocks of 96-288).
_BLOCK_BYTES = 256 * 1024
# Q per ``_gw_dot`` segment over the channel-major copy (its 4 grad_output rows stay in L1).
_SEG = 1024
# Output pixels per image from which grad_weight reads grad_output in place
# (one dot product per image row of OH*OW): (64,1,28,28)->32 3x3 (676
# pixels) 0.78 ms vs 1.06 ms for the direct kernels; for 11x11 or 3x3 outputs
# the short dot products were 1.6x-4x slower than over the copy.
_INPLACE_MIN = 256


def _q_run(rows: int, itemsize: int, budget: int, lo: int, hi: int) -> int:
    """Q per block: budget / (rows*itemsize), a multiple of 48 in [lo, hi]."""
    return max(lo, min(hi, budget // (rows * itemsize) // 48 * 48))


def chunk_images(p: Conv2dParams, itemsize: int) -> int:
    """Images per chunk so that col + gyc stay within WORKSPACE_BYTES (at least 1)."""
    per_image = (p.c * p.kh * p.kw + p.k) * p.oh * p.ow * itemsize
    return max(1, min(p.n, WORKSPACE_BYTES // per_image))


def _ld(q: int, itemsize: int) -> int:
    """Row length of a column matrix with q used columns: room for the tiles'
    overrun, rounded to an odd number of cache lines (rows a tile walks
    through then do not all map to the same few L1 sets)."""
    line = 64 // itemsize
    lines = -(-(q + _OVERRUN) // line)
    return (lines + 1 - lines % 2) * line


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _im2col(x, n0, nb, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, col, nsplit):
    """col[c*T + r*KW + s, i*P + oh*OW + ow] = x[n0+i, c, oh*sh - ph + r*dh,
    ow*sw - pw + s*dw], zero outside x.  col (C*T, ld >= nb*P), P = OH*OW;
    each row's tail past nb*P is zeroed.

    Parallel over the C*T rows of col, each split into ``nsplit`` runs of
    images (so one input channel still keeps every core busy).  Flat integer
    indexing, no array slices: for small planes (3x3 outputs) the per-row
    bookkeeping, not the copying, is the cost."""
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
def _col2im(gcol, n0, kh, kw, sh, sw, ph, pw, dh, dw, gx):
    """gx[n0+i, c] = sum over taps of the rows gcol[i, c*T + tap] (OH, OW)
    scattered back to the input pixels they were read from (the adjoint of
    ``_im2col``; padding dropped).  Parallel over the nb*C planes of gx, each
    owned by one iteration (flat indexing, as ``_im2col``)."""
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
            tail = gyc[k, nb * plane:]
            for j in range(tail.shape[0]):
                tail[j] = 0
        src = g3[n0 + i, k]
        dst = gyc[k, i * plane:(i + 1) * plane]
        for j in range(plane):
            dst[j] = src[j]
    return gyc


def _fill_cols(x, n0, m, p: Conv2dParams, col):
    """``_im2col`` for images n0..n0+m, rows split so there are >= 8 tasks per thread."""
    rows = p.c * p.kh * p.kw
    nsplit = max(1, min(m, -(-8 * numba.get_num_threads() // rows)))
    _im2col(x, n0, m, *_geometry(p), col, nsplit)


def _geometry(p: Conv2dParams):
    return (p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw, p.oh, p.ow)


def _gemm_out(inp, ld, ntap, wpk, bias, out):
    """out (m, Kout, OH, OW) = bias + wpk . inp over a column matrix inp (rows
    of length ld; input channel c's tap t in row c*ntap + t)."""
    m, _, oh, ow = out.shape
    offs = np.arange(ntap, dtype=np.int64) * ld
    blk = _q_run(wpk.shape[2] * ntap, inp.itemsize, _BLOCK_BYTES, 96, 1024)
    return _corr(inp, ntap * ld, offs, oh * ow, ow, wpk, bias, out, blk, _CBLK, 0, 0)


def conv2d_forward_im2col(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                          p: Conv2dParams) -> np.ndarray:
    """y (N, K, OH, OW) = conv2d(x (N, C, H, W), weight (K, C/groups, KH, KW)) + bias."""
    dtype = x.dtype
    plane, ntap = p.oh * p.ow, p.kh * p.kw
    crs = p.c * ntap
    nb = chunk_images(p, dtype.itemsize)
    ld = _ld(nb * plane, dtype.itemsize)
    colbuf = _alloc.empty((crs * ld,), dtype)  # every element a chunk reads was written by that chunk
    wpk = _pack4(weight.reshape(p.groups, p.kg, p.cg, ntap), 8 if p.kg >= 8 else 4)
    b = empty_bias(dtype) if bias is None else bias
    y = _alloc.empty(p.y_shape, dtype)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        ldm = _ld(m * plane, dtype.itemsize)
        col = colbuf[:crs * ldm].reshape(crs, ldm)
        _fill_cols(x, n0, m, p, col)
        _gemm_out(colbuf, ldm, ntap, wpk, b, y[n0:n0 + m])
    return y


def conv2d_backward_im2col(gy: np.ndarray, x: np.ndarray, weight: np.ndarray, p: Conv2dParams,
                           need_input_grad: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gx, gw, gb) of conv2d for gy (N, K, OH, OW); shapes of x, weight and (K,).
    gx is None (not computed) when ``need_input_grad`` is false."""
    dtype = x.dtype
    plane, ntap = p.oh * p.ow, p.kh * p.kw
    crs = p.c * ntap
    nb = chunk_images(p, dtype.itemsize)
    ld = _ld(nb * plane, dtype.itemsize)
    # workspaces: every element a chunk reads was written by that chunk
    colbuf = _alloc.empty((crs * ld,), dtype)
    # grad_weight from grad_output in place for planes of >= _INPLACE_MIN
    # pixels, else from the channel-major copy gyc (short rows make short dot
    # products); decided by the shape alone, so grad_weight is the same with
    # or without grad_x
    inplace = plane >= _INPLACE_MIN
    gycbuf = _alloc.empty((p.k * ld if need_input_grad or not inplace else 0,), dtype)
    # grad_bias: summed by the in-place grad_weight pass while each image's
    # grad_output is in cache, else one pass of its own
    gb = None if inplace else bias_grad(gy, _alloc.empty((p.k,), dtype))
    gb64 = np.zeros(p.k, dtype=np.float64)
    gx = _alloc.empty(p.x_shape, dtype) if need_input_grad else None
    # column gradient weights: (G, C/G*T output rows, K/G inputs, 1 tap)
    wpk_t = None
    if need_input_grad:
        wt = weight.reshape(p.groups, p.kg, p.cg * ntap).transpose(0, 2, 1)
        wpk_t = _pack4(wt.reshape(p.groups, p.cg * ntap, p.kg, 1), 8 if p.cg * ntap >= 8 else 4)
    nchunk = numba.get_num_threads()
    gw64 = np.zeros((p.k, p.cg, ntap), dtype=np.float64)
    for n0 in range(0, p.n, nb):
        m = min(nb, p.n - n0)
        ldm = _ld(m * plane, dtype.itemsize)
        col = colbuf[:crs * ldm].reshape(crs, ldm)
        _fill_cols(x, n0, m, p, col)
        offs = np.arange(ntap, dtype=np.int64) * ldm
        if inplace:
            # grad_output read in place, one image's K rows of OH*OW at a time
            part = _alloc.empty((max(1, min(nchunk, m)), p.k, p.cg, ntap), np.float64)
            gsum = _alloc.empty((part.shape[0], p.k), np.float64)
            _gw_dot(gy.reshape(-1), n0 * p.k * plane, plane, p.k * plane, 0, colbuf, ntap * ldm, offs, plane,
                    plane, m, 1, plane, p.groups, False, 0, 0, part, gsum)
            gb64 += gsum.sum(axis=0)
        if need_input_grad or not inplace:
            gyc = gycbuf[:p.k * ldm].reshape(p.k, ldm)
            _out_to_cols(gy, n0, m, gyc)
        if not inplace:
            part = _alloc.empty((max(1, min(nchunk, m * plane)), p.k, p.cg, ntap), np.float64)
            _gw_dot(gycbuf, 0, ldm, plane, p.ow, colbuf, ntap * ldm, offs, plane, p.ow,
                    m, p.oh, p.ow, p.groups, True, _SEG, 0, part, _NO_SUMS)
        gw64 += part.sum(axis=0)
        if not need_input_grad:
            continue
        # column gradient over col (no longer needed), as (m, C*T, OH, OW)
        gcol = colbuf[:m * crs * plane].reshape(m, crs, p.oh, p.ow)
        _gemm_out(gycbuf, ldm, 1, wpk_t, empty_bias(dtype), gcol)
        _col2im(gcol, n0, *_geometry(p)[:8], gx)
    if gb is None:
        gb = gb64.astype(dtype)
    return gx, gw64.astype(dtype).reshape(p.weight_shape), gb
