"""fastconv.conv2d / conv2d_backward on the CPU against the float64 reference,
finite differences and PyTorch (when installed).

Every algorithm ("direct", "im2col") runs the same matrix of options in both
dtypes, forward and backward (grad_x, grad_weight, grad_bias), on fresh random
inputs with poisoned outputs (conftest), so an element a kernel forgets to
write fails.  Shapes are small: the point is coverage of every code path
(register-blocked channel quads and their remainders, 3-tap groups and single
taps, polyphase strides, margins for padding larger than the kernel, chunking,
the exact NaN/Inf fallbacks), not speed.
"""

from __future__ import annotations

import dataclasses
import warnings

import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _plan, reference
from fastconv._params import CONV_ALGORITHMS, compute_dtype, conv2d_params
from fastconv.cpu import conv_direct, conv_direct_bi
from fastconv.cpu.layout import GradWeightTiling, PixelTiling

from tests.helpers import (
    assert_close,
    assert_same_nonfinite,
    check_grads,
    run_plan,
    spy_calls,
    with_cpu,
)

# every explicit algorithm, so a new one is tested by default
# winograd (3×3, stride 1, dilation 1 only) has its own tests: tests/cpu/test_conv_winograd.py
ALGS = [a for a in CONV_ALGORITHMS if a not in ("auto", "winograd")]
DTYPES = [np.float32, np.float64]

# (N, C, H, W, K, KH, KW, conv2d keyword arguments, bias?)
CASES = {
    "plain": (2, 4, 9, 11, 6, 3, 3, {}, True),
    "stride2": (2, 4, 9, 11, 6, 3, 3, dict(stride=2), True),
    "stride_pair": (2, 3, 10, 13, 5, 3, 2, dict(stride=(2, 3)), True),
    "pad1": (2, 4, 9, 11, 6, 3, 3, dict(padding=1), True),
    "pad_pair": (2, 3, 8, 7, 5, 3, 3, dict(padding=(2, 1)), True),
    "pad_big": (1, 2, 5, 6, 4, 3, 3, dict(padding=(4, 3)), True),
    "same_even_kernel": (2, 3, 8, 9, 5, 2, 4, dict(padding="same"), True),
    "same_stride2_dil": (2, 3, 9, 11, 5, 3, 3, dict(padding="same", stride=2, dilation=2), True),
    "same_stride_pair": (1, 3, 10, 9, 4, 4, 3, dict(padding="same", stride=(3, 2)), True),
    "valid": (2, 4, 9, 11, 6, 3, 3, dict(padding="valid"), True),
    "dil2": (2, 3, 11, 12, 5, 3, 3, dict(dilation=2), True),
    "dil_pair_pad": (2, 3, 10, 12, 5, 3, 2, dict(dilation=(2, 3), padding=(1, 2)), True),
    "groups2": (2, 4, 8, 9, 6, 3, 3, dict(groups=2, padding=1), True),
    "groups3_stride": (2, 6, 9, 8, 9, 3, 3, dict(groups=3, stride=2, padding=1), True),
    "depthwise": (2, 5, 9, 10, 5, 3, 3, dict(groups=5, padding=1), True),
    "depthwise_x2": (2, 4, 8, 9, 8, 3, 3, dict(groups=4, padding=1, dilation=2), True),
    "no_bias": (2, 4, 9, 11, 6, 3, 3, dict(padding=1), False),
    "batch1": (1, 3, 12, 14, 8, 3, 3, dict(padding=1), True),
    "odd_sizes": (3, 5, 7, 5, 7, 3, 2, dict(stride=(1, 2)), True),
    "k1x1": (2, 6, 7, 9, 9, 1, 1, {}, True),
    "k5x5": (2, 3, 11, 12, 5, 5, 5, dict(padding=2), True),
    "kernel_fills_input": (2, 3, 5, 4, 4, 5, 4, {}, True),
    "one_channel": (3, 1, 12, 10, 4, 3, 3, {}, True),
    "wide_rows": (1, 2, 6, 75, 4, 3, 3, dict(padding=1), True),
}


def _inputs(rng, case, dtype):
    n, c, h, w, k, kh, kw, opts, has_bias = case
    groups = opts.get("groups", 1)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if has_bias else None
    return x, wt, b, opts


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("alg", ALGS)
def test_matches_reference(alg, dtype, case, rng):
    x, wt, b, opts = _inputs(rng, CASES[case], dtype)
    y = fastconv.conv2d(x, wt, b, **opts, algorithm=alg)
    ref = reference.conv2d(x, wt, b, **opts)
    assert y.dtype == dtype and y.flags.c_contiguous
    assert_close(y, ref, dtype, "y")
    gy = rng.standard_normal(ref.shape).astype(dtype)
    gx, gw, gb = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm=alg)
    rx, rw, rb = reference.conv2d_backward(gy, x, wt, **opts)
    for got, want, what in ((gx, rx, "grad_x"), (gw, rw, "grad_weight"), (gb, rb, "grad_bias")):
        assert got.dtype == dtype and got.flags.c_contiguous, what
        assert_close(got, want, dtype, what)


