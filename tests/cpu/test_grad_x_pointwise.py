"""grad_x of a 1×1 stride-1 unpadded layer read in place
(fastconv/cpu/conv_direct.py: grad_input_pointwise).

grad_output then has x's planes, so grad_x on the pixel tiles is the
forward's correlation of grad_output (read in place, NCHW, no padded copy)
with the transposed weights.  These tests check the plan's rule, that the
path runs (spies), its results against the float64 reference, torch and
finite differences, NaN/Inf against the reference (only real products, so
non-finite weights need no fallback), and every element of the poisoned
outputs, at realistic channel counts, with groups, in float32 and float64.
Layers with large planes stream grad_output's rows on the Q-lane tiles
instead (the tests at the end).
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers import assert_close, assert_grads_close, assert_same_nonfinite, check_grads, put_nonfinite, spy_calls

import fastconv
from fastconv import reference
from fastconv.cpu import conv_direct, conv_transpose
from fastconv.cpu.layout import PixelTiling

DTYPES = [np.float32, np.float64]

# (x shape, weight shape, groups): grad_x's output channels per group (C/g)
# fill the pixel tiles; several channel blocks, a partial tile, groups, odd planes
CASES = [
    ((3, 64, 9, 11), (80, 64, 1, 1), 1),
    ((2, 256, 7, 7), (96, 256, 1, 1), 1),
    ((2, 112, 5, 6), (96, 56, 1, 1), 2),
    ((4, 48, 13, 3), (64, 48, 1, 1), 1),
]


def _inputs(rng, xs, ws, groups, dtype):
    x = rng.standard_normal(xs).astype(dtype)
    wt = (rng.standard_normal(ws) / np.sqrt(ws[1])).astype(dtype)
    return x, wt, rng.standard_normal((xs[0], ws[0], xs[2], xs[3])).astype(dtype)


def _spy(monkeypatch):
    return spy_calls(monkeypatch, conv_direct, "grad_input_pointwise")


@pytest.mark.parametrize("xs, ws, groups", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_planned_in_place(xs, ws, groups, dtype):
    for threads in (1, 2):
        plan = fastconv.plan_conv2d(xs, ws, groups=groups, dtype=dtype, threads=threads)
        assert plan.backward_algorithm == "direct" and isinstance(plan.cpu.grad_input, PixelTiling), plan
        assert plan.reason("grad_input").startswith("a 1×1 stride-1 unpadded layer")


@pytest.mark.parametrize(
    "xs, ws, opts",
    [
        ((2, 64, 9, 9), (64, 64, 1, 1), {"padding": 1}),
        ((2, 64, 9, 9), (64, 64, 1, 1), {"stride": 2}),
        ((2, 64, 9, 9), (64, 64, 3, 3), {}),
    ],
    ids=["padded", "strided", "3x3"],
)
def test_not_planned_in_place(xs, ws, opts):
    plan = fastconv.plan_conv2d(xs, ws, **opts, algorithm="direct", threads=2)
    assert not plan.reason("grad_input").startswith("a 1×1")


@pytest.mark.parametrize("need_input_grad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("xs, ws, groups", CASES)
def test_matches_reference(xs, ws, groups, dtype, need_input_grad, threads, rng, monkeypatch):
    x, wt, gy = _inputs(rng, xs, ws, groups, dtype)
    seen = _spy(monkeypatch)
    grads = fastconv.conv2d_backward(gy, x, wt, groups=groups, need_input_grad=need_input_grad)
    assert len(seen) == int(need_input_grad)
    assert_grads_close(grads, reference.conv2d_backward(gy, x, wt, groups=groups), dtype, need_input_grad)


def test_op_and_non_contiguous_inputs(rng, monkeypatch):
    """Through Conv2dOp (forward then backward) and through strided views."""
    xs, ws, groups = CASES[0]
    x, wt, gy = _inputs(rng, xs, ws, groups, np.float32)
    want = reference.conv2d_backward(gy, x, wt)
    seen = _spy(monkeypatch)
    op = fastconv.Conv2dOp()
    op.forward(x, wt)
    assert_close(op.backward(gy)[0], want[0], np.float32, "grad_x (op)")
    gyv = np.repeat(gy, 2, axis=3)[..., ::2]
    wv = np.asfortranarray(wt)
    assert_close(fastconv.conv2d_backward(gyv, x, wv)[0], want[0], np.float32, "grad_x (views)")
    assert len(seen) == 2


def test_matches_torch(rng, torch):
    xs, ws, groups = CASES[2]
    x, wt, gy = _inputs(rng, xs, ws, groups, np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.conv2d(tx, torch.from_numpy(wt), groups=groups).backward(torch.from_numpy(gy))
    gx = fastconv.conv2d_backward(gy, x, wt, groups=groups)[0]
    assert_close(gx, tx.grad.numpy().astype(np.float64), np.float32, "grad_x vs torch")


def test_finite_differences(rng):
    """grad_x of sum(conv(x) * gy) against central differences (float64)."""
    xs, ws, groups = CASES[3]
    x, wt, gy = _inputs(rng, xs, ws, groups, np.float64)
    gx, _, _ = fastconv.conv2d_backward(gy, x, wt)
    check_grads(lambda x: fastconv.conv2d(x, wt), {"x": x}, {"x": gx}, gy,
                at=[(0, 0, 0, 0), (1, 5, 3, 2), (3, 47, 12, 2), (2, 20, 0, 1)], rtol=1e-7)


@pytest.mark.parametrize("where", ["grad_output", "weight"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_nan_inf_match_reference(where, dtype, rng, monkeypatch):
    """Only the products PyTorch computes: a non-finite weight reaches
    exactly its input channel's grad_x, still in place."""
    xs, ws, groups = CASES[0]
    x, wt, gy = _inputs(rng, xs, ws, groups, dtype)
    put_nonfinite(where, gy, wt, [(0, 2, 0, 0), (1, 5, 3, 2), (2, 0, 8, 10)], [(1, 7, 0, 0), (40, 31, 0, 0)])
    seen = _spy(monkeypatch)
    with np.errstate(invalid="ignore", over="ignore"):
        got = fastconv.conv2d_backward(gy, x, wt)[0]
        want = reference.conv2d_backward(gy, x, wt)[0]
    assert len(seen) == 1
    assert_same_nonfinite(got, want, dtype, "grad_x")
    assert np.isfinite(got).any() and not np.isfinite(got).all()


