"""Winograd convolution F(m×m, 3×3) on the CPU (m = 4 or 2; stride 1, dilation 1).

Lavin & Gray (2016): an m×m output tile of a 3×3 correlation is
``A^T [(G g G^T) ⊙ (B^T d B)] A`` for the (m+2)×(m+2) input patch d, so the
α² = (m+2)² transformed points are independent: per point ξ a GEMM
``M[ξ] (T×K) = V[ξ] (T×C) · U[ξ] (C×K)`` over the T tiles.

Every step works on vectors of channels (``engine.transforms``): x is copied
channels-innermost into a zero-padded buffer (``_channels_last``), each
tile's α² transformed points are written as one row of V (tile, ξ, c)
(``_input_transform``), all α²·groups GEMMs run as ONE call of the pixel
tiles with the tiles as "pixels" and the (ξ, group) pairs as groups, writing
M as (tile, ξ, k) rows (``corr_pixels_rows``), and ``_output_transform``
writes A^T M A + bias straight into NCHW.  The weights are transformed into
the pixel tiles' packed layout (``_packed_transformed_weights``).

Tiles are processed in chunks of ``plan.cpu.winograd.tiles_per_chunk`` (V
and M of a chunk within the plan's workspace bound); the workspaces are the
calling thread's scratch buffers (``_alloc.scratch``).  The channels-last
copy reads x at any top/left offset (negative = a crop), so grad_x -- a
full correlation of grad_output with the rotated kernel read as (C, K) -- is
the same code with padding 2 - ph.  grad_weight and grad_bias come from the
direct path (its plan in ``plan.cpu.winograd.grad_weight_plan``).

NaN/Inf: the transforms multiply every element of a patch by every
coefficient (zeros included), so a non-finite value in a tile's input patch
makes every output of that tile (all channels) NaN, and a non-finite weight
makes its output channel NaN.  Where PyTorch has a NaN or Inf this path has
NaN (never a finite value); it may also have NaN where PyTorch has ±Inf or a
finite value next to the non-finite input.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from numba import njit, prange

from .. import _alloc
from .common import FASTMATH
from .engine.packing import pack_block
from .engine.pixels import corr_pixels_rows, whole_tiles
from .engine.transforms import (
    input_tile2,
    input_tile4,
    output_tile_nchw2,
    output_tile_nchw4,
    transpose_block,
    weight_tile2,
    weight_tile4,
)
from .layout import PixelTiling

if TYPE_CHECKING:
    from .._params import Conv2dParams
    from .._plan import ConvPlan

__all__ = ["backward", "forward", "winograd_correlate"]

_ZERO_TAP = np.zeros(1, np.int64)


@njit(parallel=True, cache=True)
def _transform_weights(w4, m, rotated, out):
    """U = (G g G^T)[ξ] of the kernels w4 (G, Kout_g, Cin_g, 9), C-contiguous,
    in the engine's packed layout out (α²*G, blocks of kt lanes, depth, 1,
    kt): out[ξ*G + g, kb, d, 0, :] for lanes kb*kt.. (zero past the last, so
    U is zero there), a vector of lanes at a time.  The lanes are the output
    channels and the depth the input channels; ``rotated`` (grad_x's full
    correlation): the lanes are the input channels, the depth the output
    channels, and each kernel is rotated by 180°.  Each block's kernels are
    first turned lanes innermost for ``_WEIGHT_CHANNELS`` depth channels at a
    time into a buffer that stays in L1 (the engine's ``pack_block``, without
    writing and reading a packed copy of the whole weight).  Parallel over
    (group, block of lanes)."""
    groups, kog, cig, _ = w4.shape
    nb, depth, kt = out.shape[1], out.shape[2], out.shape[4]
    # rotated: the correlation's weight is w4's swapped view (lanes = Cin_g, depth = Kout_g)
    lanes_n = cig if rotated else kog
    src = w4.reshape(-1)
    dst = out.reshape(-1)
    vw = 64 // w4.itemsize
    xs = groups * nb * depth * kt  # one point's packed weights
    first, step = (8 * kt, -kt) if rotated else (0, kt)  # taps read last to first when rotated
    for u in prange(groups * nb):  # u = g*nb + block
        g = u // nb
        l0 = (u - g * nb) * kt
        nl = min(kt, lanes_n - l0)
        blk = np.empty(_WEIGHT_CHANNELS * 9 * kt, w4.dtype)
        for d0 in range(0, depth, _WEIGHT_CHANNELS):
            dn = min(_WEIGHT_CHANNELS, depth - d0)
            pack_block(src, rotated, lanes_n, depth, 9, g, l0, nl, d0, dn, kt, blk, 0)
            for d in range(dn):
                at = (u * depth + d0 + d) * kt
                for ln in range(0, kt, vw):
                    if m == 4:
                        weight_tile4(blk, d * 9 * kt + first + ln, step, dst, at + ln, xs)
                    else:
                        weight_tile2(blk, d * 9 * kt + first + ln, step, dst, at + ln, xs)
    return out


# Input channels per step of the weight transform's packing: 16 x 9 taps x
# 64 lanes of float32 is 36 KiB, within L1 with the transform's output rows.
_WEIGHT_CHANNELS = 16


@njit(fastmath=FASTMATH, inline="always")
def _tile_origin(t, th_n, tw_n, m):
    """(image, first row, first column) of tile t's output."""
    per_img = th_n * tw_n
    n = t // per_img
    r = t - n * per_img
    th = r // tw_n
    return n, th * m, (r - th * tw_n) * m


