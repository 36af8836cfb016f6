"""Register-tile correlation over a prepared buffer (forward, grad_x, im2col GEMM).

out[n, g*kgo + k, oh, ow] = bias + sum over the cgi input channels c of group
g and the taps of w[g, k, c, tap] * buf[(g*cgi + c)*cstride + offs[tap] + Q],
Q the layout's flat index of output pixel (n, oh, ow) (``fastconv.cpu.layout``).

Parallel over tasks (group, block of ``block`` consecutive Q, block of
output channels; channel blocks vary fastest so a thread's consecutive tasks
reuse the input block from L2), so a batch of one still spreads over every
core.  Each task runs the register tiles of ``simd`` over its block (8 output
channels x 3 vectors, or 4 x 4), rounding the block up to a multiple of the
tile width (the buffers have a zeroed tail to read), in passes of
``channel_block`` input channels that add into the task's accumulator (a
tile's inputs and weights stay in L1 for deep C).  Groups with fewer than 4
output channels (depthwise) take a 1-channel loop that LLVM vectorises, so no
work is wasted on padding channels.  Garbage Q are computed and dropped when
the accumulator is copied into ``out``, where the bias is added (in the
batch-inner layout the copy transposes the batch back out of the vector lanes).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ... import _alloc
from ..common import FASTMATH, split_task
from ..layout import TILE_SHAPES, CorrTiling, Layout, PixelTiling
from .packing import Unpacked, pack_block
from .pixels import correlate_pixels
from .simd import corr_tile, corr_tile8

__all__ = ["corr_batch_inner", "corr_standard", "correlate", "pack_weights", "pack_weights_by"]

# vectors of Q per row of each register tile (frozen into the kernels)
_VEC8 = TILE_SHAPES[8][1]
_VEC4 = TILE_SHAPES[4][1]


def pack_weights(w4: np.ndarray, tiling: CorrTiling | PixelTiling) -> np.ndarray | Unpacked:
    """(G, Kout_g, Cin_g, T) -> (G, ceil(Kout_g/kt), Cin_g, T, kt), kt =
    ``tiling.pack``: output channels innermost in blocks of kt (zero-filled
    past Kout_g; those lanes are never stored).  ``w4`` may be any view
    (grad_x packs a transposed one).  Pixel tiles that pack per task
    (``PixelTiling.packs_per_task``) get the weight itself (``Unpacked``)
    where their packing can read it."""
    if isinstance(tiling, PixelTiling) and tiling.packs_per_task:
        raw = _contiguous_source(w4, tiling.pack)
        if raw is not None:
            return raw
    return pack_weights_by(w4, tiling.pack)


def _contiguous_source(w4: np.ndarray, kt: int) -> Unpacked | None:
    """w4 as ``pack_block`` reads it (C-contiguous, or grad_x's transposed
    view of a C-contiguous weight, blocks of whole vectors), else None."""
    if kt * w4.itemsize % 64:
        return None
    if w4.flags.c_contiguous:
        return Unpacked(w4, False)
    swapped = w4.transpose(0, 2, 1, 3)
    return Unpacked(swapped, True) if swapped.flags.c_contiguous else None


def pack_weights_by(w4: np.ndarray, kt: int, buf: np.ndarray | None = None) -> np.ndarray:
    """``pack_weights`` in blocks of kt output channels, into ``buf`` (1-D,
    at least as large) if given, else into a 64-byte aligned array: the
    tiles load whole vectors of it, and one that straddles two cache lines
    costs two loads."""
    g, kog, cig, t = w4.shape
    shape = (g, -(-kog // kt), cig, t, kt)
    size = math.prod(shape)
    out = (_alloc.workspace(size, w4.dtype) if buf is None else buf[:size]).reshape(shape)
    raw = _contiguous_source(w4, kt)
    if raw is None:
        return _pack(w4, out)
    return _pack_whole(raw.src.reshape(-1), raw.swapped, kog, cig, t, out)


@njit(parallel=True, cache=True)
def _pack_whole(src, swapped, kog, cig, t_n, out):
    """``_pack`` of a weight ``pack_block`` reads (C-contiguous or grad_x's
    swapped view), a block of kt output channels per task."""
    g_n, nkb, kt = out.shape[0], out.shape[1], out.shape[4]
    dst = out.reshape(-1)
    for u in prange(g_n * nkb):
        g = u // nkb
        k0 = (u - g * nkb) * kt
        pack_block(src, swapped, kog, cig, t_n, g, k0, min(kt, kog - k0), 0, cig, kt, dst, u * cig * t_n * kt)
    return out


@njit(parallel=True, cache=True)
def _pack(w4, out):
    """out[g, kb, c, t, i] = w4[g, kb*kt + i, c, t], 0 past Kout_g; parallel
    over (group, block of kt output channels): a plain NumPy transpose of a
    large weight runs on one thread and walks it column-wise."""
    g_n, kog, cig, t_n = w4.shape
    nkb, kt = out.shape[1], out.shape[4]
    for u in prange(g_n * nkb):
        g = u // nkb
        kb = u - g * nkb
        k0 = kb * kt
        nk = min(kt, kog - k0)
        for c in range(cig):
            for t in range(t_n):
                for i in range(nk):
                    out[g, kb, c, t, i] = w4[g, k0 + i, c, t]
                for i in range(nk, kt):
                    out[g, kb, c, t, i] = 0
    return out


def correlate(
    buf: np.ndarray,
    layout: Layout,
    offs: np.ndarray,
    wpk: np.ndarray | Unpacked,
    bias: np.ndarray,
    out: np.ndarray,
    tiling: CorrTiling | PixelTiling,
) -> np.ndarray:
    """out (N, Kout, OH, OW) = bias + correlation of ``buf`` (of ``layout``)
    with the packed weights ``wpk`` (``pack_weights``) at tap offsets ``offs``;
    bias (Kout,) or (0,) for none.  Output pixels one Q step apart (a strided
    forward on pixel tiles calls ``correlate_pixels`` with its strides)."""
    if isinstance(tiling, PixelTiling):
        return correlate_pixels(buf, layout, offs, wpk, bias, out, tiling, (1, 1))
    assert isinstance(wpk, np.ndarray), "the Q-lane tiles take weights packed before the call"
    if layout.kind == "batch-inner":
        return corr_batch_inner(
            buf, layout.cstride, offs, layout.pitch, wpk, bias, out, tiling.block, tiling.channel_block
        )
    return corr_standard(
        buf,
        layout.cstride,
        offs,
        layout.plane,
        layout.pitch,
        wpk,
        bias,
        out,
        tiling.block,
        tiling.channel_block,
        tiling.image_tiles,
    )


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
            x0 = inp[o0 : o0 + ln]
            x1 = inp[o1 : o1 + ln]
            x2 = inp[o2 : o2 + ln]
            u0, u1, u2 = wc[j, kk], wc[j + 1, kk], wc[j + 2, kk]
            for q in range(ln):
                a0[q] += u0 * x0[q] + u1 * x1[q] + u2 * x2[q]
            j += 3
        while j < ntap:
            o0 = cb + offs[j]
            x0 = inp[o0 : o0 + ln]
            u0 = wc[j, kk]
            for q in range(ln):
                a0[q] += u0 * x0[q]
            j += 1


@njit(inline="always", cache=True)
def _tiles(ln, tw, plane, img_tiles):
    """(tiles, accumulator length) for a block of ln Q: contiguous tiles, or
    img_tiles per image."""
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
def _block_acc(inp, base, cstride, offs, wk, tiles, nk, ln, cblk, plane, img_tiles):
    """The accumulator (kt, >= ln) of one task: sums over all input channels
    for the block of ln Q from ``base`` on, wk (cgi, T, kt) the task's packed
    weights.  ``tiles``: register tiles (lanes past the group's channels have
    zero weights and are not stored), else the 1-channel loop for nk channels."""
    cgi, _, kt = wk.shape
    if tiles:
        tw = (_VEC8 if kt == 8 else _VEC4) * 64 // inp.itemsize
        ntile, accn = _tiles(ln, tw, plane, img_tiles)
        acc = np.empty((kt, accn), dtype=inp.dtype)
        for c0 in range(0, cgi, cblk):
            cn = min(cblk, cgi - c0)
            wkc = wk[c0 : c0 + cn]
            for ti in range(ntile):
                qq = _tile_start(ti, tw, plane, img_tiles)
                if kt == 8:
                    corr_tile8(inp, base + c0 * cstride + qq, cstride, cn, wkc, offs, acc, qq, c0)
                else:
                    corr_tile(inp, base + c0 * cstride + qq, cstride, cn, wkc, offs, acc, qq, c0)
        return acc
    nv = (ln + 15) // 16
    acc = np.zeros((4, nv * 16), dtype=inp.dtype)
    for kk in range(nk):
        _acc1(inp, base, cstride, cgi, wk, kk, offs, nv, acc[kk])
    return acc


@njit(fastmath=FASTMATH, cache=True)
def _copy_out(acc, q0, ln, plane, pitch, out, k0, nk, bias):
    """out[n, k0 + kk, oh, ow] (+ bias) = acc[kk, Q - q0] for the standard Q =
    n*plane + oh*pitch + ow in [q0, q0 + ln) that are output pixels."""
    n_img, _, oh_n, ow_n = out.shape
    has_bias = bias.shape[0] > 0
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
                k = k0 + kk
                yr = out[n, k, oh, c0 - rs : c1 - rs]
                ar = acc[kk, c0 - q0 : c1 - q0]
                if has_bias:
                    b = bias[k]
                    for i in range(c1 - c0):
                        yr[i] = ar[i] + b
                else:
                    for i in range(c1 - c0):
                        yr[i] = ar[i]


@njit(fastmath=FASTMATH, cache=True)
def _copy_out_bi(acc, q0, ln, nb, wpx, out, k0, nk, bias):
    """out[n, k0 + kk, oh, ow] (+ bias) = acc[kk, Q - q0] for the batch-inner Q
    = (oh*wpx + ow)*nb + n in [q0, q0 + ln) that are output pixels."""
    oh_n, ow_n = out.shape[2], out.shape[3]
    has_bias = bias.shape[0] > 0
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
            ar = acc[kk, a0 + n_lo : a0 + n_hi]
            if has_bias:
                b = bias[k]
                for i in range(n_hi - n_lo):
                    out[n_lo + i, k, oh, ow] = ar[i] + b
            else:
                for i in range(n_hi - n_lo):
                    out[n_lo + i, k, oh, ow] = ar[i]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def corr_standard(inp, cstride, offs, plane, pitch, wpk, bias, out, blk, cblk, img_tiles):
    """out (N, Kout, OH, OW) = bias + correlation of a standard-layout (or
    column) buffer; wpk (G, Kout_g/kt, Cin_g, T, kt); blk Q per task (a
    multiple of 16; with ``img_tiles`` > 0 a multiple of plane)."""
    n_img, kout, oh_n, ow_n = out.shape
    groups, nkb, cgi, _, kt = wpk.shape
    kgo = kout // groups
    qn = (n_img - 1) * plane + (oh_n - 1) * pitch + ow_n
    nblk = (qn + blk - 1) // blk
    for t in prange(groups * nkb * nblk):
        # output-channel blocks vary fastest: consecutive tasks of a thread
        # reuse the same input block from L2
        g, bi, kb = split_task(t, nkb, nblk)
        q0 = bi * blk
        ln = min(blk, qn - q0)
        nk = min(kt, kgo - kb * kt)
        acc = _block_acc(
            inp, g * cgi * cstride + q0, cstride, offs, wpk[g, kb], kt == 8 or kgo >= 4, nk, ln, cblk, plane, img_tiles
        )
        _copy_out(acc, q0, ln, plane, pitch, out, g * kgo + kb * kt, nk, bias)
    return out


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def corr_batch_inner(inp, cstride, offs, pitch, wpk, bias, out, blk, cblk):
    """``corr_standard`` over a batch-inner buffer: out[n, k, oh, ow] at Q =
    (oh*W' + ow)*N + n, pitch = W'*N."""
    n_img, kout, oh_n, ow_n = out.shape
    groups, nkb, cgi, _, kt = wpk.shape
    kgo = kout // groups
    qn = (oh_n - 1) * pitch + ow_n * n_img
    nblk = (qn + blk - 1) // blk
    for t in prange(groups * nkb * nblk):
        g, bi, kb = split_task(t, nkb, nblk)
        q0 = bi * blk
        ln = min(blk, qn - q0)
        nk = min(kt, kgo - kb * kt)
        acc = _block_acc(
            inp, g * cgi * cstride + q0, cstride, offs, wpk[g, kb], kt == 8 or kgo >= 4, nk, ln, cblk, 0, 0
        )
        _copy_out_bi(acc, q0, ln, n_img, pitch // n_img, out, g * kgo + kb * kt, nk, bias)
    return out