def test_conv_transpose2d_runs_in_place(rng, monkeypatch):
    """conv_transpose2d is conv2d's grad_x: the same plan, the same kernel."""
    xs, ws, groups = CASES[2]
    _, wt, gy = _inputs(rng, xs, ws, groups, np.float32)
    seen = spy_calls(monkeypatch, conv_transpose, "grad_input_pointwise")
    y = fastconv.conv_transpose2d(gy, wt, groups=groups)
    assert seen
    assert_close(y, reference.conv_transpose2d(gy, wt, groups=groups), np.float32, "conv_transpose2d")


# --------------------------------------------------------------------------- large planes: Q-lane tiles

# (x shape, weight shape, groups) of 1×1 layers whose grad_x streams grad_output's
# rows on the Q-lane tiles (``_plan._grad_x_streams_rows``: planes of >= 3136
# pixels, <= 128 grad_output channels and >= 96 grad_x channels per group)
STREAM_CASES = [
    ((2, 96, 56, 56), (40, 96, 1, 1), 1),
    ((1, 200, 57, 61), (128, 200, 1, 1), 1),
    ((1, 192, 56, 56), (64, 96, 1, 1), 2),
]


@pytest.mark.parametrize("xs, ws, groups", STREAM_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_large_planes_stream_on_the_q_lane_tiles(xs, ws, groups, dtype, threads, rng, monkeypatch, maybe_torch):
    """grad_x of a 1×1 layer with large planes: a correlation of a copy of
    grad_output on the Q-lane tiles (not read in place), against the float64
    reference and torch, poisoned outputs."""
    plan = fastconv.plan_conv2d(xs, ws, groups=groups, dtype=dtype)
    assert not isinstance(plan.cpu.grad_input, PixelTiling) and plan.cpu.grad_input.channels == 8, plan
    assert plan.reason("grad_input").startswith("correlation of grad_output")
    calls = _spy(monkeypatch)
    x, wt, gy = _inputs(rng, xs, ws, groups, dtype)
    got = fastconv.conv2d_backward(gy, x, wt, groups=groups)
    assert not calls
    want = reference.conv2d_backward(gy, x, wt, groups=groups)
    assert_grads_close(got, want, dtype)
    if maybe_torch is not None:
        t = maybe_torch
        tgx = t.nn.grad.conv2d_input(xs, t.from_numpy(wt), t.from_numpy(gy), groups=groups)
        assert_close(got[0], tgx.numpy(), dtype, "grad_x against torch")


def test_large_planes_with_64_channels_stay_in_place():
    plan = fastconv.plan_conv2d((8, 64, 56, 56), (64, 64, 1, 1))
    assert isinstance(plan.cpu.grad_input, PixelTiling)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_large_planes_nonfinite_weights_fall_back_exactly(dtype, rng):
    """The Q-lane correlation multiplies the copy's padding by the weights: with a
    non-finite weight grad_x falls back to the exact scatter (as the reference)."""
    xs, ws = (1, 96, 56, 56), (40, 96, 1, 1)
    x, wt, gy = _inputs(rng, xs, ws, 1, dtype)
    wt[3, 7, 0, 0], wt[20, 50, 0, 0] = np.inf, np.nan
    got = fastconv.conv2d_backward(gy, x, wt)[0]
    assert_same_nonfinite(got, reference.conv2d_backward(gy, x, wt)[0], dtype, "grad_x")
