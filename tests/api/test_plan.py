"""fastconv.plan_conv2d / ConvPlan: the choices for a table of shapes, and that
the calls run exactly the plan it returns.

Plans are pure Python (no kernel runs here except in the "executes the plan"
tests), so the table is cheap: each row is a shape whose plan a design
decision documented in fastconv/_plan.py is about.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tests.helpers import assert_close, spy_calls

import fastconv
import fastconv.cpu
from fastconv import reference
from fastconv._plan import COLUMN_WORKSPACE_BYTES, use_batch_inner
from fastconv.cpu.layout import PixelTiling, TapTiling

# name: (x shape, weight shape, options, need_input_grad, expected fields), planned for 2 threads.
# tile: (channels, vectors) of the forward's register tile (1, 0: the 1-channel loop; "pixel", 64:
# the pixel tile of 64 output channels in the lanes, float32); gx: the
# grad_x correlation's tile, or None (scatter, or no grad_x); gw: grad_weight's walk.
PLANS = {
    "mnist_first_layer": ((64, 1, 28, 28), (32, 1, 3, 3), {}, False,
                          {"alg": ("direct", "im2col"), "layout": ("standard", "column"), "tile": (8, 3),
                               "image_tiles": True, "gx": None, "gw": "rows", "in_place": True, "reuse": False}),
    "mnist_first_layer_gx": ((64, 1, 28, 28), (32, 1, 3, 3), {}, True,
                             {"alg": ("direct", "direct"), "layout": ("standard", "standard"), "tile": (8, 3),
                                  "image_tiles": True, "gx": (1, 0), "gw": "contiguous", "in_place": False, "reuse": True}),
    # small planes, unpadded: x read in place by the forward and grad_weight, grad_x by taps (no copies)
    "small_planes_in_place": ((64, 64, 5, 5), (64, 64, 3, 3), {}, True,
                              {"alg": ("direct", "direct"), "layout": ("standard", "standard"), "tile": ("pixel", 64),
                                   "image_tiles": False, "gx": ("taps", 64), "gw": "pixels", "in_place": False, "reuse": True}),
    "13x13_per_image": ((64, 32, 13, 13), (64, 32, 3, 3), {}, True,
                        {"alg": ("direct", "direct"), "layout": ("standard", "standard"), "tile": ("pixel", 64),
                             "image_tiles": False, "gx": ("taps", 32), "gw": "pixels", "in_place": False, "reuse": True}),
    # 8 output channels are too shallow a sum for grad_x by taps: the pixel tiles' correlation
    "small_planes_shallow": ((64, 64, 5, 5), (8, 64, 3, 3), {}, True,
                             {"alg": ("direct", "direct"), "layout": ("batch-inner", "batch-inner"),
                                  "tile": (8, 3), "image_tiles": False, "gx": ("pixel", 64), "gw": "contiguous",
                                  "in_place": False, "reuse": True}),
    # the direct path's choices on shapes where auto runs Winograd (the entry after these)
    "deep_pad1": ((8, 256, 14, 14), (256, 256, 3, 3), {"padding": 1, "algorithm": "direct"}, True,
                  {"alg": ("direct", "direct"), "layout": ("standard", "standard"), "tile": ("pixel", 64),
                       "image_tiles": False, "gx": ("pixel", 64), "gw": "pixels", "in_place": False, "reuse": False}),
    "large_planes": ((8, 64, 56, 56), (64, 64, 3, 3), {"padding": 1, "algorithm": "direct"}, True,
                     {"alg": ("direct", "direct"), "layout": ("standard", "standard"), "tile": ("pixel", 64),
                          "image_tiles": False, "gx": ("pixel", 64), "gw": "pixels", "in_place": False, "reuse": False}),
    "winograd_auto": ((32, 256, 14, 14), (256, 256, 3, 3), {"padding": 1}, True,
                      {"alg": ("winograd", "winograd"), "layout": ("transformed", "transformed"),
                           "tile": ("pixel", 64), "image_tiles": False, "gx": ("pixel", 64), "gw": "pixels",
                           "in_place": False, "reuse": False}),
    "depthwise": ((8, 256, 14, 14), (256, 1, 3, 3), {"padding": 1, "groups": 256}, True,
                  {"alg": ("direct", "direct"), "layout": ("standard", "standard"), "tile": (1, 0),
                       "image_tiles": False, "gx": (1, 0), "gw": "per-image", "in_place": False, "reuse": False}),
    "strided": ((4, 3, 9, 9), (6, 3, 3, 3), {"stride": 2, "algorithm": "direct"}, True,
                {"alg": ("direct", "direct"), "layout": ("standard", "standard"), "tile": (4, 4),
                     "image_tiles": False, "gx": None, "gw": "contiguous", "in_place": False, "reuse": False}),
    # auto: strided backward by im2col (docs/winograd.md); the direct one above has sub-pixel grids
    "strided_auto": ((4, 3, 9, 9), (6, 3, 3, 3), {"stride": 2}, True,
                     {"alg": ("direct", "im2col"), "layout": ("standard", "column"), "tile": (4, 4),
                          "image_tiles": False, "gx": (8, 3), "gw": "contiguous", "in_place": False, "reuse": False}),
    # auto: a strided backward whose grad_weight fills the pixel tiles runs direct (sub-pixel grad_x,
    # x kept from the forward); a 1x1 one (grids without taps) runs im2col
    "strided_auto_pixels": ((4, 64, 12, 12), (64, 64, 3, 3), {"stride": 2, "padding": 1}, True,
                            {"alg": ("direct", "direct"), "layout": ("standard", "standard"), "tile": ("pixel", 64),
                                 "image_tiles": False, "gx": None, "gw": "pixels", "in_place": False, "reuse": True}),
    "strided_1x1_auto": ((4, 64, 12, 12), (64, 64, 1, 1), {"stride": 2}, True,
                         {"alg": ("direct", "im2col"), "layout": ("standard", "column"), "tile": ("pixel", 64),
                              "image_tiles": False, "gx": (8, 3), "gw": "contiguous", "in_place": False, "reuse": False}),
    "im2col_small": ((2, 4, 9, 11), (6, 4, 3, 3), {"algorithm": "im2col"}, True,
                     {"alg": ("im2col", "im2col"), "layout": ("column", "column"), "tile": (4, 4),
                          "image_tiles": False, "gx": (8, 3), "gw": "contiguous", "in_place": False, "reuse": False}),
    "small_batch": ((2, 3, 9, 9), (5, 3, 3, 3), {"padding": 1}, True,
                    {"alg": ("direct", "direct"), "layout": ("standard", "standard"), "tile": (4, 4),
                         "image_tiles": False, "gx": (1, 0), "gw": "contiguous", "in_place": False, "reuse": False}),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_plan_table(name):
    xs, ws, opts, nig, want = PLANS[name]
    plan = fastconv.plan_conv2d(xs, ws, **opts, need_input_grad=nig, threads=2)
    c = plan.cpu
    assert (plan.algorithm, plan.backward_algorithm) == want["alg"]
    assert (plan.layout, plan.backward_layout) == want["layout"]
    if isinstance(c.forward, PixelTiling):
        assert ("pixel", c.forward.channels) == want["tile"] and not want["image_tiles"]
    else:
        assert (c.forward.channels, c.forward.vectors) == want["tile"]
        assert (c.forward.image_tiles > 0) == want["image_tiles"]
    gx = c.grad_input
    assert (None if gx is None else ("pixel", gx.channels) if isinstance(gx, PixelTiling)
            else ("taps", gx.channels) if isinstance(gx, TapTiling) else (gx.channels, gx.vectors)) == want["gx"]
    assert c.grad_weight.mode == want["gw"]
    assert c.grad_output_in_place == want["in_place"]
    assert c.reuse_prepared_input == want["reuse"]
    assert plan.threads == 2 and c.grad_weight.threads == 2
    # an unpadded x on the pixel tiles is read in place (no forward workspace)
    assert (c.forward_workspace_bytes == 0) == (c.forward_layout.kind == "nchw") and 0 < c.backward_workspace_bytes
    # every choice comes with a reason
    for choice in ("algorithm", "layout", "backward_layout", "tile", "grad_weight", "grad_input",
                   "reuse_prepared_input"):
        assert plan.reason(choice)


def test_plan_repr_reads_like_a_sentence():
    plan = fastconv.plan_conv2d((64, 64, 5, 5), (64, 64, 3, 3), threads=2)
    text = repr(plan)
    assert text.startswith("ConvPlan(direct · standard layout · 6×64 pixel tile (output channels in the vector lanes) · "
                           "workspace 0 KiB · because standard: on the pixel tiles an unpadded x is read in place (NCHW) "
                           "by the forward and by grad_weight, and grad_x by taps reads grad_output in place")
    assert "backward: direct · standard layout" in text and "grad_x by taps (64 input channels per tap" in text
    assert plan.reason("grad_input").startswith("by taps: grad_x's 5x5 pixels are >= 1.25x grad_output's 3x3")
    # 40 input channels fill too few lanes for grad_x by taps: the backward keeps the batch-inner layout
    shallow = fastconv.plan_conv2d((64, 40, 5, 5), (64, 40, 3, 3), threads=2)
    assert "the backward keeps the batch-inner layout" in repr(shallow), shallow
    assert shallow.reason("backward_layout").startswith("batch-inner: stride 1, batch 64 >= 8")
    padded = repr(fastconv.plan_conv2d((64, 64, 5, 5), (64, 64, 3, 3), padding=(0, 1), threads=2))
    assert padded.startswith("ConvPlan(direct · batch-inner layout · 6×64 pixel tile") and "reuses the forward's" in padded


def test_plan_is_frozen_and_comparable():
    a = fastconv.plan_conv2d((2, 3, 9, 9), (5, 3, 3, 3), padding=1, threads=2)
    b = fastconv.plan_conv2d((2, 3, 9, 9), (5, 3, 3, 3), padding=1, threads=2)
    assert a == b and isinstance(a, fastconv.ConvPlan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.algorithm = "im2col"  # type: ignore[misc]
    with pytest.raises(KeyError, match="no reason recorded for 'colour'"):
        a.reason("colour")


def test_plan_dtype_and_threads():
    f64 = fastconv.plan_conv2d((2, 3, 9, 9), (5, 3, 3, 3), dtype=np.float64, threads=1)
    assert f64.dtype == "float64" and f64.threads == 1
    assert fastconv.plan_conv2d((2, 3, 9, 9), (5, 3, 3, 3), dtype="int32").dtype == "float64"
    assert fastconv.plan_conv2d((2, 3, 9, 9), (5, 3, 3, 3), dtype="float16").dtype == "float32"
    f32 = fastconv.plan_conv2d((2, 3, 9, 9), (5, 3, 3, 3), threads=1)
    assert f64.cpu.forward_workspace_bytes > f32.cpu.forward_workspace_bytes


def test_im2col_workspace_bound_in_plan():
    plan = fastconv.plan_conv2d((4096, 64, 56, 56), (64, 64, 3, 3), padding=1, algorithm="im2col", threads=2)
    assert 1 <= plan.cpu.images_per_chunk < 4096
    assert plan.cpu.forward_workspace_bytes <= COLUMN_WORKSPACE_BYTES


def test_layout_request():
    plan = fastconv.plan_conv2d((64, 64, 5, 5), (64, 64, 3, 3), algorithm="direct", layout="standard", threads=2)
    assert (plan.layout, plan.backward_layout) == ("standard", "standard")
    assert plan.reason("layout") == "standard: requested"
    with pytest.raises(ValueError, match="layout 'batch-inner' needs an explicit algorithm"):
        fastconv.plan_conv2d((64, 64, 5, 5), (64, 64, 3, 3), layout="batch-inner")
    with pytest.raises(ValueError, match="layout 'column' needs an explicit algorithm"):
        fastconv.plan_conv2d((64, 64, 5, 5), (64, 64, 3, 3), algorithm="direct", layout="column")
    with pytest.raises(ValueError, match="the batch-inner layout needs stride 1"):
        fastconv.plan_conv2d((64, 64, 5, 5), (64, 64, 3, 3), stride=2, algorithm="direct", layout="batch-inner")


@pytest.mark.parametrize("kwargs, match", [
    ({"algorithm": "fft"}, "algorithm must be one of"),
    ({"need_input_grad": "yes"}, "need_input_grad must be a bool"),
    ({"backend": "tpu"}, 'backend must be "cpu" or "cuda"'),
    ({"threads": 0}, "threads must be a positive int"),
    ({"padding": -1}, "padding"),
])
def test_plan_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fastconv.plan_conv2d((2, 3, 9, 9), (5, 3, 3, 3), **kwargs)


def test_cuda_plan_rule():
    deep = fastconv.plan_conv2d((8, 16, 9, 9), (32, 16, 3, 3), backend="cuda")
    assert (deep.backend, deep.algorithm, deep.backward_algorithm, deep.cpu) == ("cuda", "im2col", "im2col", None)
    shallow = fastconv.plan_conv2d((8, 1, 9, 9), (4, 1, 3, 3), backend="cuda")
    assert shallow.algorithm == "direct" and "shallow" in shallow.reason("algorithm")
    assert repr(shallow).startswith("ConvPlan(cuda · direct · because auto:")


def test_batch_inner_rule_is_the_plans():
    p = fastconv.plan_conv2d((8, 3, 5, 5), (5, 3, 3, 3), threads=2).params
    assert use_batch_inner(p)
    assert fastconv.plan_conv2d((8, 3, 5, 5), (5, 3, 3, 3), threads=2).layout == "batch-inner"
    assert fastconv.plan_conv2d((7, 3, 5, 5), (5, 3, 3, 3), threads=2).layout == "standard"


# --------------------------------------------------------------------------- the calls run the plan


@pytest.mark.parametrize("shape, opts", [
    (((8, 3, 5, 5), (5, 3, 3, 3)), {}),
    (((2, 3, 9, 11), (6, 3, 3, 3)), {"padding": 1, "stride": (1, 2)}),
    (((3, 1, 12, 12), (8, 1, 3, 3)), {}),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_auto_executes_the_plan_conv2d_returns(shape, opts, dtype, rng, monkeypatch):
    """conv2d/conv2d_backward(..., algorithm="auto") hand the CPU backend exactly
    the plan plan_conv2d returns for the same arguments; an op's ``plan`` is it."""
    xs, ws = shape
    x, wt = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    fwd = spy_calls(monkeypatch, fastconv.cpu, "conv2d_forward")
    bwd = spy_calls(monkeypatch, fastconv.cpu, "conv2d_backward")
    y = fastconv.conv2d(x, wt, **opts)
    for nig in (True, False):
        fastconv.conv2d_backward(np.ones_like(y), x, wt, **opts, need_input_grad=nig)
    assert fwd[0][3] == fastconv.plan_conv2d(xs, ws, dtype=dtype, **opts)
    for call, nig in zip(bwd, (True, False)):
        assert call[3] == fastconv.plan_conv2d(xs, ws, dtype=dtype, **opts, need_input_grad=nig)
    op = fastconv.Conv2dOp(**{k: v for k, v in opts.items()})
    op.forward(x, wt)
    assert op.plan == fastconv.plan_conv2d(xs, ws, dtype=dtype, **opts)


