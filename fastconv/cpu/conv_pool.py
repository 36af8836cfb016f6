"""A conv fused with the max pooling after it (``fastconv.nn``'s ConvReLUPool step).

Run as two ops, a conv writes its output z and the pooling reads it back (a
first layer has few products per output, so both are bound by that traffic:
MNIST's 3x3 conv on one channel makes 9), and the pooling's backward scatters
its gradient into a z-sized array.  Fused, z never reaches memory.

Forward (``forward``): parallel over (image, block of output channels, block
of pooled rows).  The pixel tiles (``engine.pixels.pixel_accumulator``: output
channels in the vector lanes, input channels in passes whose weights stay in
L1) compute the conv outputs of the task's windows, window by window, into an
accumulator; each window's maximum plus the bias is kept by PyTorch's rule
(scan row-major, replace when ``v > m or v != v``: the first maximum wins a
tie, a NaN always wins) and stored into the pooled planes by register
transposes, and the winner's position in its window is written in place as a
byte code.  Conv outputs outside every window are not computed.  x is read
through a zero-padded copy when the conv pads, so the padding is multiplied
as PyTorch multiplies it (0 * inf = NaN).

Backward of a first layer (``grad_weight``: no grad_x): grad_weight[k, t] is
the sum over every conv output pixel of gz[pixel, k] * x[pixel's tap t], with
gz the pooled gradient at each window's winner and zero elsewhere -- the dense
sum PyTorch computes, zeros included (a non-finite x gives the same NaN).  Per
image, gz is built channels-innermost in a zeroed buffer (one store per window
and channel), then the pixel tiles run with (input channel, tap) pairs as rows
and the conv pixels as the reduction.  Sums run in the compute dtype per image
and in float64 across images, in fixed chunks of images (the result does not
depend on the thread count).

Backward of any other layer (``scatter_gradient``): the codes scatter the
pooled gradient into z's gradient, and the conv's own backward runs on it.

The plan (``fastconv._plan.plan_conv_pool``) says when a pair is fused and how.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
from numba import njit, prange

from .. import _alloc
from .common import FASTMATH, split_task
from .engine.correlate import pack_weights_by
from .engine.grad_weight import pair_offsets
from .engine.pixels import pixel_accumulator, pixel_tile_any, whole_tiles
from .engine.transforms import transpose_block_exact
from .layout import PIXEL_TILE, tap_offsets
from .pad import pad

if TYPE_CHECKING:
    from .._params import Conv2dParams
    from .._plan import ConvPoolPlan

__all__ = ["forward", "grad_weight", "scatter_gradient"]

_NPIX = PIXEL_TILE[0]
IMAGES_PER_CHUNK = 4  # images per partial sum of grad_weight (fixed: results independent of threads)


def forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, plan: ConvPoolPlan, keep_codes: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(pooled y (N, K, PH, PW), the windows' codes or None, x as the kernels
    read it (zero-padded when the conv pads; the backward's input)) of the
    conv of ``plan`` (x (N, C, H, W), weight (K, C, KH, KW), bias (K,) or
    None, all of one compute dtype) followed by its max pooling.  The codes,
    (N, K/channels blocks, PH, PW, channels) uint8, are each window's winner
    in row-major order."""
    p = plan.params
    assert p is not None
    pads = (p.ph, p.pw, p.ph_end, p.pw_end)
    xp = pad(x, pads, "zeros") if any(pads) else np.ascontiguousarray(x)
    wp = xp.shape[3]
    wpk = pack_weights_by(weight.reshape(1, p.k, p.c, p.kh * p.kw), plan.channels)
    nkb, kbw = wpk.shape[1], wpk.shape[4]
    (ph, pw), (pkh, pkw) = plan.pooled, plan.pool
    y = _alloc.empty((p.n, p.k, ph, pw), x.dtype)
    codes = np.empty((p.n, nkb, ph, pw, kbw) if keep_codes else (0, 0, 0, 0, 0), dtype=np.uint8)
    b = np.zeros(nkb * kbw, dtype=x.dtype)
    if bias is not None:
        b[: p.k] = bias
    offs = tap_offsets(p.kh, p.kw, p.dh, p.dw, wp)
    rows = plan.rows
    pix = _window_pixels(rows, pw, plan.pool, (p.sh, p.sw), wp)
    pix_last = _window_pixels((ph - 1) % rows + 1, pw, plan.pool, (p.sh, p.sw), wp)
    geo = (pkh * pkw, pkh * p.sh * wp, rows, plan.channel_block)
    _forward(xp, wpk, b, offs, pix, pix_last, geo, y, codes)
    return y, (codes if keep_codes else None), xp


