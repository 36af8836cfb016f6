"""algorithm="winograd" (fastconv/cpu/conv_winograd.py): F(4×4, 3×3) and F(2×2, 3×3).

Tolerance: the issue lets ``auto`` use an algorithm only within 1e-5 of the
float64 reference in float32; forced Winograd is checked against the bound
measured for it (docs/winograd.md: ``WINOGRAD_F32_TOL``), float64 at 1e-12.
NaN/Inf rule (docs/winograd.md): wherever the reference / torch has a NaN or
Inf, Winograd has a NaN or Inf (never a finite value); it may have NaN at
more positions (a non-finite input spoils its whole output tile).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tests.helpers import assert_close, check_grads, rel_err, spy_calls

import fastconv
from fastconv import _plan as plan_rules
from fastconv import reference
from fastconv.cpu import conv_winograd

DTYPES = [np.float32, np.float64]
# measured worst float32 error up to C·R·S = 4,608 is below this (docs/winograd.md)
WINOGRAD_F32_TOL = 1e-5
TOL = {np.dtype(np.float32): WINOGRAD_F32_TOL, np.dtype(np.float64): 1e-12}

# (x shape, weight shape, options): paddings 0..2, asymmetric, "same", groups, planes
# not a multiple of the tile, a plane smaller than one tile
CASES = [
    ((2, 4, 9, 8), (6, 4, 3, 3), {"padding": 1}),
    ((2, 4, 10, 11), (6, 2, 3, 3), {"groups": 2}),
    ((1, 3, 7, 7), (5, 3, 3, 3), {"padding": 2}),
    ((3, 6, 13, 12), (9, 2, 3, 3), {"padding": (0, 2), "groups": 3}),
    ((2, 8, 6, 5), (16, 8, 3, 3), {"padding": "same"}),
    ((2, 3, 3, 4), (4, 3, 3, 3), {"padding": 1}),
    ((1, 16, 20, 17), (8, 16, 3, 3), {"padding": 1}),
]


def _inputs(rng, xs, ws, opts, dtype):
    x = rng.standard_normal(xs).astype(dtype)
    wt = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    y_shape = reference.conv2d(x, wt, None, **opts).shape
    return x, wt, b, rng.standard_normal(y_shape).astype(dtype)


def _plan(xs, ws, opts, dtype, m=None, need_input_grad=True, **cpu):
    plan = fastconv.plan_conv2d(xs, ws, dtype=dtype, **opts, algorithm="winograd", need_input_grad=need_input_grad)
    wp = plan.cpu.winograd
    wp = dataclasses.replace(wp, m=m or wp.m, **cpu)
    return dataclasses.replace(plan, cpu=dataclasses.replace(plan.cpu, winograd=wp))


def _close(got, want, dtype, what):
    assert_close(got, want, dtype, what, tols=TOL)  # this module's documented float32 bound


def test_plan_table():
    big = fastconv.plan_conv2d((8, 64, 56, 56), (64, 64, 3, 3), padding=1, algorithm="winograd")
    assert (big.algorithm, big.layout, big.backward_algorithm) == ("winograd", "transformed", "winograd")
    assert big.cpu.winograd.m == 4 and "F(4×4, 3×3)" in repr(big)
    assert big.cpu.winograd.grad_weight_plan.algorithm == "direct"
    assert big.cpu.forward_workspace_bytes <= 64 * 2**20
    small = fastconv.plan_conv2d((64, 64, 5, 5), (64, 64, 3, 3), padding=1, algorithm="winograd")
    assert small.cpu.winograd.m == 2 and "F(2×2, 3×3)" in small.reason("layout")
    no_gx = fastconv.plan_conv2d((8, 64, 14, 14), (64, 64, 3, 3), algorithm="winograd", need_input_grad=False)
    assert no_gx.cpu.grad_input is None and "skipped" in repr(no_gx)


# picks: (forward, backward) algorithms auto runs
WINO, DIRECT = ("winograd", "winograd"), None


@pytest.mark.parametrize("xs, ws, opts, picks", [
    ((32, 256, 14, 14), (256, 256, 3, 3), {"padding": 1}, WINO),  # 32 images x 4 x 4 tiles
    ((4, 128, 32, 32), (256, 128, 3, 3), {}, WINO),  # 30 x 30 outputs in 32 x 32 tiles
    ((32, 256, 14, 14), (256, 128, 3, 3), {"padding": 1, "groups": 2}, WINO),  # 128 channels per group
    ((16, 512, 7, 7), (512, 512, 3, 3), {"padding": 1}, WINO),  # 64 tiles
    ((8, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, WINO),  # 64 channels
    ((8, 128, 28, 28), (64, 128, 3, 3), {"padding": 1}, WINO),
    ((32, 256, 14, 14), (256, 32, 3, 3), {"padding": 1, "groups": 8}, DIRECT),  # 32 per group
    ((8, 32, 56, 56), (64, 32, 3, 3), {"padding": 1}, DIRECT),  # 32 input channels
    ((15, 512, 7, 7), (512, 512, 3, 3), {"padding": 1}, DIRECT),  # 60 tiles
    ((1, 256, 28, 28), (256, 256, 3, 3), {"padding": 1}, WINO),  # 49 tiles, 256 channels: 9 MiB of U
    ((2, 256, 14, 14), (256, 256, 3, 3), {"padding": 1}, WINO),  # 32 tiles
    ((1, 256, 20, 20), (256, 256, 3, 3), {"padding": 1}, DIRECT),  # 25 tiles
    ((8, 512, 7, 7), (512, 512, 3, 3), {"padding": 1}, DIRECT),  # 32 tiles, 36 MiB of U
    ((1, 64, 28, 28), (64, 64, 3, 3), {"padding": 1}, DIRECT),  # 49 tiles, 64 channels
    ((1, 128, 24, 24), (128, 128, 3, 3), {"padding": 1}, WINO),  # 36 tiles, 128 channels
    ((64, 64, 13, 13), (64, 64, 3, 3), {"padding": 1}, DIRECT),  # 16 x 16 tiles for 13 x 13 outputs
    ((64, 64, 5, 5), (64, 64, 3, 3), {}, DIRECT),  # 4 x 4 for 3 x 3
    ((32, 256, 14, 14), (256, 256, 3, 3), {"padding": 2, "dilation": 2}, ("winograd", "direct")),  # the grids
    ((32, 256, 28, 28), (256, 256, 3, 3), {"padding": 1, "stride": 2}, DIRECT),
    ((32, 256, 14, 14), (256, 256, 5, 5), {"padding": 2}, DIRECT),
    ((32, 1024, 14, 14), (256, 1024, 3, 3), {"padding": 1}, DIRECT),  # 9 x 1024 products: F(2x2) only
])
def test_auto_winograd_rule(xs, ws, opts, picks):
    """auto runs Winograd exactly where ``_plan.winograd_pays`` says, its
    backward too from ``WINOGRAD_AUTO_BACKWARD_CHANNELS`` per group (docs/winograd.md)."""
    plan = fastconv.plan_conv2d(xs, ws, **opts)
    got = (plan.algorithm, plan.backward_algorithm)
    if picks:
        assert got == picks and (plan.cpu.winograd.space_to_batch or plan).cpu.winograd.m == 4
        assert "auto: Winograd F(4×4, 3×3)" in plan.reason("algorithm")
    else:
        assert "winograd" not in got


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_auto_forward_winograd_backward_direct(dtype, rng, monkeypatch, request):
    """auto's mixed plan (forward Winograd, backward direct with no x kept
    from the forward: fewer channels than WINOGRAD_AUTO_BACKWARD_CHANNELS)
    through the op object, poisoned outputs."""
    monkeypatch.setattr(plan_rules, "WINOGRAD_AUTO_BACKWARD_CHANNELS", 128)
    plan_rules.build_plan.cache_clear()  # plans are cached: none from the real rule here,
    request.addfinalizer(plan_rules.build_plan.cache_clear)  # and none from this one after
    xs, ws, opts = (4, 64, 20, 20), (64, 64, 3, 3), {"padding": 1}
    x, wt, b, gy = _inputs(rng, xs, ws, opts, dtype)
    plan = fastconv.plan_conv2d(xs, ws, dtype=dtype, **opts)
    assert (plan.algorithm, plan.backward_algorithm) == ("winograd", "direct")
    op = fastconv.Conv2dOp.from_plan(plan)
    _close(op.forward(x, wt, b), reference.conv2d(x, wt, b, **opts), dtype, "y")
    for got, want, what in zip(op.backward(gy), reference.conv2d_backward(gy, x, wt, **opts),
                               ("grad_x", "grad_weight", "grad_bias")):
        assert_close(got, want, dtype, what)


@pytest.mark.parametrize("ws, opts, what", [
    ((4, 3, 5, 5), {}, r"kernel \(5, 5\)"),
    ((4, 3, 3, 3), {"stride": 2}, r"stride \(2, 2\)"),
    ((4, 3, 3, 3), {"stride": (1, 2), "dilation": 2}, r"stride \(1, 2\)"),
    ((4, 3, 1, 3), {}, r"kernel \(1, 3\)"),
])
def test_unsupported_options_raise(ws, opts, what, rng, monkeypatch):
    x = rng.standard_normal((1, 3, 12, 12)).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    calls = spy_calls(monkeypatch, conv_winograd, "winograd_correlate")
    msg = r"algorithm='winograd' needs a 3×3 kernel at stride 1, got .*" + what
    with pytest.raises(ValueError, match=msg):
        fastconv.conv2d(x, w, **opts, algorithm="winograd")
    with pytest.raises(ValueError, match=msg):
        fastconv.plan_conv2d(x.shape, w.shape, **opts, algorithm="winograd")
    assert not calls


@pytest.mark.parametrize("need_input_grad", [True, False])
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("xs, ws, opts", CASES)
def test_matches_reference(xs, ws, opts, dtype, m, need_input_grad, threads, rng, monkeypatch):
    x, wt, b, gy = _inputs(rng, xs, ws, opts, dtype)
    plan = _plan(xs, ws, opts, dtype, m, need_input_grad)
    calls = spy_calls(monkeypatch, conv_winograd, "winograd_correlate")
    op = fastconv.Conv2dOp.from_plan(plan)
    y = op.forward(x, wt, b)
    gx, gw, gb = op.backward(gy)
    assert len(calls) == 1 + need_input_grad
    _close(y, reference.conv2d(x, wt, b, **opts), dtype, "y")
    rgx, rgw, rgb = reference.conv2d_backward(gy, x, wt, **opts)
    if need_input_grad:
        _close(gx, rgx, dtype, "grad_x")
    else:
        assert gx is None
    assert_close(gw, rgw, dtype, "grad_weight")
    assert_close(gb, rgb, dtype, "grad_bias")


@pytest.mark.parametrize("m", [2, 4])
def test_many_chunks(m, rng):
    """Chunks of 16 tiles, so the batch spans several chunks."""
    xs, ws, opts = (3, 5, 19, 21), (7, 5, 3, 3), {"padding": 1}
    x, wt, b, gy = _inputs(rng, xs, ws, opts, np.float64)
    plan = _plan(xs, ws, opts, np.float64, m, tiles_per_chunk=16)
    op = fastconv.Conv2dOp.from_plan(plan)
    _close(op.forward(x, wt, b), reference.conv2d(x, wt, b, **opts), np.float64, "y")
    _close(op.backward(gy)[0], reference.conv2d_backward(gy, x, wt, **opts)[0], np.float64, "grad_x")


# channel counts that are not whole vectors (16 float32 / 8 float64 lanes; the
# last vector's extra lanes must be overwritten), more than one pixel tile of
# output channels (64 / 32), groups, padding 3 (grad_x reads from offset -1),
# and chunks of 5 tiles so that an image spans several chunks
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("xs, ws, opts, chunk", [
    ((2, 40, 12, 11), (72, 40, 3, 3), {"padding": 1}, None),
    ((2, 36, 9, 9), (48, 12, 3, 3), {"padding": 3, "groups": 3}, None),
    ((3, 20, 10, 10), (24, 20, 3, 3), {"padding": 1}, 5),
    ((2, 130, 8, 8), (130, 130, 3, 3), {"padding": 1}, None),
])
def test_channel_vectors_and_chunks(xs, ws, opts, chunk, dtype, m, rng):
    x, wt, b, gy = _inputs(rng, xs, ws, opts, dtype)
    plan = _plan(xs, ws, opts, dtype, m, **({"tiles_per_chunk": chunk} if chunk else {}))
    op = fastconv.Conv2dOp.from_plan(plan)
    _close(op.forward(x, wt, b), reference.conv2d(x, wt, b, **opts), dtype, "y")
    _close(op.backward(gy)[0], reference.conv2d_backward(gy, x, wt, **opts)[0], dtype, "grad_x")


def test_public_api_and_non_contiguous_inputs(rng):
    xs, ws, opts = (2, 4, 9, 10), (6, 4, 3, 3), {"padding": 1}
    x, wt, b, gy = _inputs(rng, xs, ws, opts, np.float64)
    xv = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    gyv = np.repeat(gy, 2, axis=3)[..., ::2]
    y = fastconv.conv2d(xv, np.asfortranarray(wt), b[::-1].copy()[::-1], **opts, algorithm="winograd")
    _close(y, reference.conv2d(x, wt, b, **opts), np.float64, "y")
    got = fastconv.conv2d_backward(gyv, xv, wt, **opts, algorithm="winograd")
    for g, r, what in zip(got, reference.conv2d_backward(gy, x, wt, **opts), ("grad_x", "grad_weight", "grad_bias")):
        _close(g, r, np.float64, what)


@pytest.mark.parametrize("m", [2, 4])
def test_matches_torch(m, rng, torch):
    xs, ws, opts = (2, 6, 11, 10), (8, 3, 3, 3), {"padding": 1, "groups": 2}
    x, wt, b, gy = _inputs(rng, xs, ws, opts, np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.conv2d(tx, torch.from_numpy(wt), torch.from_numpy(b), **opts)
    ty.backward(torch.from_numpy(gy))
    op = fastconv.Conv2dOp.from_plan(_plan(xs, ws, opts, np.float32, m))
    _close(op.forward(x, wt, b), ty.detach().numpy().astype(np.float64), np.float32, "y vs torch")
    _close(op.backward(gy)[0], tx.grad.numpy().astype(np.float64), np.float32, "grad_x vs torch")


@pytest.mark.parametrize("m", [2, 4])
def test_finite_differences(m, rng):
    """grad_x of sum(conv(x) * gy) against central differences (float64)."""
    xs, ws, opts = (1, 2, 7, 9), (3, 2, 3, 3), {"padding": (2, 0)}
    x, wt, _, gy = _inputs(rng, xs, ws, opts, np.float64)
    op = fastconv.Conv2dOp.from_plan(_plan(xs, ws, opts, np.float64, m))
    op.forward(x, wt)
    gx = op.backward(gy)[0]
    check_grads(lambda x: op.forward(x, wt, keep_for_backward=False), {"x": x}, {"x": gx}, gy,
                at=[(0, 0, 0, 0), (0, 1, 3, 4), (0, 0, 6, 8), (0, 1, 5, 2), (0, 0, 2, 7)], rtol=1e-7)


@pytest.mark.parametrize("where", ["x", "weight", "grad_output"])
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_nan_inf_never_finite_where_reference_is_not(where, m, dtype, rng):
    xs, ws, opts = (2, 4, 10, 9), (6, 2, 3, 3), {"padding": 1, "groups": 2}
    x, wt, b, gy = _inputs(rng, xs, ws, opts, dtype)
    if where == "x":
        x[0, 1, 2, 3], x[1, 0, 9, 8], x[1, 3, 0, 0] = np.nan, np.inf, -np.inf
    elif where == "weight":
        wt[1, 0, 0, 0], wt[4, 1, 2, 1] = np.inf, np.nan
    else:
        gy[0, 2, 0, 0], gy[1, 5, 4, 4], gy[1, 1, 9, 8] = np.inf, np.nan, -np.inf
    op = fastconv.Conv2dOp.from_plan(_plan(xs, ws, opts, dtype, m))
    # a non-finite input spoils its tiles only; a non-finite weight its output channel
    _assert_never_finite_where_reference_is_not(op, x, wt, b, gy, opts, dtype, spread=where != "weight")


def _assert_never_finite_where_reference_is_not(op, x, wt, b, gy, opts, dtype, spread):
    """y and grad_x of ``op``: non-finite wherever the reference is, the finite
    values within tolerance, and (``spread``) finite in most places."""
    with np.errstate(invalid="ignore", over="ignore"):
        got = (op.forward(x, wt, b), op.backward(gy)[0])
        want = (reference.conv2d(x, wt, b, **opts), reference.conv2d_backward(gy, x, wt, **opts)[0])
    for g, r, what in zip(got, want, ("y", "grad_x")):
        bad = ~np.isfinite(r)
        assert not np.isfinite(g[bad]).any(), f"{what}: finite where the reference is not"
        ok = np.isfinite(g)
        if spread:
            assert ok.sum() > 0.3 * ok.size, f"{what}: non-finite values spread too far"
        if ok.any():
            assert rel_err(g[ok], r[ok]) <= TOL[np.dtype(dtype)], what


def test_deep_sums_take_the_small_tile():
    """Beyond the C·R·S measured for F(4×4)'s accuracy the plan takes F(2×2)."""
    plan = fastconv.plan_conv2d((1, 1024, 16, 16), (8, 1024, 3, 3), algorithm="winograd")
    assert plan.cpu.winograd.m == 2 and "9216" in plan.reason("layout")