def test_from_plan_runs_that_plan_only(rng):
    x = rng.standard_normal((8, 3, 5, 5)).astype(np.float32)
    wt = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    plan = fastconv.plan_conv2d(x.shape, wt.shape, algorithm="direct", layout="standard")
    op = fastconv.Conv2dOp.from_plan(plan)
    y = op.forward(x, wt)
    assert op.plan is plan
    assert_close(y, reference.conv2d(x, wt), np.float32, "y")
    with pytest.raises(ValueError, match="runs a fixed plan for x"):
        op.forward(x[:4], wt)
    with pytest.raises(ValueError, match="runs a fixed plan for x"):
        op.forward(x.astype(np.float64), wt)


def test_from_plan_same_padding(rng):
    """A plan with asymmetric ("same", even kernel) padding round-trips."""
    x = rng.standard_normal((2, 3, 8, 9)).astype(np.float64)
    wt = rng.standard_normal((4, 3, 2, 4)).astype(np.float64)
    plan = fastconv.plan_conv2d(x.shape, wt.shape, dtype=np.float64, padding="same")
    y = fastconv.Conv2dOp.from_plan(plan).forward(x, wt)
    assert_close(y, reference.conv2d(x, wt, padding="same"), np.float64, "y")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_pixel_blocks_by_taps(dtype, rng):
    """A 1×1 forward on the pixel tiles runs PIXEL_BLOCK_POINTWISE pixels per
    task where there are tasks enough, a 3×3 one PIXEL_BLOCK; each pass over
    input channels keeps its packed weights within PIXEL_WEIGHT_BYTES (a 3×3
    kernel's 64 channels in passes that do not divide them); both results
    against the reference, into a poisoned output."""
    from fastconv._plan import PIXEL_BLOCK, PIXEL_BLOCK_POINTWISE, PIXEL_CHANNEL_BLOCK, PIXEL_WEIGHT_BYTES

    xs, ws = (6, 64, 32, 32), (64, 64, 1, 1)  # 6,144 pixels: whole blocks of either size
    fwd = fastconv.plan_conv2d(xs, ws, dtype=dtype, threads=2).cpu.forward
    wide = fastconv.plan_conv2d(xs, (64, 64, 3, 3), dtype=dtype, padding=1, algorithm="direct", threads=2).cpu.forward
    assert isinstance(fwd, PixelTiling) and isinstance(wide, PixelTiling)
    scale = 4 // fwd.vectors
    assert fwd.block == PIXEL_BLOCK_POINTWISE * scale and wide.block == PIXEL_BLOCK * scale
    isz = np.dtype(dtype).itemsize
    assert fwd.channel_block == PIXEL_CHANNEL_BLOCK
    assert wide.channel_block * 9 * wide.channels * isz <= PIXEL_WEIGHT_BYTES
    assert (wide.channel_block + 1) * 9 * wide.channels * isz > PIXEL_WEIGHT_BYTES and 64 % wide.channel_block
    x = rng.standard_normal(xs).astype(dtype)
    for ws, pad in ((ws, 0), ((64, 64, 3, 3), 1)):
        wt, b = rng.standard_normal(ws).astype(dtype), rng.standard_normal(ws[0]).astype(dtype)
        y = fastconv.conv2d(x, wt, b, padding=pad, algorithm="direct")
        assert_close(y, reference.conv2d(x, wt, b, padding=pad), dtype, "y")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_pointwise_large_planes_stream_on_q_lane_tiles(dtype, rng):
    """A 1×1 forward over planes of >= STREAM_PLANE pixels with <= STREAM_CHANNELS
    input channels runs on the Q-lane tiles, its backward still on the pixel
    tiles with x read in place; smaller planes or more channels keep the pixel
    tiles.  Forward and backward against the reference."""
    from fastconv._plan import STREAM_CHANNELS, STREAM_PLANE

    side = int(np.ceil(np.sqrt(STREAM_PLANE)))
    xs, ws = (2, 24, side, side), (64, 24, 1, 1)
    plan = fastconv.plan_conv2d(xs, ws, dtype=dtype, threads=2)
    assert not isinstance(plan.cpu.forward, PixelTiling) and "streams whole" in plan.reason("tile")
    assert plan.cpu.grad_weight.mode == "pixels" and plan.cpu.backward_layout.kind == "nchw"
    assert isinstance(fastconv.plan_conv2d((2, 24, 28, 28), ws, dtype=dtype).cpu.forward, PixelTiling)
    deep = (64, STREAM_CHANNELS + 8, 1, 1)
    assert isinstance(fastconv.plan_conv2d((1, deep[1], side, side), deep, dtype=dtype).cpu.forward, PixelTiling)
    x, wt = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    assert_close(fastconv.conv2d(x, wt, b), reference.conv2d(x, wt, b), dtype, "y")
    gy = rng.standard_normal((xs[0], ws[0], side, side)).astype(dtype)
    got = fastconv.conv2d_backward(gy, x, wt)
    want = reference.conv2d_backward(gy, x, wt)
    for g, r, name in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
        assert_close(g, r, dtype, name)
    # padded, the rule does not apply (its backward could not read x in place)
    plan = fastconv.plan_conv2d(xs, ws, dtype=dtype, padding=1, threads=2)
    assert "streams whole" not in plan.reason("tile")
    gy = rng.standard_normal((xs[0], ws[0], side + 2, side + 2)).astype(dtype)
    got = (fastconv.conv2d(x, wt, b, padding=1),) + fastconv.conv2d_backward(gy, x, wt, padding=1)
    want = (reference.conv2d(x, wt, b, padding=1),) + reference.conv2d_backward(gy, x, wt, padding=1)
    for g, r, name in zip(got, want, ("y", "grad_x", "grad_weight", "grad_bias")):
        assert_close(g, r, dtype, name + " (padded)")
