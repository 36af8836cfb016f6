"""Pixel tiles whose tasks pack their own weights (``PixelTiling.packs_per_task``,
``engine.packing``): layers whose weights outweigh their pixels (batch 1, small
planes) read the weight once, with no packed copy.

The forward and grad_x (which packs the weight's swapped view) against the
float64 reference and torch, poisoned outputs, 1 and 2 threads; the plan's
rule; and every packing of the whole weight against the scalar one."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
from tests.helpers import assert_close, assert_grads_close, assert_same_nonfinite, run_plan, with_cpu

import fastconv
from fastconv import _plan as plan_rules
from fastconv import reference
from fastconv.cpu.engine import pixels
from fastconv.cpu.engine.packing import Unpacked
from fastconv.cpu.layout import PixelTiling

DTYPES = [np.float32, np.float64]
# the module (the package exports its function of the same name)
engine_correlate = importlib.import_module("fastconv.cpu.engine.correlate")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("g, k, c, t, kt", [
    (1, 512, 512, 9, 64), (2, 20, 70, 9, 64), (3, 5, 17, 25, 16), (1, 3, 130, 1, 64), (1, 40, 33, 49, 32),
    (4, 64, 8, 9, 32),
])
def test_whole_weight_packings_match_the_scalar_one(g, k, c, t, kt, dtype, rng):
    """The transposing packers (a C-contiguous weight, and grad_x's swapped
    view) write what the scalar ``_pack`` writes, zero lanes included."""
    if kt * np.dtype(dtype).itemsize % 64:
        pytest.skip("blocks of whole vectors only")
    w = rng.standard_normal((g * k, c, t)).astype(dtype)
    for w4 in (w.reshape(g, k, c, t), w.reshape(g, k, c, t).transpose(0, 2, 1, 3)):
        want = engine_correlate._pack(w4, np.full((g, -(-w4.shape[1] // kt), w4.shape[2], t, kt), np.nan, dtype))
        np.testing.assert_array_equal(engine_correlate.pack_weights_by(w4, kt), want)


def test_pack_weights_hands_over_the_weight_only_where_its_tasks_pack():
    w4 = np.zeros((1, 64, 32, 9), np.float32)
    packing = PixelTiling(6, 4, 64, 96, 10, packs_per_task=True)
    got = engine_correlate.pack_weights(w4, packing)
    assert isinstance(got, Unpacked) and not got.swapped and got.shape == w4.shape
    swapped = engine_correlate.pack_weights(w4.transpose(0, 2, 1, 3), packing)
    assert isinstance(swapped, Unpacked) and swapped.swapped and swapped.shape == (1, 32, 64, 9)
    assert isinstance(engine_correlate.pack_weights(w4, dataclasses.replace(packing, packs_per_task=False)),
                      np.ndarray)
    # a view the packing cannot read is packed before the call
    assert isinstance(engine_correlate.pack_weights(w4[:, :, ::2], packing), np.ndarray)


@pytest.mark.parametrize("xs, ws, opts, fwd, gx", [
    ((1, 512, 14, 14), (512, 512, 3, 3), {"padding": 1}, True, True),  # VGG batch 1
    ((1, 256, 28, 28), (256, 256, 3, 3), {"padding": 1}, True, True),
    ((2, 96, 10, 10), (600, 96, 3, 3), {"stride": 2, "padding": 1}, True, False),
    ((32, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, False, False),  # pixels outweigh the weight
    ((1, 64, 14, 14), (64, 64, 3, 3), {"padding": 1}, False, False),  # a small weight
])
def test_plan_packs_per_task_for_weight_bound_layers(xs, ws, opts, fwd, gx):
    plan = fastconv.plan_conv2d(xs, ws, algorithm="direct", **opts)
    assert getattr(plan.cpu.forward, "packs_per_task", False) is fwd
    assert getattr(plan.cpu.grad_input, "packs_per_task", False) is gx
    if fwd:
        assert "weights packed per task" in repr(plan)
        assert plan.cpu.forward.block <= plan_rules.PACK_PER_TASK_PIXELS


# Shapes that reach the per-task packing in both dtypes: output channels not a
# multiple of the tile, input channels not a multiple of the pass, groups,
# stride, dilation, several pixel blocks, no bias.
CASES = [
    ((1, 96, 9, 9), (360, 96, 3, 3), {"padding": 1}),
    ((1, 70, 12, 12), (1000, 70, 3, 3), {"dilation": 2}),
    ((2, 96, 10, 10), (600, 96, 3, 3), {"stride": 2, "padding": 1}),
    ((1, 130, 9, 9), (600, 65, 3, 3), {"padding": 1, "groups": 2}),
    ((1, 300, 8, 8), (300, 300, 3, 3), {"padding": 1}),
    ((2, 40, 30, 30), (600, 40, 5, 5), {}),
]


def _packing_plan(xs, ws, opts, dtype):
    plan = fastconv.plan_conv2d(xs, ws, dtype=dtype, algorithm="direct", **opts)
    assert isinstance(plan.cpu.forward, PixelTiling) and plan.cpu.forward.packs_per_task, plan
    return plan


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("xs, ws, opts", CASES)
def test_matches_reference_and_torch(xs, ws, opts, dtype, threads, rng, maybe_torch, monkeypatch):
    x = rng.standard_normal(xs).astype(dtype)
    wt = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if xs[0] == 1 else None
    plan = _packing_plan(xs, ws, opts, dtype)
    calls = []
    real = pixels.corr_pixels_packing
    monkeypatch.setattr(pixels, "corr_pixels_packing", lambda *a: calls.append(1) or real(*a))
    want = reference.conv2d(x, wt, b, **opts)
    gy = rng.standard_normal(want.shape).astype(dtype)
    y, grads = run_plan(plan, x, wt, b, gy)
    assert calls, "the per-task packing ran"
    assert_close(y, want, dtype, "y")
    assert_grads_close(grads, reference.conv2d_backward(gy, x, wt, **opts), dtype)
    if maybe_torch is not None:
        t = maybe_torch
        tb = None if b is None else t.from_numpy(b)
        ty = t.nn.functional.conv2d(t.from_numpy(x), t.from_numpy(wt), tb, **opts)
        assert_close(y, ty.numpy(), dtype, "y against torch")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_grad_x_packs_the_swapped_weight(dtype, threads, rng, monkeypatch):
    """grad_x's correlation reads the weight transposed: its tasks pack that view."""
    xs, ws, opts = (1, 256, 12, 12), (320, 256, 3, 3), {"padding": 1}
    plan = fastconv.plan_conv2d(xs, ws, dtype=dtype, algorithm="direct", **opts)
    assert plan.cpu.grad_input.packs_per_task
    seen = []
    real = pixels.corr_pixels_packing
    monkeypatch.setattr(pixels, "corr_pixels_packing", lambda *a: seen.append(a[5]) or real(*a))
    x = rng.standard_normal(xs).astype(dtype)
    wt = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    gy = rng.standard_normal((1, 320, 12, 12)).astype(dtype)
    got = fastconv.conv2d_backward(gy, x, wt, algorithm="direct", **opts)
    assert True in seen, "grad_x packed the swapped view per task"
    assert_grads_close(got, reference.conv2d_backward(gy, x, wt, **opts), dtype)