# --------------------------------------------------------------------------- dilated: space to batch

# (x shape, weight shape, options) of dilated 3×3 layers: the dh·dw sub-sampled
# grids run as one undilated problem (``_plan.space_to_batch_params``); phases
# with fewer outputs than others, asymmetric dilation and padding, "same",
# groups, x pixels no output reads (their grad_x is 0)
DILATED = [
    ((2, 8, 13, 11), (6, 8, 3, 3), {"padding": 1, "dilation": (2, 3)}),
    ((2, 6, 15, 15), (8, 3, 3, 3), {"padding": "same", "dilation": 3, "groups": 2}),
    ((1, 4, 9, 10), (5, 4, 3, 3), {"dilation": 2}),
    ((3, 5, 7, 7), (4, 5, 3, 3), {"padding": (3, 0), "dilation": (3, 1)}),
    ((1, 3, 12, 12), (4, 3, 3, 3), {"padding": 0, "dilation": 4}),
]


@pytest.mark.parametrize("need_input_grad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("xs, ws, opts", DILATED)
def test_dilated_runs_on_the_sub_sampled_grids(xs, ws, opts, dtype, need_input_grad, threads, rng, monkeypatch,
                                                maybe_torch):
    plan = fastconv.plan_conv2d(xs, ws, dtype=dtype, algorithm="winograd", need_input_grad=need_input_grad, **opts)
    sub = plan.cpu.winograd.space_to_batch
    p = plan.params
    assert sub is not None and sub.params == plan_rules.space_to_batch_params(p)
    assert sub.params.n == p.n * p.dh * p.dw and (sub.params.dh, sub.params.dw) == (1, 1)
    assert "space to batch" in plan.reason("layout")
    grids = spy_calls(monkeypatch, conv_winograd, "_gather_grids")
    x, wt, b, gy = _inputs(rng, xs, ws, opts, dtype)
    op = fastconv.Conv2dOp.from_plan(plan)
    y = op.forward(x, wt, b)
    grads = op.backward(gy)
    assert len(grids) == 3  # x for the forward; grad_output and x for the backward
    _close(y, reference.conv2d(x, wt, b, **opts), dtype, "y")
    want = reference.conv2d_backward(gy, x, wt, **opts)
    if need_input_grad:
        _close(grads[0], want[0], dtype, "grad_x")
    else:
        assert grads[0] is None
    assert_close(grads[1], want[1], dtype, "grad_weight")
    assert_close(grads[2], want[2], dtype, "grad_bias")
    if maybe_torch is not None and dtype == np.float32:
        t = maybe_torch
        ty = t.nn.functional.conv2d(t.from_numpy(x), t.from_numpy(wt), t.from_numpy(b), **opts)
        _close(y, ty.numpy().astype(np.float64), dtype, "y vs torch")


def test_dilated_finite_differences(rng):
    """grad_x and grad_weight of the dilated path against central differences (float64)."""
    xs, ws, opts = (1, 2, 9, 8), (3, 2, 3, 3), {"padding": 1, "dilation": (2, 3)}
    x, wt, _, gy = _inputs(rng, xs, ws, opts, np.float64)
    op = fastconv.Conv2dOp.from_plan(fastconv.plan_conv2d(xs, ws, dtype=np.float64, algorithm="winograd", **opts))
    op.forward(x, wt)
    gx, gw, _ = op.backward(gy)
    check_grads(lambda x: op.forward(x, wt, keep_for_backward=False), {"x": x}, {"x": gx}, gy,
                at=[(0, 0, 0, 0), (0, 1, 3, 4), (0, 0, 8, 7), (0, 1, 5, 2), (0, 0, 2, 7)], rtol=1e-7)
    check_grads(lambda wt: op.forward(x, wt, keep_for_backward=False), {"wt": wt}, {"wt": gw}, gy,
                at=[(0, 0, 0, 0), (2, 1, 2, 2), (1, 0, 1, 2)], rtol=1e-7)


@pytest.mark.parametrize("where", ["x", "grad_output"])
def test_dilated_nan_inf_never_finite_where_reference_is_not(where, rng):
    xs, ws, opts = (2, 4, 12, 11), (6, 4, 3, 3), {"padding": 2, "dilation": 2}
    x, wt, b, gy = _inputs(rng, xs, ws, opts, np.float64)
    if where == "x":
        x[0, 1, 2, 3], x[1, 0, 11, 10], x[1, 3, 0, 0] = np.nan, np.inf, -np.inf
    else:
        gy[0, 2, 0, 0], gy[1, 5, 4, 4] = np.inf, np.nan
    op = fastconv.Conv2dOp.from_plan(fastconv.plan_conv2d(xs, ws, dtype=np.float64, algorithm="winograd", **opts))
    _assert_never_finite_where_reference_is_not(op, x, wt, b, gy, opts, np.float64, spread=True)


@pytest.mark.parametrize("xs, ws, opts, picks", [
    ((8, 128, 56, 56), (128, 128, 3, 3), {"padding": 2, "dilation": 2}, ("winograd", "direct")),
    ((8, 256, 28, 28), (256, 256, 3, 3), {"padding": 2, "dilation": 2}, ("winograd", "direct")),
    ((8, 64, 56, 56), (64, 64, 3, 3), {"padding": 2, "dilation": 2}, ("direct", "direct")),  # 64 channels
    ((1, 128, 14, 14), (128, 128, 3, 3), {"padding": 2, "dilation": 2}, ("direct", "direct")),  # 16 tiles
    ((8, 128, 28, 28), (128, 128, 3, 3), {"padding": 1, "stride": 2}, ("direct", "direct")),
])
def test_auto_dilated_rule(xs, ws, opts, picks):
    """auto runs a dilated layer's forward by Winograd on its sub-sampled grids
    from WINOGRAD_DILATED_CHANNELS channels where the grids pass the undilated
    rule; its backward stays direct."""
    plan = fastconv.plan_conv2d(xs, ws, **opts)
    assert (plan.algorithm, plan.backward_algorithm) == picks
    if picks[0] == "winograd":
        assert plan.cpu.winograd.space_to_batch is not None
        assert "sub-sampled grids" in plan.reason("algorithm")


def test_auto_dilated_mixed_plan_runs(rng):
    """The mixed plan (forward Winograd on the grids, backward direct) through the op object."""
    xs, ws, opts = (2, 128, 24, 24), (128, 128, 3, 3), {"padding": 2, "dilation": 2}  # 8 grids of 3 x 3 tiles
    plan = fastconv.plan_conv2d(xs, ws, **opts)
    assert (plan.algorithm, plan.backward_algorithm) == ("winograd", "direct")
    x, wt, b, gy = _inputs(rng, xs, ws, opts, np.float32)
    op = fastconv.Conv2dOp.from_plan(plan)
    _close(op.forward(x, wt, b), reference.conv2d(x, wt, b, **opts), np.float32, "y")
    for got, want, what in zip(op.backward(gy), reference.conv2d_backward(gy, x, wt, **opts),
                               ("grad_x", "grad_weight", "grad_bias")):
        assert_close(got, want, np.float32, what)


def test_weights_near_the_float64_limit_stay_finite():
    """The weight transform scales each term before adding: float64 weights of
    4e307 (where g0 + 4·g2 + 2·g1 would overflow) give the reference's finite y."""
    x = np.full((1, 1, 6, 6), 1e-300)
    w = np.full((1, 1, 3, 3), 4e307)
    y = fastconv.conv2d(x, w, algorithm="winograd")
    want = reference.conv2d(x, w)
    assert np.isfinite(y).all()
    assert rel_err(y, want) <= TOL[np.dtype(np.float64)]
