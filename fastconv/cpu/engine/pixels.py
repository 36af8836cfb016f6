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

import functools

import numpy as np
from numba import njit, prange

from ... import _alloc
from ..common import FASTMATH, split_task
from ..layout import PIXEL_TILE, GradWeightTiling, Layout, PixelTiling, TapTiling, taps_tile_extent
from .grad_weight import pair_offsets
from .packing import Unpacked, pack_block
from .simd import pixel_tile, pixel_tile1, pixel_tile2
from .transforms import add_vector, transpose_block, transpose_block_exact

__all__ = [
    "corr_pixels",
    "corr_pixels_packing",
    "corr_pixels_rows",
    "correlate_pixels",
    "grad_weight_pixels",
    "grad_x_taps",
    "pixel_accumulator",
    "pixel_offsets",
    "pixel_tile_any",
    "whole_tiles",
]

_NPIX = PIXEL_TILE[0]


def pixel_offsets(layout: Layout, out_shape: tuple[int, int, int], strides: tuple[int, int]) -> np.ndarray:
    """int64 offset of every output pixel (n, oh, ow), in order, in a stride-1
    prepared buffer of ``layout``: n*plane + oh*sh*pitch + ow*sw (standard,
    nchw) or n + oh*sh*pitch + ow*sw*N (batch-inner); the last one repeated up to whole
    tiles (the tail of the last tile reads valid addresses; its results are
    dropped).  Read-only: up to ``_CACHED_PIXELS`` pixels they are cached per
    geometry (a small layer's call would otherwise spend a noticeable share
    of its time building them)."""
    if out_shape[0] * out_shape[1] * out_shape[2] <= _CACHED_PIXELS:
        return _cached_pixel_offsets(layout, out_shape, strides)
    return _pixel_offsets(layout, out_shape, strides)


_CACHED_PIXELS = 1 << 16


@functools.lru_cache(maxsize=64)
def _cached_pixel_offsets(layout: Layout, out_shape: tuple[int, int, int], strides: tuple[int, int]) -> np.ndarray:
    return _pixel_offsets(layout, out_shape, strides)


def _pixel_offsets(layout: Layout, out_shape: tuple[int, int, int], strides: tuple[int, int]) -> np.ndarray:
    n, oh, ow = out_shape
    sh, sw = strides
    per_image = 1 if layout.kind == "batch-inner" else layout.plane
    q = (
        np.arange(n, dtype=np.int64)[:, None, None] * per_image
        + np.arange(oh, dtype=np.int64)[None, :, None] * (sh * layout.pitch)
        + np.arange(ow, dtype=np.int64)[None, None, :] * (sw * layout.step)
    ).ravel()
    q = whole_tiles(q)
    q.flags.writeable = False
    return q


def whole_tiles(q: np.ndarray) -> np.ndarray:
    """``q`` with its last entry repeated up to a multiple of the tile's
    pixels (a last tile's extra rows read valid addresses; dropped)."""
    pad = -q.shape[0] % _NPIX
    return np.concatenate([q, np.full(pad, q[-1], dtype=np.int64)]) if pad else q


def correlate_pixels(
    buf: np.ndarray,
    layout: Layout,
    offs: np.ndarray,
    wpk: np.ndarray | Unpacked,
    bias: np.ndarray,
    out: np.ndarray,
    tiling: PixelTiling,
    strides: tuple[int, int],
) -> np.ndarray:
    """out (N, Kout, OH, OW) = bias + correlation of ``buf`` (a stride-1
    ``layout``) with the packed weights ``wpk`` (``pack_weights`` with this
    tiling: the weight itself where the tasks pack their own blocks) at tap
    offsets ``offs``, output pixels ``strides`` apart; bias (Kout,) or (0,)
    for none."""
    pix = pixel_offsets(layout, (out.shape[0], out.shape[2], out.shape[3]), strides)
    if isinstance(wpk, Unpacked):
        g, kog, cig, _ = wpk.shape
        return corr_pixels_packing(
            buf, layout.cstride, offs, pix, wpk.src.reshape(-1), wpk.swapped, (g, kog, cig), bias, out,
            tiling.pack, tiling.block, tiling.channel_block,
        )  # fmt: skip
    return corr_pixels(buf, layout.cstride, offs, pix, wpk, bias, out, tiling.block, tiling.channel_block)


