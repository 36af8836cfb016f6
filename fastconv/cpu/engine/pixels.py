"""Correlation with the output channels in the vector lanes (pixel tiles).

``correlate`` runs Q -- every position of a padded plane, output pixel or
not -- in the vector lanes: for a 7x7 output in a 9x9 padded plane, 49 useful
lanes per 64 computed, and a stride-2 convolution needs a polyphase copy.
Here the lanes run over output channels instead (oneDNN's direct convolution
does the same), and each output pixel is a broadcast scalar with its own
offset ``pix[p]`` into the prepared buffer:

    out[n, g*kgo + k, oh, ow] = bias + sum over c < cgi and taps t of
        buf[(g*cgi + c)*cstride + offs[t] + pix[p]] * w[g, k, c, t]

with p the flat index of (n, oh, ow).  Only output pixels are computed, at
any stride or dilation, in the standard or the batch-inner layout; output
channels are padded to whole tiles (64 in float32, 32 in float64).

Parallel over tasks (group, block of pixels, block of output channels;
channel blocks vary fastest so a thread's consecutive tasks reuse the
pixels' input from L2); each task sums ``channel_block`` input channels per
pass of its tiles into an accumulator (pixels x channels) and writes it out
transposed into NCHW, adding the bias.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..common import FASTMATH
from ..layout import PIXEL_TILE, Layout, PixelTiling
from .simd import pixel_tile

__all__ = ["corr_pixels", "correlate_pixels", "pixel_offsets"]

_NPIX = PIXEL_TILE[0]


def pixel_offsets(layout: Layout, out_shape: tuple[int, int, int], strides: tuple[int, int]) -> np.ndarray:
    """int64 offset of every output pixel (n, oh, ow), in order, in a stride-1
    prepared buffer of ``layout``: n*plane + oh*sh*pitch + ow*sw (standard) or
    n + oh*sh*pitch + ow*sw*N (batch-inner); the last one repeated up to whole
    tiles (the tail of the last tile reads valid addresses; its results are
    dropped)."""
    n, oh, ow = out_shape
    sh, sw = strides
    per_image = layout.plane if layout.kind == "standard" else 1
    q = (
        np.arange(n, dtype=np.int64)[:, None, None] * per_image
        + np.arange(oh, dtype=np.int64)[None, :, None] * (sh * layout.pitch)
        + np.arange(ow, dtype=np.int64)[None, None, :] * (sw * layout.step)
    ).ravel()
    pad = -q.shape[0] % _NPIX
    return np.concatenate([q, np.full(pad, q[-1], dtype=np.int64)]) if pad else q


def correlate_pixels(
    buf: np.ndarray,
    layout: Layout,
    offs: np.ndarray,
    wpk: np.ndarray,
    bias: np.ndarray,
    out: np.ndarray,
    tiling: PixelTiling,
    strides: tuple[int, int],
) -> np.ndarray:
    """out (N, Kout, OH, OW) = bias + correlation of ``buf`` (a stride-1
    ``layout``) with the packed weights ``wpk`` (``pack_weights`` with this
    tiling) at tap offsets ``offs``, output pixels ``strides`` apart; bias
    (Kout,) or (0,) for none."""
    pix = pixel_offsets(layout, (out.shape[0], out.shape[2], out.shape[3]), strides)
    return corr_pixels(buf, layout.cstride, offs, pix, wpk, bias, out, tiling.block, tiling.channel_block)


@njit(fastmath=FASTMATH, cache=True)
def _task_acc(inp, base, cstride, offs, pix, p0, pn, wk, cblk):
    """The accumulator (pixels rounded up to whole tiles, output channels of
    the block) of one task: sums over all input channels for the pn pixels
    from p0 on; wk (cgi, T, vectors x lanes) the block's packed weights."""
    cgi, _, kbw = wk.shape
    acc = np.empty((-(-pn // _NPIX) * _NPIX, kbw), dtype=inp.dtype)
    for c0 in range(0, cgi, cblk):
        cn = min(cblk, cgi - c0)
        wkc = wk[c0 : c0 + cn]
        cb = base + c0 * cstride
        for j0 in range(0, pn, _NPIX):
            pixel_tile(inp, cb, cstride, cn, wkc, offs, pix, p0 + j0, acc, j0, c0)
    return acc


@njit(fastmath=FASTMATH, cache=True)
def _copy_out(acc, p0, pn, out, k0, nk, bias):
    """out[n, k0 + kk, oh, ow] (+ bias) = acc[p - p0, kk] for the pixels p =
    n*OH*OW + oh*OW + ow in [p0, p0 + pn) (out C-contiguous): each pixel's
    flat position found once, then channel by channel, so the writes run
    along output rows."""
    kout, per_img = out.shape[1], out.shape[2] * out.shape[3]
    flat = out.reshape(-1)
    at = np.empty(pn, dtype=np.int64)
    for j in range(pn):
        n = (p0 + j) // per_img
        at[j] = p0 + j + n * (kout - 1) * per_img + k0 * per_img
    has_bias = bias.shape[0] > 0
    for kk in range(nk):
        o = kk * per_img
        if has_bias:
            b = bias[k0 + kk]
            for j in range(pn):
                flat[at[j] + o] = acc[j, kk] + b
        else:
            for j in range(pn):
                flat[at[j] + o] = acc[j, kk]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def corr_pixels(inp, cstride, offs, pix, wpk, bias, out, pblk, cblk):
    """out (N, Kout, OH, OW) = bias + correlation over a stride-1 standard
    buffer at the pixel offsets ``pix`` (``pixel_offsets``); wpk (G,
    Kout_g/kb, Cin_g, T, kb) with kb the tile's output channels
    (``pack_weights``); bias (Kout,) or (0,); pblk pixels per task (a
    multiple of the tile's pixels), cblk input channels per pass."""
    n_img, kout, oh_n, ow_n = out.shape
    groups, nkb, cgi, _, kbw = wpk.shape
    kgo = kout // groups
    npx = n_img * oh_n * ow_n
    nblk = -(-npx // pblk)
    for t in prange(groups * nkb * nblk):
        kb = t % nkb
        u = t // nkb
        bi = u % nblk
        g = u // nblk
        p0 = bi * pblk
        pn = min(pblk, npx - p0)
        acc = _task_acc(inp, g * cgi * cstride, cstride, offs, pix, p0, pn, wpk[g, kb], cblk)
        _copy_out(acc, p0, pn, out, g * kgo + kb * kbw, min(kbw, kgo - kb * kbw), bias)
    return out