@functools.lru_cache(maxsize=64)
def _window_pixels(rows: int, pw_n: int, pool: tuple[int, int], strides: tuple[int, int], wp: int) -> np.ndarray:
    """Offsets in a padded image plane, from the first of ``rows`` pooled
    rows, of the conv output pixels of their windows, row by row and window
    by window (row-major inside each), in whole pixel tiles; read-only and
    cached (every training step asks for the same)."""
    pkh, pkw = pool
    qh, dy, qw, dx = np.meshgrid(np.arange(rows), np.arange(pkh), np.arange(pw_n), np.arange(pkw), indexing="ij")
    pix = (qh * pkh + dy) * strides[0] * wp + (qw * pkw + dx) * strides[1]
    out = whole_tiles(pix.transpose(0, 2, 1, 3).reshape(-1).astype(np.int64))
    out.flags.writeable = False
    return out


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _forward(xp, wpk, b, offs, pix, pix_last, geo, y, codes):
    """``forward``'s kernel: parallel over (image, block of output channels,
    block of pooled rows); a task's accumulator holds its windows' conv
    outputs (``pixel_accumulator``: passes of ``cblk`` input channels)."""
    win, row_step, rows, cblk = geo
    n_img, k_n, ph_n, pw_n = y.shape
    _, nkb, c_n, _, kbw = wpk.shape
    plane = xp.shape[2] * xp.shape[3]
    nrb = -(-ph_n // rows)
    flat = xp.reshape(-1)
    per_row = pw_n * win
    for task in prange(n_img * nkb * nrb):
        n, kb, rb = split_task(task, nrb, nkb)
        qh0 = rb * rows
        nr = min(rows, ph_n - qh0)
        px = pix if nr == rows else pix_last
        base = n * c_n * plane + qh0 * row_step
        acc = pixel_accumulator(flat, base, plane, offs, px, 0, nr * per_row, wpk[0, kb], cblk)
        best = np.empty((pw_n, kbw), dtype=xp.dtype)
        scratch = np.empty((pw_n, kbw), dtype=np.uint8)
        bk = b[kb * kbw : (kb + 1) * kbw]
        for r in range(nr):
            code = codes[n, kb, qh0 + r] if codes.shape[0] > 0 else scratch
            _pool_windows(acc[r * per_row : (r + 1) * per_row], win, bk, best, code)
            _store_row(best, n, kb * kbw, qh0 + r, y)
    return y


@njit(fastmath=FASTMATH, cache=True, inline="always")
def _better(v, m, e, c):
    """PyTorch's rule, as selects: (the new maximum, its code)."""
    take = (v > m) | (v != v)
    return (v if take else m), (e if take else c)


@njit(fastmath=FASTMATH, cache=True)
def _pool_windows(acc, win, b, best, code):
    """best[qw] = the maximum over window qw's accumulator rows plus the bias
    (PyTorch's rule), code[qw] its position in the window.  2x2 windows get
    a loop of selects without an inner loop (LLVM vectorises it over the
    channels); other windows a pass per window position."""
    pw_n, kbw = best.shape
    for qw in range(pw_n):
        j0 = qw * win
        m = best[qw]
        cd = code[qw]
        a0 = acc[j0]
        if win == 4:
            a1, a2, a3 = acc[j0 + 1], acc[j0 + 2], acc[j0 + 3]
            for k in range(kbw):
                bk = b[k]
                v, c = _better(a1[k] + bk, a0[k] + bk, 1, 0)
                v, c = _better(a2[k] + bk, v, 2, c)
                m[k], cd[k] = _better(a3[k] + bk, v, 3, c)
            continue
        for k in range(kbw):
            m[k] = a0[k] + b[k]
            cd[k] = 0
        for e in range(1, win):
            a = acc[j0 + e]
            for k in range(kbw):
                m[k], cd[k] = _better(a[k] + b[k], m[k], e, cd[k])


@njit(fastmath=FASTMATH, cache=True)
def _store_row(best, n, k0, qh, y):
    """y[n, k0 + k, qh, :] = best[:, k] by register-transposed blocks."""
    k_n, ph_n, pw_n = y.shape[1], y.shape[2], y.shape[3]
    kbw = best.shape[1]
    nk = min(kbw, k_n - k0)
    lanes = 64 // best.itemsize
    src = best.reshape(-1)
    dst = y.reshape(-1)
    plane = ph_n * pw_n
    for k in range(0, nk, lanes):
        for q in range(0, pw_n, lanes):
            d0 = ((n * k_n + k0 + k) * ph_n + qh) * pw_n + q
            transpose_block_exact(src, q * kbw + k, kbw, min(lanes, pw_n - q), min(lanes, nk - k), dst, d0, plane)


def grad_weight(g: np.ndarray, codes: np.ndarray, xp: np.ndarray, plan: ConvPoolPlan) -> tuple[np.ndarray, np.ndarray]:
    """(grad_weight (K, C, KH, KW), grad_bias (K,)) in the compute dtype from
    the pooled gradient g (N, K, PH, PW) and what ``forward`` returned: the
    window codes and the input as read."""
    p = plan.params
    assert p is not None
    pix, pairs = _conv_pixels_and_pairs(p, xp.shape[2], xp.shape[3])
    taps = p.c * p.kh * p.kw
    kp = codes.shape[1] * codes.shape[4]
    part = np.empty((-(-p.n // IMAGES_PER_CHUNK), taps + 1, kp), dtype=np.float64)
    _grad_weight(np.ascontiguousarray(g), codes, xp, plan.pool, (p.oh, p.ow), pix, pairs, part)
    tot = part.sum(axis=0)
    gw = np.ascontiguousarray(tot[:taps, : p.k].T).astype(g.dtype).reshape(p.weight_shape)
    return gw, tot[taps, : p.k].astype(g.dtype)


@functools.lru_cache(maxsize=64)
def _conv_pixels_and_pairs(p: Conv2dParams, hp: int, wp: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets in an (hp, wp) padded image of its conv output pixels' first
    taps, and of the (input channel, tap) pairs in whole pixel tiles;
    read-only and cached."""
    pix = (np.arange(p.oh, dtype=np.int64)[:, None] * (p.sh * wp) + np.arange(p.ow, dtype=np.int64) * p.sw).reshape(-1)
    pairs = whole_tiles(pair_offsets(hp * wp, tap_offsets(p.kh, p.kw, p.dh, p.dw, wp), p.c))
    pix.flags.writeable = pairs.flags.writeable = False
    return pix, pairs


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _grad_weight(g, codes, xp, pool, conv_out, pix, pairs, part):
    """``grad_weight``'s kernel: part[chunk, pair, k] = a chunk of images'
    float64 sums, row ``pairs`` the bias's.  Per (image, block of output
    channels): gz (conv pixels x channels) built from the pooled rows, then
    the pixel tiles with (input channel, tap) pairs as rows and the conv
    pixels as the reduction (the roles of ``engine.pixels.grad_weight_pixels``)."""
    oh_n, ow_n = conv_out
    n_img, k_n, ph_n, pw_n = g.shape
    chunks, rows, kp = part.shape
    npair = rows - 1
    nkb, kbw = codes.shape[1], codes.shape[4]
    plane_c = xp.shape[1] * xp.shape[2] * xp.shape[3]
    flat = xp.reshape(-1)
    at = _code_offsets(pool, ow_n, kbw)
    for ch in prange(chunks):
        tot = part[ch]
        tot[:, :] = 0.0
        gz = np.empty((1, oh_n * ow_n, kbw), dtype=g.dtype)
        acc = np.empty((pairs.shape[0], kbw), dtype=g.dtype)
        gt = np.zeros(pw_n * kbw, dtype=g.dtype)
        for n in range(ch * IMAGES_PER_CHUNK, min(n_img, (ch + 1) * IMAGES_PER_CHUNK)):
            for kb in range(nkb):
                _route_gradient(g, codes, n, kb, pool, ow_n, at, gz[0], gt, tot[npair, kb * kbw : (kb + 1) * kbw])
                for j in range(0, npair, _NPIX):
                    pixel_tile_any(flat, n * plane_c, 0, 1, gz, pix, pairs, j, acc, j, 0)
                for j in range(npair):
                    for i in range(kbw):
                        tot[j, kb * kbw + i] += acc[j, i]
    return part


@njit(fastmath=FASTMATH, cache=True)
def _route_gradient(g, codes, n, kb, pool, ow_n, at, gz, gt, bias_tot):
    """gz[oh*OW + ow, i] = g[n, kb*kbw + i, qh, qw] where conv pixel (oh, ow)
    won its window (qh, qw) for that channel, else 0 (pixels outside every
    window too); bias_tot[i] += the pooled gradient's sum.  Zeroed, then one
    store per (window, channel) at its winner (``at``: ``_code_offsets``
    scaled by kbw); gt a (PW*kbw) row buffer, its lanes past the block's
    channels zeroed here."""
    pkh, pkw = pool
    k_n, ph_n, pw_n = g.shape[1], g.shape[2], g.shape[3]
    kbw = gz.shape[1]
    k0 = kb * kbw
    nk = min(kbw, k_n - k0)
    zf = gz.reshape(-1)
    zf[:] = 0.0
    for qw in range(pw_n):
        for i in range(nk, kbw):
            gt[qw * kbw + i] = 0.0
    plane = ph_n * pw_n
    gn = g.reshape(-1)[(n * k_n + k0) * plane :]
    for qh in range(ph_n):
        ct = codes[n, kb, qh].reshape(-1)
        for i in range(nk):
            src = gn[i * plane + qh * pw_n :]
            for qw in range(pw_n):
                gt[qw * kbw + i] = src[qw]
        for qw in range(pw_n):
            for i in range(kbw):
                bias_tot[i] += gt[qw * kbw + i]
        for qw in range(pw_n):  # each channel's value to its winner: the rest stays zero
            d = ((qh * pkh) * ow_n + qw * pkw) * kbw
            for i in range(kbw):
                zf[d + at[ct[qw * kbw + i]] + i] = gt[qw * kbw + i]


@njit(cache=True)
def _code_offsets(pool, ow_n, scale):
    """scale * (the offset of code e's pixel from its window's first one) in
    conv output rows of ow_n pixels."""
    pkh, pkw = pool
    at = np.empty(pkh * pkw, dtype=np.int64)
    for e in range(pkh * pkw):
        at[e] = ((e // pkw) * ow_n + e % pkw) * scale
    return at


def scatter_gradient(g: np.ndarray, codes: np.ndarray, plan: ConvPoolPlan) -> np.ndarray:
    """The conv output's gradient (N, K, OH, OW): the pooled gradient g at each
    window's winner, zero elsewhere (the pooling's backward, from the codes)."""
    p = plan.params
    assert p is not None
    gz = _alloc.empty((p.n, p.k, p.oh, p.ow), g.dtype)
    return _scatter(np.ascontiguousarray(g), codes, plan.pool, gz)


@njit(parallel=True, cache=True)
def _scatter(g, codes, pool, gz):
    """``scatter_gradient``'s kernel: parallel over the (image, channel)
    planes, each zeroed and written by one iteration."""
    pkh, pkw = pool
    n_img, k_n, oh_n, ow_n = gz.shape
    ph_n, pw_n = g.shape[2], g.shape[3]
    nkb, kbw = codes.shape[1], codes.shape[4]
    plane = oh_n * ow_n
    dst = gz.reshape(-1)
    src = g.reshape(-1)
    cf = codes.reshape(-1)
    at = _code_offsets(pool, ow_n, 1)
    for u in prange(n_img * k_n):
        n = u // k_n
        k = u - n * k_n
        kb = k // kbw
        out = dst[u * plane : (u + 1) * plane]  # slices from 0: no wrap-around selects
        out[:] = 0.0
        cu = cf[(n * nkb + kb) * ph_n * pw_n * kbw + k - kb * kbw :]  # codes[n, kb, 0, 0, k % kbw] on
        gu = src[u * ph_n * pw_n : (u + 1) * ph_n * pw_n]
        for qh in range(ph_n):
            for qw in range(pw_n):
                out[qh * pkh * ow_n + qw * pkw + at[cu[(qh * pw_n + qw) * kbw]]] = gu[qh * pw_n + qw]
    return gz