@njit(fastmath=FASTMATH, cache=True, inline="always")
def pixel_tile_any(inp, base, cstride, cgi, wk, offs, pix, p0, acc, arow, init):
    """The pixel tile as wide as ``wk``'s blocks of output channels: 4, 2 or 1 vectors."""
    vectors = wk.shape[2] * inp.itemsize // 64
    if vectors == 4:
        pixel_tile(inp, base, cstride, cgi, wk, offs, pix, p0, acc, arow, init)
    elif vectors == 2:
        pixel_tile2(inp, base, cstride, cgi, wk, offs, pix, p0, acc, arow, init)
    else:
        pixel_tile1(inp, base, cstride, cgi, wk, offs, pix, p0, acc, arow, init)


@njit(fastmath=FASTMATH, cache=True)
def pixel_accumulator(inp, base, cstride, offs, pix, p0, pn, wk, cblk):
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
            pixel_tile_any(inp, cb, cstride, cn, wkc, offs, pix, p0 + j0, acc, j0, c0)
    return acc


@njit(fastmath=FASTMATH, cache=True)
def _copy_out(acc, p0, pn, out, k0, nk, bias):
    """out[n, k0 + kk, oh, ow] (+ bias) = acc[p - p0, kk] for the pixels p =
    n*OH*OW + oh*OW + ow in [p0, p0 + pn) (out C-contiguous): the bias added
    along the accumulator's rows, then blocks of a vector's lanes squared
    transposed in registers (``transpose_block_exact``), each block's pixels
    inside one image so that a channel's are one run of an output row."""
    kout, per_img = out.shape[1], out.shape[2] * out.shape[3]
    if bias.shape[0] > 0:
        for j in range(pn):
            for kk in range(nk):
                acc[j, kk] += bias[k0 + kk]
    flat = out.reshape(-1)
    src = acc.reshape(-1)
    kbw = acc.shape[1]
    lanes = 64 // acc.itemsize
    for kk0 in range(0, nk, lanes):
        j = 0
        while j < pn:
            n = (p0 + j) // per_img
            q = p0 + j - n * per_img
            run = min(lanes, pn - j, per_img - q)
            d0 = (n * kout + k0 + kk0) * per_img + q
            transpose_block_exact(src, j * kbw + kk0, kbw, run, min(lanes, nk - kk0), flat, d0, per_img)
            j += run