@njit(parallel=True, cache=True)
def _channels_last(x, n0, top, left, lanes, xp):
    """xp[i, h, w, c] = x[n0 + i, c, h - top, w - left]: images n0.. of x
    (N, C, H, W), C-contiguous, channels innermost, zero outside x and in
    the channels past C (xp's are whole vectors).  Parallel over (image,
    row); blocks of lanes x lanes transposed in registers."""
    cin, h, w = x.shape[1], x.shape[2], x.shape[3]
    nn, hp, wp, cp = xp.shape
    src = x.reshape(-1)
    dst = xp.reshape(-1)
    lo, hi = max(0, left), min(wp, w + left)  # xp columns inside x
    for task in prange(nn * hp):
        i = task // hp
        r = task - i * hp
        row = xp[i, r]
        hs = r - top
        if hs < 0 or hs >= h or hi <= lo:
            row[:, :] = 0
            continue
        row[:lo, :] = 0
        row[hi:, :] = 0
        for c0 in range(0, cin, lanes):
            s0 = ((n0 + i) * cin + c0) * h * w + hs * w - left
            d0 = ((i * hp + r) * wp) * cp + c0
            for j0 in range(lo, hi, lanes):
                transpose_block(src, s0 + j0, h * w, min(lanes, cin - c0), min(lanes, hi - j0), dst, d0 + j0 * cp, cp)
    return xp


