"""Strided grad_x on the sub-pixel grids (fastconv/cpu/conv_subpixel.py).

The plan of a stride > 1, dilation-1 direct backward carries one stride-1
correlation per sub-pixel grid of grad_x (``plan.cpu.grad_input_phases``);
``auto`` runs strided backwards by im2col (measured faster with 2 threads),
so these tests ask for "direct".  They check that the plan has the grids, that its results match the float64
reference, torch and finite differences, that NaN/Inf propagate as in the
reference (non-finite weights fall back to the exact scatter), and that every
element of the (poisoned) outputs is written.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers import assert_close, assert_grads_close, assert_same_nonfinite, check_grads, put_nonfinite, spy_calls

import fastconv
from fastconv import reference
from fastconv.cpu import conv_direct, conv_subpixel

DTYPES = [np.float32, np.float64]

# (x shape, weight shape, options): strides 2, 3 and (2, 3), kernels 1..5,
# padding none, symmetric, asymmetric ("same") and larger than the stride, groups
CASES = [
    ((2, 4, 9, 8), (6, 4, 3, 3), {"stride": 2, "padding": 1}),
    ((2, 4, 10, 11), (6, 2, 3, 3), {"stride": 2, "groups": 2}),
    ((1, 3, 7, 7), (2, 3, 5, 5), {"stride": 3, "padding": 2}),
    ((2, 2, 8, 9), (4, 2, 1, 1), {"stride": 2}),
    ((2, 2, 8, 9), (4, 2, 3, 2), {"stride": (2, 3), "padding": (1, 0)}),
    ((1, 2, 5, 5), (2, 2, 3, 3), {"stride": 3}),
    ((3, 6, 12, 10), (9, 2, 4, 4), {"stride": 2, "padding": "same", "groups": 3}),
    ((9, 8, 13, 13), (16, 8, 3, 3), {"stride": 2, "padding": 1}),
]


def _inputs(rng, xs, ws, opts, dtype):
    x = rng.standard_normal(xs).astype(dtype)
    wt = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    y_shape = reference.conv2d(x[:, :, :, :], wt, None, **opts).shape
    return x, wt, rng.standard_normal(y_shape).astype(dtype)


@pytest.mark.parametrize("xs, ws, opts", CASES)
def test_direct_plans_subpixel_grad_x(xs, ws, opts):
    plan = fastconv.plan_conv2d(xs, ws, **opts, algorithm="direct")
    assert plan.backward_algorithm == "direct"
    phases = plan.cpu.grad_input_phases
    p = plan.params
    assert phases is not None and 1 <= len(phases) <= p.sh * p.sw
    assert "sub-pixel" in repr(plan) and "sub-pixel" in plan.reason("grad_input")
    # the grids tile grad_x exactly once
    cover = np.zeros((p.h, p.w), dtype=int)
    for ph in phases:
        cover[ph.row0::p.sh, ph.col0::p.sw] += 1
        assert cover[ph.row0::p.sh, ph.col0::p.sw].shape == (ph.rows, ph.cols)
    assert (cover == 1).all()


def test_plan_table_other_strided_backwards():
    no_gx = fastconv.plan_conv2d((2, 4, 9, 9), (6, 4, 3, 3), stride=2, need_input_grad=False, algorithm="direct")
    assert no_gx.cpu.grad_input_phases is None and "skipped" in repr(no_gx)
    for dilation in (1, 2):  # auto: the strided backward by im2col (measured faster with 2 threads)
        auto = fastconv.plan_conv2d((2, 4, 12, 12), (6, 4, 3, 3), stride=2, dilation=dilation)
        assert (auto.algorithm, auto.backward_algorithm) == ("direct", "im2col")
        assert "strided backward by im2col" in auto.reason("algorithm")
    forced = fastconv.plan_conv2d((2, 4, 12, 12), (6, 4, 3, 3), stride=2, dilation=2, algorithm="direct")
    assert forced.cpu.grad_input_phases is None and "scatter" in forced.reason("grad_input")
    unit = fastconv.plan_conv2d((2, 4, 12, 12), (6, 4, 3, 3), padding=1)
    assert unit.cpu.grad_input_phases is None


@pytest.mark.parametrize("need_input_grad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("xs, ws, opts", CASES)
def test_matches_reference(xs, ws, opts, dtype, need_input_grad, threads, rng, monkeypatch):
    x, wt, gy = _inputs(rng, xs, ws, opts, dtype)
    calls = spy_calls(monkeypatch, conv_direct, "grad_input_subpixel")
    scatter = spy_calls(monkeypatch, conv_direct, "grad_input_scatter")
    grads = fastconv.conv2d_backward(gy, x, wt, **opts, need_input_grad=need_input_grad, algorithm="direct")
    assert len(calls) == int(need_input_grad) and not scatter
    assert_grads_close(grads, reference.conv2d_backward(gy, x, wt, **opts), dtype, need_input_grad)


@pytest.mark.parametrize("xs, ws, opts", CASES[:4])
def test_non_contiguous_inputs(xs, ws, opts, rng):
    x, wt, gy = _inputs(rng, xs, ws, opts, np.float64)
    # the same values through transposed / strided views
    xv = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    gyv = np.repeat(gy, 2, axis=3)[..., ::2]
    wv = np.asfortranarray(wt)
    got = fastconv.conv2d_backward(gyv, xv, wv, **opts, algorithm="direct")
    for g, r, what in zip(got, reference.conv2d_backward(gy, x, wt, **opts), ("grad_x", "grad_weight", "grad_bias")):
        assert_close(g, r, np.float64, what)


@pytest.mark.parametrize("xs, ws, opts", [CASES[0], CASES[4], CASES[6]])
def test_matches_torch(xs, ws, opts, rng, torch):
    if opts.get("padding") == "same":
        pytest.skip("torch refuses padding='same' at stride > 1")
    x, wt, gy = _inputs(rng, xs, ws, opts, np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.conv2d(tx, torch.from_numpy(wt), **opts)
    ty.backward(torch.from_numpy(gy))
    gx, _, _ = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct")
    assert_close(gx, tx.grad.numpy().astype(np.float64), np.float32, "grad_x vs torch")


def test_finite_differences(rng):
    """grad_x of sum(conv(x) * gy) against central differences (float64)."""
    xs, ws, opts = (1, 2, 7, 8), (3, 2, 3, 3), {"stride": (2, 3), "padding": 1}
    x, wt, gy = _inputs(rng, xs, ws, opts, np.float64)
    gx, _, _ = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct")
    check_grads(lambda x: fastconv.conv2d(x, wt, **opts), {"x": x}, {"x": gx}, gy,
                at=[(0, 0, 0, 0), (0, 1, 3, 4), (0, 0, 6, 7), (0, 1, 5, 2), (0, 0, 2, 6)], rtol=1e-7)


@pytest.mark.parametrize("where", ["grad_output", "weight"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_nan_inf_match_reference(where, dtype, rng, monkeypatch):
    """NaN/Inf in grad_output reach the grad_x pixels they touch (sub-pixel
    path); non-finite weights take the exact scatter, like the stride-1 path."""
    xs, ws, opts = CASES[0]
    x, wt, gy = _inputs(rng, xs, ws, opts, dtype)
    put_nonfinite(where, gy, wt, [(0, 2, 0, 0), (1, 5, 3, 2), (1, 0, 4, 3)], [(1, 0, 0, 0), (4, 1, 2, 1)])
    sub = spy_calls(monkeypatch, conv_direct, "grad_input_subpixel")
    with np.errstate(invalid="ignore", over="ignore"):
        got = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct")
        want = reference.conv2d_backward(gy, x, wt, **opts)
    assert len(sub) == (where == "grad_output")
    for g, r, what in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
        assert_same_nonfinite(g, r, dtype, what)


def test_sub_kernel_is_the_mirrored_transposed_tap_grid():
    plan = fastconv.plan_conv2d((1, 4, 9, 9), (6, 2, 3, 3), stride=2, groups=2, algorithm="direct")
    p, phases = plan.params, plan.cpu.grad_input_phases
    w = np.arange(np.prod(p.weight_shape), dtype=np.float64).reshape(p.weight_shape)
    subs = conv_subpixel._sub_kernels(w, p, phases)
    assert len(subs) == len(phases) == 4
    for ph, sub in zip(phases, subs):
        taps = w[:, :, ph.tap_r0 :: 2, ph.tap_s0 :: 2][:, :, ::-1, ::-1]
        assert sub.shape == (4, 3) + taps.shape[2:]
        for g in range(2):  # channel c of group g reads output channel k of that group
            for c in range(2):
                for k in range(3):
                    np.testing.assert_array_equal(sub[g * 2 + c, k], taps[g * 3 + k, c])
    # group 1, input channel 1 (global 3), output channel 2 of the group (global 5), taps (1, 0)
    sub = subs[[(ph.tap_r0, ph.tap_s0) for ph in phases].index((1, 0))]
    assert sub.shape == (4, 3, 1, 2)
    np.testing.assert_array_equal(sub[3, 2], w[5, 1, 1::2, 0::2][::-1, ::-1])