@njit(fastmath=FASTMATH, cache=True)
def _run_task(inp, cstride, offs, pix, wpk, t, npx, pblk, cblk):
    """Task t of a pixel correlation over npx pixels -- (group, block of pblk
    pixels, block of output channels), channel blocks fastest --: (its
    accumulator, group, channel block, first pixel, pixels)."""
    groups, nkb, cgi, _, _ = wpk.shape
    g, bi, kb = split_task(t, nkb, -(-npx // pblk))
    p0 = bi * pblk
    pn = min(pblk, npx - p0)
    return pixel_accumulator(inp, g * cgi * cstride, cstride, offs, pix, p0, pn, wpk[g, kb], cblk), g, kb, p0, pn


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def corr_pixels_packing(inp, cstride, offs, pix, src, swapped, dims, bias, out, kbw, pblk, cblk):
    """``corr_pixels`` with the weights (G, kog, cig, T) read from ``src``
    (``packing.pack_block``'s layouts) and packed by each task for each pass
    of cblk input channels into an L1 buffer, just before its tiles use them."""
    groups, kog, cig = dims
    n_img, kout, oh_n, ow_n = out.shape
    t_n = offs.shape[0]
    nkb = -(-kog // kbw)
    npx = n_img * oh_n * ow_n
    for t in prange(groups * nkb * -(-npx // pblk)):
        g, bi, kb = split_task(t, nkb, -(-npx // pblk))
        p0 = bi * pblk
        pn = min(pblk, npx - p0)
        k0 = kb * kbw
        nk = min(kbw, kog - k0)
        acc = np.empty((-(-pn // _NPIX) * _NPIX, kbw), dtype=inp.dtype)
        wk = np.empty((cblk, t_n, kbw), dtype=inp.dtype)
        for c0 in range(0, cig, cblk):
            cn = min(cblk, cig - c0)
            pack_block(src, swapped, kog, cig, t_n, g, k0, nk, c0, cn, kbw, wk.reshape(-1), 0)
            cb = (g * cig + c0) * cstride
            for j0 in range(0, pn, _NPIX):
                pixel_tile_any(inp, cb, cstride, cn, wk[:cn], offs, pix, p0 + j0, acc, j0, c0)
        _copy_out(acc, p0, pn, out, g * kog + k0, nk, bias)
    return out


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def corr_pixels_rows(inp, cstride, offs, pix, wpk, out, kgo, pblk, cblk):
    """``corr_pixels`` without bias into rows: out[p, g*kgo + k] for pixel p
    (out (pixels, >= G*kgo), rows C-contiguous), the accumulator copied as
    it is (Winograd's GEMMs, whose output transform wants channels
    innermost)."""
    groups, nkb, _, _, kbw = wpk.shape
    npx = out.shape[0]
    for t in prange(groups * nkb * -(-npx // pblk)):
        acc, g, kb, p0, pn = _run_task(inp, cstride, offs, pix, wpk, t, npx, pblk, cblk)
        k0 = g * kgo + kb * kbw
        nk = min(kbw, kgo - kb * kbw)
        for j in range(pn):
            out[p0 + j, k0 : k0 + nk] = acc[j, :nk]
    return out


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def corr_pixels(inp, cstride, offs, pix, wpk, bias, out, pblk, cblk):
    """out (N, Kout, OH, OW) = bias + correlation over a stride-1 standard
    buffer at the pixel offsets ``pix`` (``pixel_offsets``); wpk (G,
    Kout_g/kb, Cin_g, T, kb) with kb the tile's output channels
    (``pack_weights``); bias (Kout,) or (0,); pblk pixels per task (a
    multiple of the tile's pixels), cblk input channels per pass."""
    n_img, kout, oh_n, ow_n = out.shape
    groups, nkb, _, _, kbw = wpk.shape
    kgo = kout // groups
    npx = n_img * oh_n * ow_n
    for t in prange(groups * nkb * -(-npx // pblk)):
        acc, g, kb, p0, pn = _run_task(inp, cstride, offs, pix, wpk, t, npx, pblk, cblk)
        _copy_out(acc, p0, pn, out, g * kgo + kb * kbw, min(kbw, kgo - kb * kbw), bias)
    return out


# --------------------------------------------------------------------------- grad_weight


def grad_weight_pixels(
    gy: np.ndarray,
    buf: np.ndarray,
    layout: Layout,
    offs: np.ndarray,
    groups: int,
    shape: tuple[int, int, int],
    tiling: GradWeightTiling,
    strides: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """grad_weight (K, C/groups, T), in gy's dtype, on the pixel tiles, from gy (N, K,
    OH, OW) and x prepared in a stride-1 ``layout`` (``buf``) with tap offsets
    ``offs``, output pixels ``strides`` apart.

    gw[k, c, t] = sum over output pixels p of gy[p, k] * x[c*cstride +
    offs[t] + pix[p]]: the same tile with the roles turned -- its rows are
    (input channel, tap) pairs, its vector lanes output channels (grad_output
    transposed to pixels x channels), its reduction the output pixels, in
    chunks of ``tiling.segment`` summed in float64 and rounded once.  Exact
    pixels only; parallel over (group, block of output channels, block of
    ``tiling.channel_block`` pairs), each task writing its part of the
    result straight into grad_weight."""
    k, cg, ntap = shape
    n, _, oh, ow = gy.shape
    kb = PIXEL_TILE[1] * 64 // gy.dtype.itemsize
    kg = k // groups
    gyt_shape = (groups, -(-kg // kb), n * oh * ow, kb)
    gyt = _alloc.scratch("pixels.gyt", int(np.prod(gyt_shape)), gy.dtype).reshape(gyt_shape)
    _transpose_grad_output(np.ascontiguousarray(gy), gyt)
    pairs = whole_tiles(pair_offsets(layout.cstride, offs, cg))
    pix = pixel_offsets(layout, (n, oh, ow), strides)[: n * oh * ow]
    gw = _alloc.empty((k, cg * ntap), gy.dtype)
    _gw_pixels(buf, cg * layout.cstride, pairs, pix, gyt, tiling.segment, tiling.channel_block, gw)
    return gw.reshape(shape)


@njit(parallel=True, cache=True)
def _transpose_grad_output(gy, gyt):
    """gyt[g, kb, p, i] = gy[n, g*kg + kb*KB + i, oh, ow] for the output pixel p
    = (n, oh, ow); 0 past the group's channels.  gy C-contiguous; blocks of
    a vector's lanes squared transposed in registers (``transpose_block``)."""
    n_img, kout, oh_n, ow_n = gy.shape
    groups, nkb, _, kbw = gyt.shape
    kg = kout // groups
    per_img = oh_n * ow_n
    lanes = 64 // gy.itemsize
    src = gy.reshape(-1)
    dst = gyt.reshape(-1)
    for u in prange(groups * nkb * n_img):
        g, kb, n = split_task(u, n_img, nkb)
        k0 = g * kg + kb * kbw
        nk = min(kbw, (g + 1) * kg - k0)
        d0 = ((g * nkb + kb) * n_img * per_img + n * per_img) * kbw
        for i0 in range(0, kbw, lanes):
            s0 = (n * kout + k0 + i0) * per_img
            for q0 in range(0, per_img, lanes):
                transpose_block(src, s0 + q0, per_img, nk - i0, min(lanes, per_img - q0), dst, d0 + q0 * kbw + i0, kbw)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _gw_pixels(inp, gstride, pairs, pix, gyt, pchunk, pairs_per_task, gw):
    """gw[g*Kg + k, pair] (K, pairs of a group) = the (pair, output channel)
    sums over all output pixels (see ``grad_weight_pixels``); group g's
    input at g*gstride.  Tasks: (group, channel block, block of
    pairs_per_task pairs); each sums its pairs' tiles over chunks of pchunk
    pixels in the working precision, adds each chunk into float64, and
    writes its block of gw."""
    groups, nkb, npx, kbw = gyt.shape
    npair = pairs.shape[0]
    kg, real_pairs = gw.shape[0] // groups, gw.shape[1]
    per_task = -(-pairs_per_task // _NPIX) * _NPIX
    nblk = -(-npair // per_task)
    for t in prange(groups * nkb * nblk):
        g, kb, bi = split_task(t, nblk, nkb)
        j0 = bi * per_task
        jn = min(per_task, npair - j0)
        acc = np.empty((jn, kbw), dtype=inp.dtype)
        # one chunk: its sum is the result; several: summed in float64
        tot = np.zeros((jn if npx > pchunk else 0, kbw), dtype=np.float64)
        for p0 in range(0, npx, pchunk):
            pn = min(pchunk, npx - p0)
            wk = gyt[g, kb, p0 : p0 + pn].reshape((1, pn, kbw))
            offs = pix[p0 : p0 + pn]
            for j in range(0, jn, _NPIX):
                pixel_tile(inp, g * gstride, 0, 1, wk, offs, pairs, j0 + j, acc, j, 0)
            if tot.shape[0]:
                for j in range(jn):
                    for i in range(kbw):
                        tot[j, i] += acc[j, i]
        if tot.shape[0]:
            for j in range(jn):
                for i in range(kbw):
                    acc[j, i] = tot[j, i]
        _pairs_to_rows(acc, min(jn, real_pairs - j0), min(kbw, kg - kb * kbw), gw, g * kg + kb * kbw, j0)
    return gw


@njit(fastmath=FASTMATH, cache=True)
def _pairs_to_rows(acc, jn, nk, gw, k0, j0):
    """gw[k0 + i, j0 + j] = acc[j, i] for j < jn, i < nk (gw C-contiguous):
    blocks of a vector's lanes squared transposed in registers, stored
    straight into grad_weight's rows."""
    vw = 64 // acc.itemsize
    kbw, npair = acc.shape[1], gw.shape[1]
    src = acc.reshape(-1)
    dst = gw.reshape(-1)
    for i0 in range(0, nk, vw):
        for j in range(0, jn, vw):
            transpose_block_exact(
                src, j * kbw + i0, kbw, min(vw, jn - j), min(vw, nk - i0), dst, (k0 + i0) * npair + j0 + j, npair
            )


# --------------------------------------------------------------------------- grad_x by taps


def grad_x_taps(
    gy: np.ndarray,
    weight: np.ndarray,
    gx: np.ndarray,
    strides: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    tiling: TapTiling,
) -> np.ndarray:
    """gx (N, C, H, W) = the transposed convolution of gy (N, K, OH, OW) with
    weight (K, C/groups, KH, KW) at these strides, (top, left) padding and
    dilation.

    Only the products PyTorch computes: for every grad_output pixel p and tap
    t, Z[p, (t, c)] = sum over k of gy[n, k, p] * w[k, c, t] -- a GEMM on the
    pixel tiles with gy read in place (its channels the reduction, its pixels
    the tile rows) and the (tap, input channel) pairs in the lanes, ``tiling.
    channels`` channels per tap side by side -- and Z's row segment of tap t,
    one vector of channels, is added into grad_x's padded pixel p*stride + t
    in a channels-innermost tile of grad_x.  A full correlation instead sums
    the zeros around a small grad_output too (13x13 grad_x from 11x11: 40 %
    more products), and needs finite weights to stay exact.  Parallel over
    (group, block of ``tiling.images`` images, block of input channels): a
    task owns its grad_x planes; small images go several to a task, so few
    tile rows are spent on rounding pixels up to whole tiles."""
    (sh, sw), (ph, pw), (dh, dw) = strides, padding, dilation
    k, cg, kh, kw = weight.shape
    n, _, oh, ow = gy.shape
    wpk = _pack_taps(weight.reshape(groups, k // groups, cg, kh * kw), tiling)
    hp, wp = taps_tile_extent(gx.shape[2:], (oh, ow), (kh, kw), strides, padding, dilation)
    m = tiling.images
    geo = (kh, kw, sh, sw, ph, pw, dh, dw)
    pix, pix_last = _block_pixels(m, k, oh * ow), _block_pixels((n - 1) % m + 1, k, oh * ow)
    return _gx_taps(np.ascontiguousarray(gy), wpk, gx, geo, tiling.channels, m, hp, wp, pix, pix_last)


@functools.lru_cache(maxsize=64)
def _block_pixels(images: int, k: int, npx: int) -> np.ndarray:
    """Offsets in gy (N, K, OH, OW) of the pixels of ``images`` consecutive
    images from the first one's, in whole tiles (the last one repeated);
    read-only, cached (a training step asks for the same ones every call)."""
    per_image = np.arange(npx, dtype=np.int64)
    pix = whole_tiles((np.arange(images, dtype=np.int64)[:, None] * (k * npx) + per_image).ravel())
    pix.flags.writeable = False
    return pix


def _pack_taps(w4: np.ndarray, tiling: TapTiling) -> np.ndarray:
    """(G, Kg, Cg, T) -> (G, channel blocks, passes, Kg, 1, lanes): lane t*cw +
    c of a block's (tap, channel) row holds w[g, k, block*cw + c, t] (zero
    past Cg and past the last tap), ``tiling.lanes`` lanes per pass."""
    g, kg, cg, t = w4.shape
    cw, lanes = tiling.channels, tiling.lanes
    nb = -(-cg // cw)
    passes = -(-(t * cw) // lanes)
    rows = np.zeros((g, nb, kg, passes * lanes), dtype=w4.dtype)
    for b in range(nb):
        c0, c1 = b * cw, min(cg, (b + 1) * cw)
        view = rows[:, b, :, : t * cw].reshape(g, kg, t, cw)
        view[..., : c1 - c0] = w4[:, :, c0:c1, :].transpose(0, 1, 3, 2)
    return np.ascontiguousarray(rows.reshape(g, nb, kg, passes, 1, lanes).transpose(0, 1, 3, 2, 4, 5))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _gx_taps(gy, wpk, gx, geo, cw, m, hp, wp, pix, pix_last):
    """``grad_x_taps``'s kernel.  A task (group, block of m images, channel
    block) runs every pass of ``lanes`` (tap, channel) lanes over its images'
    pixels (``pix``; ``pix_last`` for a shorter last block), adds each tap's
    cw channels (a divisor of lanes, a multiple of the vector) into its
    image's ``tile`` (hp x wp padded pixels x cw channels, zero first), then
    turns each tile's inner H x W into grad_x's planes by register-transposed
    blocks."""
    kh, kw, sh, sw, ph, pw, dh, dw = geo
    n_img, k_n, oh_n, ow_n = gy.shape
    c_n, h_n, w_n = gx.shape[1], gx.shape[2], gx.shape[3]
    groups, nb, passes, kg, _, lanes = wpk.shape
    cg = c_n // groups
    ntap = kh * kw
    vw = 64 // gy.itemsize
    npx = oh_n * ow_n
    per_tile = hp * wp * cw
    nblk = -(-n_img // m)
    src = gy.reshape(-1)
    dst = gx.reshape(-1)
    tap0 = np.zeros(1, dtype=np.int64)
    for u in prange(groups * nblk * nb):
        g, bi, b = split_task(u, nb, nblk)
        n0 = bi * m
        mi = min(m, n_img - n0)
        px = pix if mi == m else pix_last
        pn = mi * npx
        acc = np.empty((px.shape[0], lanes), dtype=gy.dtype)
        af = acc.reshape(-1)
        tile = np.zeros(mi * per_tile, dtype=gy.dtype)
        base = (n0 * k_n + g * kg) * npx
        for ps in range(passes):
            for j0 in range(0, pn, _NPIX):
                pixel_tile(src, base, npx, kg, wpk[g, b, ps], tap0, px, j0, acc, j0, 0)
            for t in range(ps * lanes // cw, min(ntap, (ps + 1) * lanes // cw)):
                r = t // kw
                s = t - r * kw
                lane = t * cw - ps * lanes
                for i in range(mi):
                    for oy in range(oh_n):
                        row = i * per_tile + ((oy * sh + r * dh) * wp + s * dw) * cw
                        for ox in range(ow_n):
                            a = ((i * oh_n + oy) * ow_n + ox) * lanes + lane
                            d = row + ox * sw * cw
                            for v in range(0, cw, vw):
                                add_vector(tile, d + v, af, a + v)
        nc = min(cw, cg - b * cw)
        for i in range(mi):
            d0 = (((n0 + i) * c_n + g * cg + b * cw) * h_n) * w_n
            _tile_to_planes(tile[i * per_tile : (i + 1) * per_tile], wp, cw, ph, pw, dst, d0, nc, h_n, w_n)
    return gx


@njit(fastmath=FASTMATH, cache=True)
def _tile_to_planes(tile, wp, cw, ph, pw, dst, d0, nc, h_n, w_n):
    """dst[d0 + (c*H + h)*W + x] = tile[((h + ph)*wp + pw + x)*cw + c] for c <
    nc: blocks of a vector's lanes squared, transposed in registers and
    stored straight into each channel's row segment (masked stores)."""
    vw = 64 // tile.itemsize
    plane = h_n * w_n
    for c0 in range(0, nc, vw):
        ncc = min(vw, nc - c0)
        for h in range(h_n):
            for x0 in range(0, w_n, vw):
                nx = min(vw, w_n - x0)
                src0 = ((h + ph) * wp + pw + x0) * cw + c0
                transpose_block_exact(tile, src0, cw, nx, ncc, dst, d0 + (c0 * h_n + h) * w_n + x0, plane)