def _views(a, kind):
    """A non-contiguous view of an array equal to ``a``'s values."""
    if kind == "slice":  # every other element along W of a twice-as-wide buffer
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if kind == "transpose":  # C-order data of the transposed array, viewed back
        return np.ascontiguousarray(a.transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)
    if kind == "negative":
        return np.ascontiguousarray(a[:, :, ::-1, ::-1])[:, :, ::-1, ::-1]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["slice", "transpose", "negative"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("alg", ALGS)
def test_non_contiguous_inputs(alg, dtype, kind, rng):
    x, wt, b, opts = _inputs(rng, CASES["groups2"], dtype)
    xv, wv = _views(x, kind), _views(wt, kind)
    assert not xv.flags.c_contiguous and not wv.flags.c_contiguous
    bv = np.repeat(b, 2)[::2]
    assert not bv.flags.c_contiguous
    y = fastconv.conv2d(xv, wv, bv, **opts, algorithm=alg)
    assert y.flags.c_contiguous
    assert_close(y, reference.conv2d(x, wt, b, **opts), dtype, "y")
    gy = rng.standard_normal(y.shape).astype(dtype)
    grads = fastconv.conv2d_backward(_views(gy, kind), xv, wv, **opts, algorithm=alg)
    for got, want in zip(grads, reference.conv2d_backward(gy, x, wt, **opts)):
        assert_close(got, want, dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_im2col_chunks(dtype, rng):
    """One image per chunk (a plan's chunking, as a workspace bound smaller than
    one image gives), grad_weight summed over chunks."""
    x, wt, b, opts = _inputs(rng, CASES["groups3_stride"], dtype)
    plan = fastconv.plan_conv2d(x.shape, wt.shape, dtype=dtype, **opts, algorithm="im2col")
    assert plan.cpu.images_per_chunk == x.shape[0] > 1
    gy = rng.standard_normal(plan.params.y_shape).astype(dtype)
    y, grads = run_plan(with_cpu(plan, images_per_chunk=1), x, wt, b, gy)
    assert_close(y, reference.conv2d(x, wt, b, **opts), dtype, "y")
    for got, want in zip(grads, reference.conv2d_backward(gy, x, wt, **opts)):
        assert_close(got, want, dtype, "grad")


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_im2col_partial_last_chunk(dtype, n, rng):
    """Workspace for two images, batch 3 or 5: the last chunk holds one image
    (a partial view of the workspace), grad_weight summed over the chunks."""
    x, wt, b, opts = _inputs(rng, (n, *CASES["groups3_stride"][1:]), dtype)
    plan = fastconv.plan_conv2d(x.shape, wt.shape, dtype=dtype, **opts, algorithm="im2col")
    assert plan.cpu.images_per_chunk == n and n % 2 == 1
    gy = rng.standard_normal(plan.params.y_shape).astype(dtype)
    y, grads = run_plan(with_cpu(plan, images_per_chunk=2), x, wt, b, gy)
    assert_close(y, reference.conv2d(x, wt, b, **opts), dtype, "y")
    for got, want, what in zip(grads, reference.conv2d_backward(gy, x, wt, **opts),
                               ("grad_x", "grad_weight", "grad_bias")):
        assert_close(got, want, dtype, what)


@pytest.mark.parametrize("chunked", [False, True], ids=["one_chunk", "chunks"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_im2col_grad_weight_in_place(dtype, case, chunked, rng):
    """im2col's grad_weight over grad_output read in place (planned for planes
    of >= IN_PLACE_MIN output pixels; chosen here for every case), with and
    without grad_x and over several chunks: the reference's values, and the
    same grad_weight and grad_bias whether or not grad_x is computed."""
    x, wt, b, opts = _inputs(rng, CASES[case], dtype)
    gy = rng.standard_normal(reference.conv2d(x, wt, b, **opts).shape).astype(dtype)
    want = reference.conv2d_backward(gy, x, wt, **opts)

    def backward(need_input_grad):
        plan = fastconv.plan_conv2d(x.shape, wt.shape, dtype=dtype, **opts, algorithm="im2col",
                                    need_input_grad=need_input_grad)
        plan = with_cpu(plan, grad_output_in_place=True, grad_weight=GradWeightTiling("rows", 0, plan.threads),
                        images_per_chunk=1 if chunked else plan.cpu.images_per_chunk)
        return fastconv.Conv2dOp.from_plan(plan).backward_from(gy, x, wt)

    full, part = backward(True), backward(False)
    for got, ref, what in zip(full, want, ("grad_x", "grad_weight", "grad_bias")):
        assert_close(got, ref, dtype, what)
    assert part[0] is None
    assert np.array_equal(part[1], full[1]) and np.array_equal(part[2], full[2])


def test_im2col_in_place_threshold():
    """The in-place grad_weight path is the default for large planes: a 28x28
    first layer without grad_x resolves to an im2col backward under "auto"."""
    no_gx = fastconv.plan_conv2d((64, 1, 28, 28), (32, 1, 3, 3), need_input_grad=False)
    assert no_gx.params.oh * no_gx.params.ow >= _plan.IN_PLACE_MIN
    assert (no_gx.algorithm, no_gx.backward_algorithm) == ("direct", "im2col")
    assert no_gx.cpu.grad_output_in_place and no_gx.cpu.grad_weight.mode == "rows"
    full = fastconv.plan_conv2d((64, 1, 28, 28), (32, 1, 3, 3), need_input_grad=True)
    assert (full.algorithm, full.backward_algorithm) == ("direct", "direct")


def test_im2col_workspace_bound():
    p = conv2d_params((4096, 64, 56, 56), (64, 64, 3, 3), None, 1, 1)
    nb = fastconv.plan_conv2d(p.x_shape, p.weight_shape, padding=1, algorithm="im2col").cpu.images_per_chunk
    assert nb == _plan.chunk_images(p, 4)
    assert 1 <= nb < p.n
    assert (p.c * 9 + p.k) * p.oh * p.ow * 4 * nb <= _plan.COLUMN_WORKSPACE_BYTES


@pytest.mark.parametrize("alg", ALGS + ["auto"])
def test_zero_size_batch(alg):
    x = np.zeros((0, 3, 8, 8), np.float32)
    wt = np.ones((4, 3, 3, 3), np.float32)
    y = fastconv.conv2d(x, wt, np.ones(4, np.float32), padding=1, algorithm=alg)
    assert y.shape == (0, 4, 8, 8) and y.dtype == np.float32
    gx, gw, gb = fastconv.conv2d_backward(np.zeros((0, 4, 8, 8)), x, wt, padding=1, algorithm=alg)
    assert gx.shape == (0, 3, 8, 8) and gw.shape == (4, 3, 3, 3) and gb.shape == (4,)
    assert gx.dtype == np.float64 and not gw.any() and not gb.any()


def test_array_likes(rng):
    x, wt, b, opts = _inputs(rng, CASES["pad1"], np.float64)
    y = fastconv.conv2d(x.tolist(), wt.tolist(), b.tolist(), **opts)
    assert y.dtype == np.float64
    assert_close(y, reference.conv2d(x, wt, b, **opts), np.float64, "y")
    gy = rng.standard_normal(y.shape)
    grads = fastconv.conv2d_backward(gy.tolist(), x.tolist(), wt.tolist(), **opts)
    for got, want in zip(grads, reference.conv2d_backward(gy, x, wt, **opts)):
        assert_close(got, want, np.float64, "grad")


@pytest.mark.parametrize(
    "xdt, wdt, bdt",
    [
        (np.int32, np.int32, None),
        (np.int64, np.float32, np.float32),
        (np.uint8, np.int16, np.int8),
        (np.float16, np.float16, np.float16),
        (np.float16, np.float32, None),
        (np.float32, np.float64, np.float32),
        (np.float32, np.float32, np.float64),
    ],
)
@pytest.mark.parametrize("alg", ALGS)
def test_dtype_promotion(alg, xdt, wdt, bdt, rng):
    """Output dtype = compute_dtype(inputs): result_type, then float16 -> float32
    and integers -> float64; values as the reference computes them from the
    same (exactly representable) inputs."""
    x = rng.integers(-3, 4, (2, 3, 7, 8)).astype(xdt) if np.dtype(xdt).kind != "u" else \
        rng.integers(0, 5, (2, 3, 7, 8)).astype(xdt)
    wt = rng.integers(-2, 3, (4, 3, 3, 3)).astype(wdt)
    b = None if bdt is None else rng.integers(-2, 3, 4).astype(bdt)
    want = compute_dtype(np.dtype(xdt), np.dtype(wdt), None if bdt is None else np.dtype(bdt))
    y = fastconv.conv2d(x, wt, b, padding=1, algorithm=alg)
    assert y.dtype == want
    assert_close(y, reference.conv2d(x, wt, b, padding=1), want, "y")
    gy = rng.integers(-2, 3, y.shape).astype(xdt)
    gwant = compute_dtype(np.dtype(xdt), np.dtype(xdt), np.dtype(wdt))
    grads = fastconv.conv2d_backward(gy, x, wt, padding=1, algorithm=alg)
    for got, ref in zip(grads, reference.conv2d_backward(gy, x, wt, padding=1)):
        assert got.dtype == gwant
        assert_close(got, ref, gwant, "grad")


@pytest.mark.parametrize(
    "x_shape, w_shape, opts, want",
    [
        ((64, 1, 28, 28), (32, 1, 3, 3), {}, "direct"),  # no GEMM depth
        ((64, 32, 13, 13), (64, 32, 3, 3), {}, "direct"),  # shallow GEMM
        ((32, 256, 28, 28), (256, 256, 3, 3), dict(padding=1), "winograd"),  # deep and wide, whole tiles
        ((32, 64, 13, 13), (64, 64, 3, 3), dict(padding=1), "direct"),  # 16 x 16 tiles for 13 x 13
        ((32, 256, 14, 14), (256, 256, 3, 3), dict(padding=1), "winograd"),  # deep and wide: 4x fewer products
        ((32, 256, 14, 14), (256, 256, 3, 3), dict(padding=1, dilation=2), "direct"),  # no Winograd when dilated
        ((8, 256, 14, 14), (256, 1, 3, 3), dict(padding=1, groups=256), "direct"),  # depthwise
    ],
)
def test_auto_rule(x_shape, w_shape, opts, want):
    plan = fastconv.plan_conv2d(x_shape, w_shape, **opts)
    assert (plan.algorithm, plan.backward_algorithm) == (want, want)
    forced = fastconv.plan_conv2d(x_shape, w_shape, **opts, algorithm="im2col")
    assert (forced.algorithm, forced.backward_algorithm) == ("im2col", "im2col")


# (N, C, H, W, K, KH, KW, options, bias?) and the algorithm "auto" must pick for it
AUTO_CASES = {
    "picks_direct": (CASES["same_even_kernel"], "direct"),
    "deep_small_plane": ((1, 64, 6, 6, 16, 3, 3, dict(padding=1), True), "direct"),
}


@pytest.mark.parametrize("case", list(AUTO_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_auto_and_explicit_agree(case, dtype, rng):
    """algorithm="auto" runs exactly the algorithm the plan picks
    (bit-identical results, forward and backward), and that is correct."""
    shape, want = AUTO_CASES[case]
    x, wt, b, opts = _inputs(rng, shape, dtype)
    picked = fastconv.plan_conv2d(x.shape, wt.shape, dtype=dtype, **opts).algorithm
    assert picked == want
    y_auto = fastconv.conv2d(x, wt, b, **opts, algorithm="auto")
    y_exp = fastconv.conv2d(x, wt, b, **opts, algorithm=picked)
    np.testing.assert_array_equal(y_auto, y_exp)
    assert_close(y_auto, reference.conv2d(x, wt, b, **opts), dtype, "y")
    gy = rng.standard_normal(y_auto.shape).astype(dtype)
    g_auto = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="auto")
    g_exp = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm=picked)
    for got, exp, want_g, what in zip(g_auto, g_exp, reference.conv2d_backward(gy, x, wt, **opts),
                                      ("grad_x", "grad_weight", "grad_bias")):
        np.testing.assert_array_equal(got, exp, err_msg=what)
        assert_close(got, want_g, dtype, what)


# --------------------------------------------------------------------------- direct grad_weight


@pytest.mark.parametrize("seg", [16, 13])
@pytest.mark.parametrize("case", ["plain", "stride_pair", "pad_big", "depthwise", "odd_sizes"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_direct_grad_weight_segments(dtype, case, seg, rng, monkeypatch):
    """grad_weight's dot products run over Q in segments of SEGMENT (1024: one
    segment per chunk at test sizes).  A plan with small segments (13: not a
    multiple of the vector width, so partial vectors too) makes each chunk
    several segments with a partial last one."""
    x, wt, b, opts = _inputs(rng, CASES[case], dtype)
    # at most 2 chunks of Q: long enough for several segments
    plan = fastconv.plan_conv2d(x.shape, wt.shape, dtype=dtype, **opts, algorithm="direct",
                                threads=min(2, numba.get_num_threads()))
    assert plan.layout == "standard"
    plan = with_cpu(plan, grad_weight=GradWeightTiling("contiguous", seg, plan.threads))
    seen = spy_calls(monkeypatch, conv_direct, "grad_weight_contiguous")
    exact = spy_calls(monkeypatch, conv_direct, "grad_weight_exact")
    gy = rng.standard_normal(plan.params.y_shape).astype(dtype)
    y, grads = run_plan(plan, x, wt, b, gy)
    assert_close(y, reference.conv2d(x, wt, b, **opts), dtype, "y")
    for got, want, what in zip(grads, reference.conv2d_backward(gy, x, wt, **opts),
                               ("grad_x", "grad_weight", "grad_bias")):
        assert_close(got, want, dtype, what)
    # one pass over Q (no exact fallback), with at least two segments per chunk
    assert len(seen) == 1 and not exact
    qn, tiling = seen[0][6], seen[0][9]
    assert tiling.segment == seg and tiling.mode == "contiguous"
    assert qn // min(qn, tiling.threads) > seg


IMG_SEG_CASES = {
    # (n, c, h, w, k, kh, kw, opts): planes whose output rows leave >= 16 Q of padding rows
    "valid": (6, 4, 9, 11, 6, 3, 3, {}),
    "pad2": (6, 3, 9, 9, 5, 3, 3, dict(padding=2)),
    "groups": (6, 6, 13, 13, 9, 3, 3, dict(groups=3)),
    "dilated": (6, 4, 12, 12, 4, 3, 3, dict(dilation=2)),
    "rect_same": (7, 3, 10, 13, 5, 3, 2, dict(padding="same")),
}


@pytest.mark.parametrize("seg", [1024, 320])
@pytest.mark.parametrize("case", list(IMG_SEG_CASES), ids=list(IMG_SEG_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_direct_grad_weight_image_segments(dtype, case, seg, rng, monkeypatch):
    """grad_weight over per-image segments (each image's output rows only,
    images grouped into calls of ~segment Q; several calls per chunk with the
    small segment), planned for these shapes, proven taken by a spy, against
    the reference."""
    n, c, h, w, k, kh, kw, opts = IMG_SEG_CASES[case]
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c // opts.get("groups", 1), kh, kw)).astype(dtype)
    plan = fastconv.plan_conv2d(x.shape, wt.shape, dtype=dtype, **opts, algorithm="direct", layout="standard")
    gw = plan.cpu.grad_weight
    assert gw.mode == "per-image", "per-image segments not planned"
    assert 0 < gw.span <= plan.cpu.backward_layout.plane - 16 and gw.span % 16 == 0 and 2 * gw.span <= seg
    plan = with_cpu(plan, grad_weight=GradWeightTiling("per-image", seg, gw.threads, gw.span))
    seen = spy_calls(monkeypatch, conv_direct, "grad_weight_per_image")
    gy = rng.standard_normal(plan.params.y_shape).astype(dtype)
    grads = fastconv.Conv2dOp.from_plan(plan).backward_from(gy, x, wt)
    for got, want, what in zip(grads, reference.conv2d_backward(gy, x, wt, **opts),
                               ("grad_x", "grad_weight", "grad_bias")):
        assert_close(got, want, dtype, what)
    assert len(seen) == 1, "per-image segments not taken"


# (n, c, h, w, k, kh, kw, opts): direct forwards the plan runs on pixel tiles (output channels in
# the vector lanes): standard and batch-inner layouts, strides, dilations, groups, 1x1, a channel
# count that leaves a part-filled tile, a batch of one
PIXEL_CASES = {
    "pad1": (4, 64, 10, 11, 64, 3, 3, dict(padding=1)),
    "stride2": (3, 32, 12, 13, 64, 3, 3, dict(stride=2, padding=1)),
    "dilated": (2, 32, 15, 14, 96, 3, 3, dict(dilation=2, padding=2)),
    # small planes: forward standard (x read in place), backward batch-inner
    "batch_inner": (9, 64, 5, 5, 64, 3, 3, {}),
    "batch_inner_pad": (9, 64, 5, 5, 64, 3, 3, dict(padding=(0, 1))),
    "groups2": (2, 64, 8, 8, 128, 3, 3, dict(groups=2, padding=1)),
    "1x1_k100": (2, 128, 6, 7, 100, 1, 1, {}),
    "batch1_5x5": (1, 16, 12, 12, 64, 5, 5, dict(padding=2)),
    # unpadded: x read in place (NCHW), by the forward and grad_weight
    "valid_nchw": (3, 32, 11, 12, 64, 3, 3, {}),
    "strided_valid_nchw": (2, 48, 13, 12, 64, 3, 3, dict(stride=2, dilation=(1, 2))),
    # narrow tiles (1 or 2 vectors of output channels), unpadded only: LeNet's 5x5 layer,
    # 32 channels at a stride, 12 per group
    "narrow_lenet": (4, 6, 14, 14, 16, 5, 5, {}),
    "narrow_k32_strided": (3, 8, 13, 12, 32, 3, 3, dict(stride=2)),
    "narrow_groups": (4, 8, 9, 9, 24, 3, 3, dict(groups=2, dilation=(2, 1))),
}


# vectors of the narrow cases' tiles by itemsize (float32: 16 lanes, float64: 8)
NARROW_VECTORS = {"narrow_lenet": {4: 1, 8: 2}, "narrow_k32_strided": {4: 2, 8: 4}, "narrow_groups": {4: 1, 8: 2}}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", list(PIXEL_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_direct_forward_pixel_tiles(dtype, case, threads, rng, monkeypatch, maybe_torch):
    """The plan's pixel tiles, proven taken by a spy, on a non-contiguous x:
    forward (with bias) against the reference and torch; the backward of the
    same plan against the reference."""
    n, c, h, w, k, kh, kw, opts = PIXEL_CASES[case]
    x = np.ascontiguousarray(rng.standard_normal((n, c, w, h)).astype(dtype)).transpose(0, 1, 3, 2)
    wt = (rng.standard_normal((k, c // opts.get("groups", 1), kh, kw)) / np.sqrt(c * kh * kw)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    plan = fastconv.plan_conv2d(x.shape, wt.shape, dtype=dtype, **opts, algorithm="direct", threads=threads)
    assert isinstance(plan.cpu.forward, PixelTiling), f"pixel tiles not planned: {plan}"
    if plan.layout == "standard" and "padding" not in opts:
        assert plan.cpu.forward_layout.kind == "nchw" and "read in place" in plan.reason("tile")
    seen = []
    for mod in (conv_direct, conv_direct_bi):
        spy_calls(monkeypatch, mod, "correlate_pixels", into=seen)
    gy = rng.standard_normal(reference.conv2d(x, wt, b, **opts).shape).astype(dtype)
    gw_seen = spy_calls(monkeypatch, conv_direct, "grad_weight_pixels")
    y, grads = run_plan(plan, x, wt, b, gy)
    assert seen and seen[0][5].shape == y.shape, "pixel tiles not taken by the forward"
    narrow = case.startswith("narrow") and plan.cpu.forward.vectors < 4
    if case.startswith("narrow"):  # 1 or 2 vectors of output channels; x read in place
        assert plan.cpu.forward.vectors == NARROW_VECTORS[case][np.dtype(dtype).itemsize], plan
    if narrow:
        assert plan.cpu.grad_weight.mode != "pixels", "grad_weight's pixel tiles are 4 vectors wide"
    elif plan.backward_layout == "standard":
        # the same channels fill the tiles of grad_weight (exact output pixels, any stride)
        assert plan.cpu.grad_weight.mode == "pixels" and len(gw_seen) == 1, "grad_weight not on the pixel tiles"
        if plan.params.sh > 1:  # x is wanted by grad_weight only: the forward's stride-1 buffer serves
            assert plan.cpu.reuse_prepared_input, "the backward should reuse the forward's stride-1 buffer"
    assert_close(y, reference.conv2d(x, wt, b, **opts), dtype, "y")
    for got, want, what in zip(grads, reference.conv2d_backward(gy, x, wt, **opts),
                               ("grad_x", "grad_weight", "grad_bias")):
        assert_close(got, want, dtype, what)
    if maybe_torch is not None:
        ty = maybe_torch.nn.functional.conv2d(maybe_torch.from_numpy(np.ascontiguousarray(x)),
                                              maybe_torch.from_numpy(wt), maybe_torch.from_numpy(b), **opts)
        assert_close(y, ty.numpy().astype(np.float64), dtype, "y vs torch")


# grad_x on the pixel tiles: batch-inner with 8 output channels (too shallow a sum for grad_x by taps)
GRAD_X_PIXEL_CASES = {name: PIXEL_CASES[name] for name in ("pad1", "1x1_k100")} | {
    "batch_inner": (9, 64, 5, 5, 8, 3, 3, {}),
}


@pytest.mark.parametrize("case", list(GRAD_X_PIXEL_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_direct_grad_x_pixel_tiles(dtype, case, rng, monkeypatch, maybe_torch):
    """grad_x of a stride-1 direct backward on pixel tiles (C/groups input
    channels in the lanes), proven taken by a spy on the engine, against the
    reference, torch's autograd, and conv_transpose2d (the same kernel)."""
    import importlib

    from fastconv.cpu import conv_direct, conv_transpose

    # the module (the package's ``correlate`` is its function of that name)
    engine_correlate = importlib.import_module("fastconv.cpu.engine.correlate")

    n, c, h, w, k, kh, kw, opts = GRAD_X_PIXEL_CASES[case]
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((k, c, kh, kw)) / np.sqrt(c * kh * kw)).astype(dtype)
    plan = fastconv.plan_conv2d(x.shape, wt.shape, dtype=dtype, **opts, algorithm="direct")
    assert isinstance(plan.cpu.grad_input, PixelTiling), f"pixel tiles not planned for grad_x: {plan}"
    gy = rng.standard_normal(reference.conv2d(x, wt, **opts).shape).astype(dtype)
    seen = spy_calls(monkeypatch, engine_correlate, "correlate_pixels")
    # a 1x1 layer's grad_x reads grad_output in place (conv_direct.grad_input_pointwise)
    spy_calls(monkeypatch, conv_direct, "correlate_pixels", into=seen)
    gx = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct")[0]
    assert any(call[6] is plan.cpu.grad_input for call in seen), "pixel tiles not taken for grad_x"
    want = reference.conv2d_backward(gy, x, wt, **opts)[0]
    assert_close(gx, want, dtype, "grad_x")
    seen.clear()
    spy_calls(monkeypatch, conv_transpose, "correlate", into=seen)
    xt = fastconv.conv_transpose2d(gy, wt, padding=opts.get("padding", 0), algorithm="direct")
    assert seen and isinstance(seen[-1][6], PixelTiling), "conv_transpose2d did not run the pixel tiles"
    assert_close(xt, want, dtype, "conv_transpose2d")
    if maybe_torch is not None:
        tx = maybe_torch.from_numpy(x).requires_grad_()
        maybe_torch.nn.functional.conv2d(tx, maybe_torch.from_numpy(wt), **opts).backward(maybe_torch.from_numpy(gy))
        assert_close(gx, tx.grad.numpy().astype(np.float64), dtype, "grad_x vs torch")


@pytest.mark.parametrize("where", ["x", "weight"])
def test_pixel_tiles_nan_inf_match_torch(where, rng, torch):
    """NaN and Inf through the pixel tiles (forward, grad_x and grad_weight)
    land where torch puts them (an infinite weight times the zero padding is
    NaN there too)."""
    x = rng.standard_normal((2, 32, 7, 8))
    wt = rng.standard_normal((64, 32, 3, 3)) / 17
    if where == "x":
        x[0, 3, 2, 2] = np.nan
        x[1, 5, 6, 7] = np.inf
        x[1, 9, 0, 0] = -np.inf
    else:
        wt[3, 1, 1, 1] = np.nan
        wt[7, 0, 0, 0] = np.inf
    wt = np.ascontiguousarray(np.concatenate([wt, wt[:, :32]], axis=1))  # 64 input channels: grad_x too
    x = np.ascontiguousarray(np.concatenate([x, x[:, ::-1]], axis=1))
    plan = fastconv.plan_conv2d(x.shape, wt.shape, dtype=np.float64, padding=1, algorithm="direct")
    c = plan.cpu
    assert isinstance(c.forward, PixelTiling) and isinstance(c.grad_input, PixelTiling)
    assert c.grad_weight.mode == "pixels"
    y = fastconv.conv2d(x, wt, padding=1, algorithm="direct")
    tx, tw = torch.from_numpy(x).requires_grad_(), torch.from_numpy(wt).requires_grad_()
    ty = torch.nn.functional.conv2d(tx, tw, padding=1)
    assert_same_nonfinite(y, ty.detach().numpy(), np.float64, "y")
    gy = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(gy))
    gx, gw, _ = fastconv.conv2d_backward(gy, x, wt, padding=1, algorithm="direct")
    assert_same_nonfinite(gx, tx.grad.numpy(), np.float64, "grad_x")
    assert_same_nonfinite(gw, tw.grad.numpy(), np.float64, "grad_weight")


# (n, c, h, w, k, kh, kw, opts, algorithm, layout): float64 grad_weights of >=
# PARTIALS_MAX_BYTES, so the plan runs grad_weight by blocks of output channels;
# every walk of Q (per-image, contiguous, batch-inner, im2col's channel-major copy);
# output channels that leave the pixel tiles under 3/4 full (else those run it)
CHANNEL_BLOCK_CASES = {
    "per_image": (4, 64, 10, 11, 68, 3, 3, dict(padding=1), "direct", "standard"),
    "one_image": (1, 96, 12, 12, 40, 3, 3, dict(padding=1), "direct", "standard"),
    "batch_inner": (9, 64, 5, 5, 64, 3, 3, {}, "direct", "batch-inner"),
    "strided": (3, 64, 11, 10, 68, 3, 3, dict(stride=2, padding=1), "direct", "standard"),
    "1x1_groups": (3, 1024, 6, 6, 80, 1, 1, dict(groups=2), "direct", "standard"),
    "im2col": (2, 64, 9, 9, 66, 3, 3, dict(padding=1), "im2col", "column"),
}


@pytest.mark.parametrize("case", list(CHANNEL_BLOCK_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_grad_weight_channel_blocks(dtype, case, rng, monkeypatch, maybe_torch):
    """A large grad_weight is planned by blocks of output channels (no
    per-thread partial results), proven taken by a spy on the engine kernel,
    and matches the reference (and torch, when installed) with 1 and 2 threads."""
    from fastconv.cpu.engine import grad_weight as engine_gw

    n, c, h, w, k, kh, kw, opts, alg, layout = CHANNEL_BLOCK_CASES[case]
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((k, c // opts.get("groups", 1), kh, kw)) / np.sqrt(c * kh * kw)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    want_y = reference.conv2d(x, wt, b, **opts)
    gy = rng.standard_normal(want_y.shape).astype(dtype)
    want = reference.conv2d_backward(gy, x, wt, **opts)
    for threads in (1, 2):
        plan = fastconv.plan_conv2d(x.shape, wt.shape, dtype=dtype, **opts, algorithm=alg, layout=layout,
                                    threads=threads)
        assert plan.cpu.grad_weight.channel_block > 0, "grad_weight by output-channel blocks not planned"
        assert "blocks of" in str(plan)
        seen = spy_calls(monkeypatch, engine_gw, "gw_channel_blocks")
        y, grads = run_plan(plan, x, wt, b, gy)
        assert seen, "gw_channel_blocks not taken"
        assert_close(y, want_y, dtype, "y")
        for got, ref, what in zip(grads, want, ("grad_x", "grad_weight", "grad_bias")):
            assert_close(got, ref, dtype, f"{what}, {threads} thread(s)")
    torch = maybe_torch
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_()
        tw = torch.from_numpy(wt).requires_grad_()
        torch.nn.functional.conv2d(tx, tw, torch.from_numpy(b), **opts).backward(torch.from_numpy(gy))
        assert_close(grads[1], tw.grad.numpy().astype(np.float64), dtype, "grad_weight vs torch")


@pytest.mark.parametrize("case", ["plain", "stride_pair", "pad_big", "same_stride2_dil", "depthwise_x2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_direct_grad_weight_single_pass(dtype, case, rng, monkeypatch):
    """With finite inputs grad_weight is computed once, over all Q.  A NaN in
    it triggers an exact recomputation, which would otherwise hide a work
    buffer element left unwritten (poisoned NaN) from every accuracy test."""
    x, wt, b, opts = _inputs(rng, CASES[case], dtype)
    passes = [spy_calls(monkeypatch, conv_direct, name) for name in ("grad_weight_contiguous", "grad_weight_per_image")]
    exact = spy_calls(monkeypatch, conv_direct, "grad_weight_exact")
    gy = rng.standard_normal(reference.conv2d(x, wt, b, **opts).shape).astype(dtype)
    gw = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct")[1]
    assert sum(map(len, passes)) == 1 and not exact  # one pass over Q
    assert_close(gw, reference.conv2d_backward(gy, x, wt, **opts)[1], dtype, "grad_weight")


# --------------------------------------------------------------------------- NaN / Inf


def _nan_inf_inputs(rng, where, dtype):
    x = rng.standard_normal((2, 4, 8, 9)).astype(dtype)
    wt = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    gy_shape = (2, 6, 8, 9)  # padding=1, stride 1
    gy = rng.standard_normal(gy_shape).astype(dtype)
    if where == "x":
        x[0, 1, 2, 3] = np.nan
        x[1, 0, 7, 8] = np.inf   # corner: garbage columns of the flattened rows read it
        x[1, 3, 0, 0] = -np.inf
    elif where == "weight":
        wt[1, 0, 0, 0] = np.inf  # multiplies zero padding in the forward (NaN there, as in torch)
        wt[4, 1, 2, 1] = np.nan
    elif where == "grad_output":
        gy[0, 2, 0, 0] = np.inf
        gy[1, 5, 4, 4] = np.nan
    return x, wt, gy


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("where", ["x", "weight", "grad_output"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("alg", ALGS)
def test_nan_inf_match_reference(alg, dtype, where, stride, rng):
    """Non-finite inputs give NaN/Inf exactly where the reference has them
    (the direct kernels' exact fallbacks are exercised here)."""
    x, wt, gy = _nan_inf_inputs(rng, where, dtype)
    if stride == 2:
        gy = np.ascontiguousarray(gy[:, :, ::2, ::2])  # (2, 6, 4, 5)
    b = rng.standard_normal(6).astype(dtype)
    opts = dict(padding=1, groups=2, stride=stride)
    with np.errstate(invalid="ignore", over="ignore"):
        assert_same_nonfinite(fastconv.conv2d(x, wt, b, **opts, algorithm=alg), reference.conv2d(x, wt, b, **opts),
                        dtype, "y")
        got = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm=alg)
        want = reference.conv2d_backward(gy, x, wt, **opts)
    for g, r, what in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
        assert_same_nonfinite(g, r, dtype, what)


@pytest.mark.parametrize("where", ["x", "weight", "grad_output"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("alg", ALGS)
def test_nan_inf_match_torch(alg, dtype, where, rng, torch):
    x, wt, gy = _nan_inf_inputs(rng, where, dtype)
    b = rng.standard_normal(6).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(wt).requires_grad_()
    tb = torch.from_numpy(b).requires_grad_()
    ty = torch.nn.functional.conv2d(tx, tw, tb, padding=1, groups=2)
    ty.backward(torch.from_numpy(gy))
    with np.errstate(invalid="ignore", over="ignore"):
        y = fastconv.conv2d(x, wt, b, padding=1, groups=2, algorithm=alg)
        grads = fastconv.conv2d_backward(gy, x, wt, padding=1, groups=2, algorithm=alg)
    assert_same_nonfinite(y, ty.detach().numpy(), dtype, "y")
    for g, t, what in zip(grads, (tx.grad, tw.grad, tb.grad), ("grad_x", "grad_weight", "grad_bias")):
        assert_same_nonfinite(g, t.numpy(), dtype, what)


# --------------------------------------------------------------------------- finite differences

FD_CASES = [
    ((2, 4, 7, 8), (6, 2, 3, 2), dict(stride=(2, 1), padding="same", dilation=(1, 2), groups=2)),
    ((1, 3, 6, 7), (4, 3, 3, 3), dict(padding=(2, 1), dilation=2)),
    ((2, 2, 6, 5), (2, 1, 2, 3), dict(stride=2, padding=1, groups=2)),
]


def _fd_check(forward, backward, x, wt, b, opts, rng):
    """Directional finite differences of L = sum(gy * conv2d(x, w, b)) in float64:
    (L(v + eps*d) - L(v - eps*d)) / (2 eps) == <grad_v, d> for v in x, w, b."""
    gy = rng.standard_normal(forward(x, wt, b, **opts).shape)
    grads = dict(zip(("x", "weight", "bias"), backward(gy, x, wt, **opts)))
    check_grads(lambda x, weight, bias: forward(x, weight, bias, **opts), {"x": x, "weight": wt, "bias": b},
                grads, gy, rng, directional=True)


@pytest.mark.parametrize("xs, ws, opts", FD_CASES)
def test_finite_differences_reference(xs, ws, opts, rng):
    x, wt, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    _fd_check(reference.conv2d, reference.conv2d_backward, x, wt, b, opts, rng)


@pytest.mark.parametrize("xs, ws, opts", FD_CASES)
@pytest.mark.parametrize("alg", ALGS)
def test_finite_differences(alg, xs, ws, opts, rng):
    x, wt, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])

    def fwd(xx, ww, bb, **kw):
        return fastconv.conv2d(xx, ww, bb, **kw, algorithm=alg)

    def bwd(gy, xx, ww, **kw):
        return fastconv.conv2d_backward(gy, xx, ww, **kw, algorithm=alg)

    _fd_check(fwd, bwd, x, wt, b, opts, rng)


# --------------------------------------------------------------------------- torch parity

TORCH_CASES = ["plain", "stride_pair", "pad_pair", "same_even_kernel", "dil_pair_pad", "groups3_stride",
               "depthwise_x2", "no_bias", "batch1", "k5x5"]


@pytest.mark.parametrize("case", TORCH_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("alg", ALGS)
def test_torch_parity(alg, dtype, case, rng, torch):
    """Forward against torch.nn.functional.conv2d, backward against autograd."""
    x, wt, b, opts = _inputs(rng, CASES[case], dtype)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(wt).requires_grad_()
    tb = None if b is None else torch.from_numpy(b).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about uneven "same" padding
        ty = torch.nn.functional.conv2d(tx, tw, tb, **opts)
    y = fastconv.conv2d(x, wt, b, **opts, algorithm=alg)
    assert_close(y, ty.detach().numpy(), dtype, "y vs torch")
    gy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(gy))
    gx, gw, gb = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm=alg)
    assert_close(gx, tx.grad.numpy(), dtype, "grad_x vs torch")
    assert_close(gw, tw.grad.numpy(), dtype, "grad_weight vs torch")
    if tb is not None:
        assert_close(gb, tb.grad.numpy(), dtype, "grad_bias vs torch")
    else:
        assert_close(gb, gy.astype(np.float64).sum(axis=(0, 2, 3)), dtype, "grad_bias")


# --------------------------------------------------------------------------- properties


@st.composite
def conv_problems(draw):
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 3))
    k = groups * draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.one_of(st.sampled_from(["same", "valid"]),
                             st.tuples(st.integers(0, 4), st.integers(0, 4))))
    n = draw(st.integers(1, 3))
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    try:
        conv2d_params((n, c, h, w), (k, c // groups, kh, kw), None, **opts)
    except ValueError:
        assume(False)
    return (n, c, h, w), (k, c // groups, kh, kw), opts, draw(st.booleans()), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None)
@given(prob=conv_problems())
def test_property_matches_reference(prob):
    xs, ws, opts, has_bias, seed = prob
    rng = np.random.default_rng(seed)
    x, wt = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0]) if has_bias else None
    ref = reference.conv2d(x, wt, b, **opts)
    gy = rng.standard_normal(ref.shape)
    rgrads = reference.conv2d_backward(gy, x, wt, **opts)
    for alg in ALGS:
        assert_close(fastconv.conv2d(x, wt, b, **opts, algorithm=alg), ref, np.float64, f"{alg} y")
        for got, want in zip(fastconv.conv2d_backward(gy, x, wt, **opts, algorithm=alg), rgrads):
            assert_close(got, want, np.float64, f"{alg} grad")


IMG_TILE_CASES = {
    # (n, c, h, w, k, kh, kw, opts): the direct forward covers each image's output rows with
    # its own register tiles (skipping the padding rows between images)
    "13x13_valid": (16, 3, 13, 13, 10, 3, 3, {}),  # 10 channels: too few for the narrow pixel tiles
    "13x13_k4": (16, 2, 13, 13, 5, 5, 5, {}),  # 4-channel tiles
    "groups_dil": (16, 4, 14, 12, 8, 3, 2, dict(groups=2, dilation=(2, 1))),
    "pad_same": (20, 3, 12, 12, 9, 4, 4, dict(padding="same")),
}


@pytest.mark.parametrize("case", list(IMG_TILE_CASES), ids=list(IMG_TILE_CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_direct_forward_per_image_tiles(dtype, case, rng, monkeypatch):
    """The per-image register tiles of the direct forward (the tiling's
    image_tiles > 0; planned when they are fewer than contiguous tiles):
    proven taken by a spy, values equal to the reference, and to the
    contiguous tiling of a plan without them."""
    n, c, h, w, k, kh, kw, opts = IMG_TILE_CASES[case]
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c // opts.get("groups", 1), kh, kw)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    plan = fastconv.plan_conv2d(x.shape, wt.shape, dtype=dtype, **opts, algorithm="direct", layout="standard")
    assert plan.cpu.forward.image_tiles > 0, "the per-image tiling (image_tiles) was not planned"
    calls = spy_calls(monkeypatch, conv_direct, "correlate")
    y = fastconv.Conv2dOp.from_plan(plan).forward(x, wt, b)
    assert calls and calls[-1][6].image_tiles > 0, "the per-image tiling was not taken"
    assert_close(y, reference.conv2d(x, wt, b, **opts), dtype, "y")
    contiguous = dataclasses.replace(plan.cpu.forward, image_tiles=0)
    y2 = fastconv.Conv2dOp.from_plan(with_cpu(plan, forward=contiguous)).forward(x, wt, b)
    assert calls[-1][6].image_tiles == 0
    assert_close(y2, reference.conv2d(x, wt, b, **opts), dtype, "y (contiguous tiles)")


@pytest.mark.parametrize("shape, opts, layout", [
    # 5 output channels: too few for the narrow pixel tiles, which read an unpadded x in place
    ((4, 3, 9, 9, 5), {}, "standard"),                    # padding 0: compact == plain layout
    ((4, 3, 9, 9, 5), dict(padding=(0, 2)), None),         # compact differs: nothing kept
    ((9, 4, 5, 5, 5), {}, "batch-inner"),                  # batch-inner small planes
    ((4, 3, 9, 9, 5), dict(stride=2), None),               # strided: nothing kept
])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_prepared_input_reused_by_backward(dtype, shape, opts, layout, rng, monkeypatch):
    """A Conv2dOp keeps the direct kernels' prepared x where the plan says the
    backward builds the same buffer, and its backward for the same x object
    uses it (no second copy of x): results bit-identical to the public calls,
    and a different x object (even with the same values) never picks up the
    kept buffer."""
    n, c, h, w, k = shape
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c, 3, 3)).astype(dtype)
    op = fastconv.Conv2dOp(opts.get("stride", 1), opts.get("padding", 0), algorithm="direct")
    y = op.forward(x, wt)
    assert np.array_equal(y, fastconv.conv2d(x, wt, **opts, algorithm="direct"))
    assert op.plan.cpu.reuse_prepared_input == (layout is not None)
    assert layout is None or op.plan.layout == layout
    gy = rng.standard_normal(y.shape).astype(dtype)
    want = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct")
    seen = {mod: spy_calls(monkeypatch, mod, name) for mod, name in
            ((conv_direct, "prepare_standard"), (conv_direct_bi, "prepare_batch_inner"))}

    def prepared(a):
        return any(args[0] is a for calls in seen.values() for args in calls)

    other = x.copy()
    got2 = op.backward_from(gy, other, wt)
    assert prepared(other)
    for a, b in zip(got2, want):
        assert np.array_equal(a, b)
    got = op.backward(gy)
    for a, b in zip(got, want):
        assert np.array_equal(a, b)
    assert prepared(x) == (layout is None)


def test_prepared_input_not_reused_for_other_settings(rng):
    """A kept prepared x serves only a backward with the forward's settings
    (review finding: padding 0 kept, padding 1 asked)."""
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    wt = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    op = fastconv.Conv2dOp(1, 0, algorithm="direct")
    op.forward(x, wt)
    assert op.plan.cpu.reuse_prepared_input
    op.padding = 1
    gy = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    got = op.backward(gy)
    for a, b, what in zip(got, reference.conv2d_backward(gy, x, wt, padding=1), ("grad_x", "grad_weight", "grad_bias")):
        assert_close(a, b, np.float32, what)