def test_packed_before_the_call_gives_the_same_result(rng):
    """The same plan with the weight packed before the call: bit for bit (the
    tiles sum in the same order)."""
    xs, ws, opts = (1, 96, 9, 9), (360, 96, 3, 3), {"padding": 1}
    plan = _packing_plan(xs, ws, opts, np.float32)
    x = rng.standard_normal(xs).astype(np.float32)
    wt = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    gy = rng.standard_normal((1, 360, 9, 9)).astype(np.float32)
    y, grads = run_plan(plan, x, wt, b, gy)
    prepacked = with_cpu(plan, forward=dataclasses.replace(plan.cpu.forward, packs_per_task=False),
                         grad_input=dataclasses.replace(plan.cpu.grad_input, packs_per_task=False))
    y0, grads0 = run_plan(prepacked, x, wt, b, gy)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(grads[0], grads0[0])


@pytest.mark.parametrize("where", ["x", "weight"])
def test_nonfinite_propagate_like_the_reference(where, rng):
    xs, ws, opts = (1, 96, 9, 9), (360, 96, 3, 3), {"padding": 1}
    _packing_plan(xs, ws, opts, np.float64)
    x = rng.standard_normal(xs)
    wt = rng.standard_normal(ws) / np.sqrt(96 * 9)
    if where == "x":
        x[0, 5, 2, 3], x[0, 50, 8, 8], x[0, 90, 0, 0] = np.inf, np.nan, -np.inf
    else:
        wt[7, 3, 1, 1], wt[300, 90, 0, 2] = np.inf, np.nan
    got = fastconv.conv2d(x, wt, None, algorithm="direct", **opts)
    assert_same_nonfinite(got, reference.conv2d(x, wt, None, **opts), np.float64, f"y, non-finite {where}")
