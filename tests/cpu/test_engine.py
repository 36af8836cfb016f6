"""The CPU engine as a unit: layouts, prepared buffers, the register-tile
correlation and the grad_weight dot products against the float64 reference,
with tilings chosen here (not by the planner), on poisoned buffers."""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers import assert_close

from fastconv import _alloc, reference
from fastconv._params import conv2d_params
from fastconv.cpu.engine import (
    correlate,
    correlate_pixels,
    grad_weight_pixels,
    grad_weight_contiguous,
    grad_weight_per_image,
    grad_weight_rows,
    pack_weights,
    prepare_batch_inner,
    prepare_standard,
)
from fastconv.cpu.layout import (
    PIXEL_TILE,
    CorrTiling,
    GradWeightTiling,
    PixelTiling,
    batch_inner_layout,
    grad_output_layout,
    odd_lines,
    same_buffer,
    standard_layout,
    tap_offsets,
)

DTYPES = [np.float32, np.float64]
# (output channels, vectors) of each tile the engine has, and the 1-channel loop
TILES = [(8, 3), (4, 4), (1, 0)]


def test_odd_lines():
    for n in range(1, 200):
        for itemsize in (4, 8):
            r = odd_lines(n, itemsize)
            line = 64 // itemsize
            assert r >= n and r % line == 0 and (r // line) % 2 == 1 and r - n < 2 * line


def test_tap_offsets_forms():
    # standard stride 1: r*dh*pitch + s*dw
    assert tap_offsets(2, 3, 2, 1, 10).tolist() == [0, 1, 2, 20, 21, 22]
    # mirrored taps (grad_x) from an origin
    assert tap_offsets(2, 2, -1, -1, 10, origin=11).tolist() == [11, 10, 1, 0]
    # batch-inner: column step N
    assert tap_offsets(1, 3, 1, 2, 40, step=4).tolist() == [0, 8, 16]
    # column matrix: tap t at t*ld
    assert tap_offsets(2, 3, 1, 1, 3 * 7, step=7).tolist() == [7 * t for t in range(6)]
    # polyphase stride 2: tap 1 is in phase 1 (phase_stride apart), tap 2 one column on in phase 0
    assert tap_offsets(1, 3, 1, 1, 10, strides=(1, 2), phase_stride=100).tolist() == [0, 100, 1]


def test_compact_layout_is_the_plain_one_without_shared_padding():
    plain = standard_layout((2, 3, 9, 9), (0, 0, 0, 0), 4)
    compact = standard_layout((2, 3, 9, 9), (0, 0, 0, 0), 4, rows_min=7, pitch_min=7, compact=True)
    assert same_buffer(plain, compact)
    padded = standard_layout((2, 3, 9, 9), (1, 1, 1, 1), 4)
    compact1 = standard_layout((2, 3, 9, 9), (1, 1, 1, 1), 4, rows_min=9, pitch_min=9, compact=True)
    assert not same_buffer(padded, compact1) and compact1.plane < padded.plane


def _problem(rng, dtype, shape, opts):
    n, c, h, w, k, kh, kw = shape
    groups = opts.get("groups", 1)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c // groups, kh, kw)).astype(dtype)
    return conv2d_params(x.shape, wt.shape, None, **opts), x, wt


SHAPES = {
    "k8": ((3, 4, 7, 9, 8, 3, 3), {"padding": 1}),
    "k5_groups": ((2, 4, 6, 8, 10, 3, 2), {"groups": 2, "dilation": (1, 2)}),
    "k2_depthwise": ((2, 3, 7, 7, 6, 3, 3), {"groups": 3, "padding": 2}),
    "deep_c40": ((2, 40, 5, 6, 9, 3, 3), {}),
}
# grad_weight only: the flattened (channel, tap) pairs with no 3-tap rows (1x1:
# 3 input channels per tile; 5x5 with 5 channels: 125 pairs, 2 left over), more
# pairs than a pair block, output channels in 3 groups of 7 (quads + singles),
# and a strided (polyphase) layout
GW_SHAPES = {
    **SHAPES,
    "1x1_k11": ((3, 7, 6, 5, 11, 1, 1), {}),
    "5x5_c5": ((2, 5, 9, 8, 6, 5, 5), {"padding": 1}),
    "pairs_c20_groups": ((2, 60, 6, 6, 21, 3, 3), {"groups": 3}),
    "stride2": ((3, 6, 9, 10, 9, 3, 3), {"stride": 2, "padding": 1}),
}


# the register tiles serve groups of >= 4 output channels, the 1-channel loop smaller ones
TILE_CASES = [(case, tile) for case in SHAPES for tile in TILES
              if (tile[0] == 1) == (SHAPES[case][0][4] // SHAPES[case][1].get("groups", 1) < 4)]


@pytest.mark.parametrize("case, tile", TILE_CASES, ids=[f"{c}-{t[0]}x{t[1]}" for c, t in TILE_CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_correlate_standard(dtype, case, tile, rng):
    """Every tile, small blocks and channel blocks, contiguous and per-image tiles."""
    p, x, wt = _problem(rng, dtype, *SHAPES[case])
    isz = np.dtype(dtype).itemsize
    lay = standard_layout(p.x_shape, (p.ph, p.pw, p.ph_end, p.pw_end), isz, rows_min=p.oh, pitch_min=p.ow)
    xp = prepare_standard(x, lay)
    offs = tap_offsets(p.kh, p.kw, p.dh, p.dw, lay.pitch, phase_stride=lay.phase_stride)
    w4 = wt.reshape(p.groups, p.kg, p.cg, p.kh * p.kw)
    want = reference.conv2d(x, wt, **SHAPES[case][1])
    tw = (tile[1] or 4) * 64 // isz
    per_img = -(-((p.oh - 1) * lay.pitch + p.ow) // tw)
    for tiling in (CorrTiling(*tile, 64, 3), CorrTiling(*tile, 1024, 32),
                   CorrTiling(*tile, lay.plane, 5, per_img if tile[0] > 1 else 0)):
        y = _alloc.empty(p.y_shape, dtype)
        correlate(xp.buf, lay, offs, pack_weights(w4, tiling), np.zeros(0, dtype), y, tiling)
        assert_close(y, want, dtype, f"y {tiling}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_correlate_batch_inner_with_bias(dtype, rng):
    p, x, wt = _problem(rng, dtype, (9, 5, 5, 5, 12, 3, 3), {"padding": (1, 0)})
    b = rng.standard_normal(p.k).astype(dtype)
    lay = batch_inner_layout(p.x_shape, p.h + 2 * p.ph, p.w + 2 * p.pw, np.dtype(dtype).itemsize, top=p.ph, left=p.pw)
    xb = prepare_batch_inner(x, lay)
    offs = tap_offsets(p.kh, p.kw, p.dh, p.dw, lay.pitch, step=lay.step)
    tiling = CorrTiling(8, 3, 128, 2)
    y = _alloc.empty(p.y_shape, dtype)
    correlate(xb.buf, lay, offs, pack_weights(wt.reshape(1, p.k, p.c, 9), tiling), b, y, tiling)
    assert_close(y, reference.conv2d(x, wt, b, padding=(1, 0)), dtype, "y")


# (n, c, h, w, k, kh, kw, opts): the pixel tiles at every stride, dilation and padding, output
# channels of a group a whole tile, a tile and a remainder, or fewer than a tile; pixel counts
# that leave a partial last tile
PIXEL_SHAPES = {
    "pad1": ((3, 5, 9, 8, 64, 3, 3), {"padding": 1}),
    "k70_tail": ((2, 6, 7, 9, 70, 3, 3), {"padding": (1, 0)}),
    "stride2_dil": ((2, 4, 11, 10, 40, 3, 2), {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)}),
    "groups2": ((2, 6, 8, 7, 130, 2, 3), {"groups": 2, "stride": 3}),
    "groups2_dil": ((2, 6, 8, 7, 130, 2, 3), {"groups": 2, "dilation": (2, 1), "padding": 1}),
    "1x1": ((3, 9, 5, 4, 33, 1, 1), {}),
}


# the batch-inner layout is a stride-1 layout of direct's only
PIXEL_CASES = [(case, kind) for case in PIXEL_SHAPES for kind in ("standard", "batch-inner")
               if kind == "standard" or "stride" not in PIXEL_SHAPES[case][1]]


@pytest.mark.parametrize("case, layout_kind", PIXEL_CASES, ids=[f"{c}-{k}" for c, k in PIXEL_CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_correlate_pixels(dtype, case, layout_kind, rng):
    """The pixel tiles over a stride-1 prepared buffer (standard or batch-inner),
    small and large pixel blocks and channel blocks, with bias, into a poisoned
    output: against the reference."""
    shape, opts = PIXEL_SHAPES[case]
    p, x, wt = _problem(rng, dtype, shape, opts)
    b = rng.standard_normal(p.k).astype(dtype)
    isz = np.dtype(dtype).itemsize
    pads = (p.ph, p.pw, p.ph_end, p.pw_end)
    if layout_kind == "standard":
        lay = standard_layout(p.x_shape, pads, isz, compact=True)
        xp = prepare_standard(x, lay)
    else:
        lay = batch_inner_layout(p.x_shape, p.h + p.ph + p.ph_end, p.w + p.pw + p.pw_end, isz, top=p.ph, left=p.pw)
        xp = prepare_batch_inner(x, lay)
    offs = tap_offsets(p.kh, p.kw, p.dh, p.dw, lay.pitch, step=lay.step)
    npix, nv = PIXEL_TILE
    want = reference.conv2d(x, wt, b, **opts)
    for block, cblk in ((npix, 1), (4 * npix, 3), (16 * npix, 64)):
        tiling = PixelTiling(npix, nv, nv * 64 // isz, block, cblk)
        wpk = pack_weights(wt.reshape(p.groups, p.kg, p.cg, p.kh * p.kw), tiling)
        y = _alloc.empty(p.y_shape, dtype)
        correlate_pixels(xp.buf, lay, offs, wpk, b, y, tiling, (p.sh, p.sw))
        assert_close(y, want, dtype, f"y {tiling}")


GW_PIXEL_CASES = [(case, kind) for case, kind in PIXEL_CASES if "stride" not in PIXEL_SHAPES[case][1]]


@pytest.mark.parametrize("case, layout_kind", GW_PIXEL_CASES, ids=[f"{c}-{k}" for c, k in GW_PIXEL_CASES])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_grad_weight_pixels(dtype, case, layout_kind, rng):
    """grad_weight on the pixel tiles over a stride-1 prepared x (standard or
    batch-inner): pixel chunks of 7 and 512, pair blocks of 1, 12 and 48,
    against the reference."""
    shape, opts = PIXEL_SHAPES[case]
    p, x, wt = _problem(rng, dtype, shape, opts)
    gy = rng.standard_normal(p.y_shape).astype(dtype)
    want = reference.conv2d_backward(gy, x, wt, **opts)[1]
    isz = np.dtype(dtype).itemsize
    if layout_kind == "standard":
        lay = standard_layout(p.x_shape, (p.ph, p.pw, p.ph_end, p.pw_end), isz)
        xp = prepare_standard(x, lay)
    else:
        lay = batch_inner_layout(p.x_shape, p.h + p.ph + p.ph_end, p.w + p.pw + p.pw_end, isz, top=p.ph, left=p.pw)
        xp = prepare_batch_inner(x, lay)
    offs = tap_offsets(p.kh, p.kw, p.dh, p.dw, lay.pitch, step=lay.step)
    for chunk, pairs in ((7, 1), (512, 12), (512, 48)):
        got = grad_weight_pixels(gy, xp.buf, lay, offs, p.groups, (p.k, p.cg, p.kh * p.kw),
                                 GradWeightTiling("pixels", chunk, 2, 0, pairs))
        assert_close(got.reshape(p.weight_shape), want, dtype, f"grad_weight, chunks of {chunk}, {pairs} pairs")


@pytest.mark.parametrize("case", list(GW_SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_grad_weight_walks(dtype, case, rng):
    """The three ways through Q give the reference's grad_weight and, for exact
    rows, grad_bias; small segments and odd chunk counts included; the first
    two also parallel over blocks of output channels (blocks of 4 and of 8,
    the last one short where the group's channels are not a multiple)."""
    shape, opts = GW_SHAPES[case]
    p, x, wt = _problem(rng, dtype, shape, opts)
    isz = np.dtype(dtype).itemsize
    gy = rng.standard_normal(p.y_shape).astype(dtype)
    _, want_gw, want_gb = reference.conv2d_backward(gy, x, wt, **opts)
    lay = standard_layout(p.x_shape, (p.ph, p.pw, p.ph_end, p.pw_end), isz, strides=(p.sh, p.sw))
    xp = prepare_standard(x, lay)
    gyf = prepare_standard(gy, grad_output_layout(lay, p.y_shape, isz, 0))
    offs = tap_offsets(p.kh, p.kw, p.dh, p.dw, lay.pitch, strides=(p.sh, p.sw), phase_stride=lay.phase_stride)
    shape3 = (p.k, p.cg, p.kh * p.kw)
    qn = (p.n - 1) * lay.plane + (p.oh - 1) * lay.pitch + p.ow
    span = -(-((p.oh - 1) * lay.pitch + p.ow) // 16) * 16
    for threads, kblk in ((1, 0), (3, 0), (2, 4), (3, 8)):
        got = grad_weight_contiguous(gyf.buf, 0, gyf.layout.cstride, xp.buf, lay.cstride, offs, qn, p.groups, shape3,
                                     GradWeightTiling("contiguous", 13, threads, 0, kblk))
        assert_close(got.reshape(p.weight_shape), want_gw, dtype, f"contiguous, channel block {kblk}")
        if span <= lay.plane:
            got = grad_weight_per_image(gyf.buf, 0, gyf.layout.cstride, xp.buf, lay.cstride, offs, lay.plane, p.n,
                                        p.groups, shape3, GradWeightTiling("per-image", span, threads, span, kblk))
            assert_close(got.reshape(p.weight_shape), want_gw, dtype, f"per-image, channel block {kblk}")
        got, gsum = grad_weight_rows(gy.reshape(-1), (0, p.oh * p.ow, p.k * p.oh * p.ow, p.ow), xp.buf, lay.cstride,
                                     offs, lay.plane, lay.pitch, (p.n, p.oh, p.ow), p.groups, shape3,
                                     GradWeightTiling("rows", 0, threads))
        assert_close(got.reshape(p.weight_shape), want_gw, dtype, "rows")
        assert_close(gsum, want_gb, dtype, "rows: grad_bias")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("nrows, ncols", [(16, 16), (5, 16), (16, 3), (1, 1), (7, 9)])
def test_transpose_block_exact_writes_only_its_lanes(dtype, nrows, ncols, rng):
    """dst[d0 + j*dstride + i] = src[s0 + i*sstride + j] for i < nrows, j <
    ncols (clipped to a vector's lanes); every other destination element keeps
    its value."""
    from numba import njit

    from fastconv.cpu.engine.transforms import transpose_block_exact

    @njit
    def run(src, s0, ss, nr, nc, dst, d0, ds):
        transpose_block_exact(src, s0, ss, nr, nc, dst, d0, ds)

    lanes = 64 // np.dtype(dtype).itemsize
    nr, nc = min(nrows, lanes), min(ncols, lanes)
    sstride, dstride = lanes + 3, lanes + 5
    src = rng.standard_normal(2 + lanes * sstride).astype(dtype)
    dst = np.full(3 + lanes * dstride + lanes, -7.0, dtype=dtype)
    run(src, 2, sstride, nr, nc, dst, 3, dstride)
    want = np.full_like(dst, -7.0)
    for j in range(nc):
        for i in range(nr):
            want[3 + j * dstride + i] = src[2 + i * sstride + j]
    np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kt", [4, 8, 16, 32, 64])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "view"])
def test_pack_weights_by(dtype, kt, transposed, rng):
    """(G, Kout_g, Cin_g, T) -> (G, blocks, Cin_g, T, kt), zeros past Kout_g:
    the register-transposed path (C-contiguous weights, whole vectors per
    block row) and the plain loop (views, narrow blocks) against NumPy,
    into 64-byte aligned memory."""
    from fastconv.cpu.engine.correlate import pack_weights_by

    g, kog, cig, t = 2, 70, 19, 9
    w4 = rng.standard_normal((g, cig, kog, t) if transposed else (g, kog, cig, t)).astype(dtype)
    if transposed:
        w4 = w4.transpose(0, 2, 1, 3)
    nkb = -(-kog // kt)
    want = np.zeros((g, nkb * kt, cig, t), dtype)
    want[:, :kog] = w4
    want = want.reshape(g, nkb, kt, cig, t).transpose(0, 1, 3, 4, 2)
    got = pack_weights_by(w4, kt)
    np.testing.assert_array_equal(got, want)
    assert got.ctypes.data % 64 == 0