@njit(parallel=True, cache=True)
def _input_transform(xp, n0, t0, nt, th_n, tw_n, m, cin, lanes, v, vs):
    """v[j*vs + ξ*C + c] = (B^T d B)[ξ] of channel c of tile t0 + j (j < nt),
    d its α×α patch in xp (``_channels_last`` of images n0..).  Parallel
    over tiles; a tile's channel vectors run last to first, so the lanes a
    last partial vector writes past C (into the next point's first
    channels, or the tile's slack) are overwritten with the right values."""
    hp, wp, cp = xp.shape[1], xp.shape[2], xp.shape[3]
    flat = xp.reshape(-1)
    rs = wp * cp
    nvec = -(-cin // lanes)
    for j in prange(nt):
        n, h0, w0 = _tile_origin(t0 + j, th_n, tw_n, m)
        s0 = ((n - n0) * hp + h0) * rs + w0 * cp
        for cb in range(nvec - 1, -1, -1):
            if m == 4:
                input_tile4(flat, s0 + cb * lanes, rs, cp, v, j * vs + cb * lanes, cin)
            else:
                input_tile2(flat, s0 + cb * lanes, rs, cp, v, j * vs + cb * lanes, cin)
    return v


@njit(parallel=True, cache=True)
def _output_transform(mm, t0, th_n, tw_n, m, kout, lanes, bias, y):
    """y tile t0 + j <- A^T M A + bias for the rows j of mm (tiles, ξ*K + k),
    only the pixels inside y (N, K, OH, OW), C-contiguous; bias padded to
    whole vectors.  Parallel over tiles, a vector of channels at a time."""
    oh, ow = y.shape[2], y.shape[3]
    flat = y.reshape(-1)
    nvec = -(-kout // lanes)
    for j in prange(mm.shape[0]):
        n, h0, w0 = _tile_origin(t0 + j, th_n, tw_n, m)
        hi, wi = min(m, oh - h0), min(m, ow - w0)
        for cb in range(nvec):
            k0 = cb * lanes
            at = ((n * kout + k0) * oh + h0) * ow + w0
            nl = min(lanes, kout - k0)
            if m == 4:
                output_tile_nchw4(mm[j], k0, kout, bias, k0, flat, at, oh * ow, ow, nl, hi, wi)
            else:
                output_tile_nchw2(mm[j], k0, kout, bias, k0, flat, at, oh * ow, ow, nl, hi, wi)
    return y


def _packed_transformed_weights(w: np.ndarray, groups: int, m: int, kt: int, rotated: bool) -> np.ndarray:
    """U = G g G^T of w (Kout, Cin/groups, 3, 3) as the engine's packed weights
    of α²*groups correlation groups: (α²*G, ceil(Kout_g/kt), Cin/G, 1 tap, kt);
    ``rotated``: of the kernels rotated by 180° with in/out channels swapped
    per group, (α²*G, ceil(Cin_g/kt), Kout_g, 1, kt)."""
    kog, cig = w.shape[0] // groups, w.shape[1]
    lanes, depth = (cig, kog) if rotated else (kog, cig)
    shape = ((m + 2) ** 2 * groups, -(-lanes // kt), depth, 1, kt)
    out = _alloc.scratch("winograd.u", int(np.prod(shape)), w.dtype).reshape(shape)
    return _transform_weights(np.ascontiguousarray(w).reshape(groups, kog, cig, 9), m, rotated, out)


def winograd_correlate(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    groups: int,
    top: int,
    left: int,
    out: np.ndarray,
    plan: ConvPlan,
    grad: bool = False,
) -> np.ndarray:
    """out (N, Kout, OH, OW) <- bias + 3×3 correlation of x (N, Cin, H, W) with
    w (Kout, Cin/groups, 3, 3), x read from (-top, -left) with zeros outside;
    ``grad``: out (N, Cin, ...) <- the correlation of x (N, Kout, ...) with w
    rotated by 180°, in/out channels swapped per group (grad_x's full
    correlation of grad_output)."""
    c = plan.cpu
    assert c is not None and c.winograd is not None, "a Winograd CPU plan"
    wp = c.winograd
    m = wp.m
    a2 = (m + 2) ** 2
    lanes = 64 // x.dtype.itemsize
    n, cin = x.shape[0], x.shape[1]
    kout, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    th_n, tw_n = -(-oh // m), -(-ow // m)
    per_img = th_n * tw_n
    total = n * per_img
    tiling = c.grad_input if grad else c.forward
    assert isinstance(tiling, PixelTiling), "Winograd's GEMMs run on the pixel tiles"
    wpk = _packed_transformed_weights(w, groups, m, tiling.pack, grad)
    bias_v = np.zeros(-(-kout // lanes) * lanes, x.dtype)
    if bias is not None:
        bias_v[:kout] = bias
    tc = min(wp.tiles_per_chunk, total)
    vs, ms = a2 * cin + lanes, a2 * kout + lanes  # a tile's row; slack for whole vectors
    v = _alloc.scratch("winograd.v", tc * vs, x.dtype)
    mm_buf = _alloc.scratch("winograd.m", tc * ms, x.dtype)
    hp, wpad, cp = th_n * m + 2, tw_n * m + 2, -(-cin // lanes) * lanes
    xc = np.ascontiguousarray(x)
    for t0 in range(0, total, tc):
        nt = min(tc, total - t0)
        n0, n1 = t0 // per_img, (t0 + nt - 1) // per_img
        xp_shape = (n1 - n0 + 1, hp, wpad, cp)
        xp = _alloc.scratch("winograd.x", int(np.prod(xp_shape)), x.dtype).reshape(xp_shape)
        _channels_last(xc, n0, top, left, lanes, xp)
        _input_transform(xp, n0, t0, nt, th_n, tw_n, m, cin, lanes, v, vs)
        mm = mm_buf[: nt * ms].reshape(nt, ms)
        pix = whole_tiles(np.arange(nt, dtype=np.int64) * vs)
        corr_pixels_rows(v, 1, _ZERO_TAP, pix, wpk, mm, kout // groups, tiling.block, tiling.channel_block)
        _output_transform(mm, t0, th_n, tw_n, m, kout, lanes, bias_v, out)
    return out


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, plan: ConvPlan) -> tuple[np.ndarray, None]:
    """(y (N, K, OH, OW), None: nothing kept for the backward)."""
    p = plan.params
    y = _alloc.empty(p.y_shape, x.dtype)
    sub = _sub_sampled(plan)
    if sub is not None:  # a dilated layer: its sub-sampled grids' undilated convolution
        sp = sub.params
        ys = _grids("y", sp.y_shape, x.dtype)
        winograd_correlate(_to_grids(x, p, sp, p.ph, p.pw, "x"), weight, bias, p.groups, 0, 0, ys, sub)
        return _from_grids(ys, p.dh, p.dw, 0, 0, y), None
    return winograd_correlate(x, weight, bias, p.groups, p.ph, p.pw, y, plan), None


def _sub_sampled(plan: ConvPlan) -> ConvPlan | None:
    c = plan.cpu
    assert c is not None and c.winograd is not None, "a Winograd CPU plan"
    return c.winograd.space_to_batch


def _grids(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A scratch buffer for sub-sampled grids (they never leave the call)."""
    return _alloc.scratch("winograd.grids." + name, int(np.prod(shape)), dtype).reshape(shape)


def _to_grids(a: np.ndarray, p: Conv2dParams, sp: Conv2dParams, top: int, left: int, name: str) -> np.ndarray:
    """a (N, C, H, W) as the dh·dw sub-sampled grids of a dilated layer (``_plan.space_to_batch_params``):
    (dh·dw·N, C, sp.h, sp.w), zeros outside a, in scratch buffer ``name``."""
    out = _grids(name, (sp.n, a.shape[1], sp.h, sp.w), a.dtype)
    return _gather_grids(np.ascontiguousarray(a), p.dh, p.dw, top, left, out)


@njit(inline="always", cache=True)
def _grid_span(phase, off, d, size, count):
    """[lo, hi): the grid positions k < count whose element phase - off + d*k lies in [0, size)."""
    lo = max(0, -(-(off - phase) // d))
    hi = min(count, max(lo, -(-(size + off - phase) // d)))
    return lo, hi


@njit(parallel=True, cache=True)
def _gather_grids(a, dh, dw, top, left, out):
    """out[(pr*dw + pc)*N + n, c, i, j] = a[n, c, pr - top + dh*i, pc - left
    + dw*j], 0 outside a: phase (pr, pc)'s sub-sampled grid.  Parallel over
    (phase, image, channel) planes."""
    n_img, ch, h, w = a.shape
    rows, cols = out.shape[2], out.shape[3]
    for t in prange(out.shape[0] * ch):
        u = t // ch
        c = t - u * ch
        phase = u // n_img
        n = u - phase * n_img
        pr = phase // dw
        pc = phase - pr * dw
        dst = out[u, c]
        src = a[n, c]
        ilo, ihi = _grid_span(pr, top, dh, h, rows)
        jlo, jhi = _grid_span(pc, left, dw, w, cols)
        for i in range(rows):
            drow = dst[i]
            if i < ilo or i >= ihi:
                drow[:] = 0
                continue
            srow = src[pr - top + dh * i]
            drow[:jlo] = 0
            drow[jhi:] = 0
            for j in range(jlo, jhi):
                drow[j] = srow[pc - left + dw * j]
    return out


@njit(parallel=True, cache=True)
def _from_grids(grids, dh, dw, top, left, out):
    """out[n, c, pr - top + dh*i, pc - left + dw*j] = grids[(pr*dw + pc)*N +
    n, c, i, j]: the sub-sampled grids put back (``_gather_grids``' inverse
    where the grids cover out), 0 at the pixels past them (a grad_x pixel no
    output reads).  Every element of out written once; parallel over its
    planes."""
    n_img, ch, h, w = out.shape
    rows, cols = grids.shape[2], grids.shape[3]
    hc, wc = min(h, dh * rows - top), min(w, dw * cols - left)  # the covered rows and columns
    for t in prange(n_img * ch):
        n = t // ch
        c = t - n * ch
        dst = out[n, c]
        for y in range(max(0, hc), h):
            dst[y, :] = 0
        for pr in range(dh):
            ilo, ihi = _grid_span(pr, top, dh, h, rows)
            for i in range(ilo, ihi):
                drow = dst[pr - top + dh * i]
                drow[max(0, wc) :] = 0
                for pc in range(dw):
                    srow = grids[(pr * dw + pc) * n_img + n, c, i]
                    jlo, jhi = _grid_span(pc, left, dw, w, cols)
                    for j in range(jlo, jhi):
                        drow[pc - left + dw * j] = srow[j]
    return out


def _outputs_of(sp: Conv2dParams) -> Conv2dParams:
    """The grids of grad_output: sp's output planes (ceil(OH/dh) × ceil(OW/dw) per phase)."""
    return dataclasses.replace(sp, h=sp.oh, w=sp.ow)


def backward(
    gy: np.ndarray, x: np.ndarray, weight: np.ndarray, plan: ConvPlan, kept: None = None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gx, gw, gb): grad_x by Winograd (a full correlation with the rotated
    kernel), grad_weight and grad_bias by the direct path's plan."""
    p = plan.params
    sub = _sub_sampled(plan)
    if sub is None:
        return _backward(gy, x, weight, plan, _alloc.empty(p.x_shape, x.dtype) if plan.need_input_grad else None)
    # a dilated layer: the sub-sampled grids' backward, grad_x put back in place
    sp = sub.params
    gys = _to_grids(gy, p, _outputs_of(sp), 0, 0, "gy")
    gxs = _grids("gx", sp.x_shape, x.dtype) if plan.need_input_grad else None
    _, gw, gb = _backward(gys, _to_grids(x, p, sp, p.ph, p.pw, "x"), weight, sub, gxs)
    if gxs is None:
        return None, gw, gb
    return _from_grids(gxs, p.dh, p.dw, p.ph, p.pw, _alloc.empty(p.x_shape, x.dtype)), gw, gb


def _backward(
    gy: np.ndarray, x: np.ndarray, weight: np.ndarray, plan: ConvPlan, gx: np.ndarray | None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """``backward`` of an undilated layer, grad_x into ``gx`` (None: not wanted)."""
    from .registry import algorithm_module

    c = plan.cpu_part()
    assert c.winograd is not None, "a Winograd CPU plan"
    wplan = c.winograd.grad_weight_plan
    _, gw, gb = algorithm_module(wplan.backward_algorithm, wplan.backward_layout).backward(gy, x, weight, wplan)
    if gx is None:
        return None, gw, gb
    winograd_correlate(
        gy, weight, None, plan.params.groups, 2 - plan.params.ph, 2 - plan.params.pw, gx, plan, grad=True
    )
    return gx, gw, gb
