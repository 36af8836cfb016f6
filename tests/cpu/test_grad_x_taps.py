"""grad_x by taps (fastconv/cpu/engine/pixels.py: grad_x_taps).

Where grad_x has many more pixels than grad_output (an unpadded convolution
of a small plane, e.g. MNIST's 13x13 -> 11x11 and 5x5 -> 3x3), the plan of a
stride-1 direct backward computes grad_x by taps: each grad_output pixel's
(tap, input channel) contributions on the pixel tiles, added into a tile of
grad_x.  These tests check the plan's rule, that the path runs (spies), its
results against the float64 reference, torch and finite differences, NaN/Inf
against the reference (it multiplies only the products PyTorch does, so
non-finite weights need no fallback), every element of the poisoned outputs,
and the kernel itself at strides, dilations, groups and every channel slot.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers import assert_close, assert_grads_close, assert_same_nonfinite, check_grads, put_nonfinite, spy_calls

import fastconv
from fastconv import reference
from fastconv.cpu import conv_direct, conv_direct_bi, conv_transpose
from fastconv.cpu.engine.pixels import grad_x_taps
from fastconv.cpu.layout import TapTiling

DTYPES = [np.float32, np.float64]

# (x shape, weight shape, options, channels per tap but at most the lanes): every case is
# planned by taps with 1 and 2 threads; the standard and the batch-inner backward,
# one, two and four vectors per tap, 3x3 and 5x5 kernels, groups, dilation,
# asymmetric padding, more than one channel block
CASES = [
    ((6, 32, 13, 13), (64, 32, 3, 3), {}, 32),  # MNIST's second conv (standard backward)
    ((9, 64, 5, 5), (64, 64, 3, 3), {}, 64),  # MNIST's third (batch-inner backward)
    ((4, 16, 12, 11), (64, 16, 5, 5), {}, 16),
    ((3, 32, 10, 10), (128, 16, 3, 3), {"groups": 2}, 16),
    ((4, 32, 13, 12), (80, 32, 3, 3), {"dilation": 2, "padding": (1, 0)}, 32),
    ((2, 128, 6, 7), (64, 128, 3, 3), {}, 64),
]


def _inputs(rng, xs, ws, opts, dtype):
    x = rng.standard_normal(xs).astype(dtype)
    wt = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(dtype)
    return x, wt, rng.standard_normal(reference.conv2d(x, wt, **opts).shape).astype(dtype)


def _spy_taps(monkeypatch):
    seen: list = []
    for mod in (conv_direct, conv_direct_bi):
        spy_calls(monkeypatch, mod, "grad_input_taps", into=seen)
    return seen


@pytest.mark.parametrize("xs, ws, opts, channels", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_planned_by_taps(xs, ws, opts, channels, dtype):
    for threads in (1, 2):
        plan = fastconv.plan_conv2d(xs, ws, **opts, dtype=dtype, threads=threads)
        t = plan.cpu.grad_input
        assert plan.backward_algorithm == "direct" and isinstance(t, TapTiling), f"not by taps: {plan}"
        vw = 64 // np.dtype(dtype).itemsize
        assert t.lanes == 4 * vw and t.channels == min(channels, t.lanes)
        assert "grad_x by taps" in repr(plan) and plan.reason("grad_input").startswith("by taps:")
        # several small images to a task only to fill whole 6-pixel tiles
        assert t.images == 1 or t.images * plan.params.oh * plan.params.ow % 6 == 0
    # MNIST's third conv: 3x3 grad_output pixels, two images fill three tiles
    assert fastconv.plan_conv2d((64, 64, 5, 5), (64, 64, 3, 3), threads=2).cpu.grad_input.images == 2


@pytest.mark.parametrize(
    "xs, ws, opts, why",
    [
        ((8, 64, 14, 14), (64, 64, 3, 3), {"padding": 1}, "grad_x no larger than grad_output"),
        ((8, 64, 13, 13), (64, 64, 3, 3), {"stride": 2}, "strided: the sub-pixel grids"),
        ((8, 6, 14, 14), (16, 6, 5, 5), {}, "6 channels fill 6/16 of a vector"),
        ((8, 64, 5, 5), (32, 64, 3, 3), {}, "32 output channels: too shallow a sum"),
        ((1, 64, 13, 13), (64, 64, 3, 3), {}, "one task for two threads"),
        ((4, 32, 75, 75), (32, 32, 11, 11), {}, "4096 < 65x65 grad_output pixels"),
    ],
)
def test_not_planned_by_taps(xs, ws, opts, why):
    plan = fastconv.plan_conv2d(xs, ws, **opts, algorithm="direct", threads=2)
    assert not isinstance(plan.cpu.grad_input, TapTiling), why


@pytest.mark.parametrize("need_input_grad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("xs, ws, opts, channels", CASES)
def test_matches_reference(xs, ws, opts, channels, dtype, need_input_grad, threads, rng, monkeypatch):
    x, wt, gy = _inputs(rng, xs, ws, opts, dtype)
    seen = _spy_taps(monkeypatch)
    grads = fastconv.conv2d_backward(gy, x, wt, **opts, need_input_grad=need_input_grad)
    assert len(seen) == int(need_input_grad)
    assert_grads_close(grads, reference.conv2d_backward(gy, x, wt, **opts), dtype, need_input_grad)


@pytest.mark.parametrize("xs, ws, opts, channels", CASES[:2])
def test_op_and_non_contiguous_inputs(xs, ws, opts, channels, rng, monkeypatch):
    """Through Conv2dOp (forward then backward, the kept x) and through strided views."""
    x, wt, gy = _inputs(rng, xs, ws, opts, np.float32)
    want = reference.conv2d_backward(gy, x, wt, **opts)
    seen = _spy_taps(monkeypatch)
    op = fastconv.Conv2dOp(**opts)
    op.forward(x, wt)
    assert_close(op.backward(gy)[0], want[0], np.float32, "grad_x (op)")
    gyv = np.repeat(gy, 2, axis=3)[..., ::2]
    wv = np.asfortranarray(wt)
    assert_close(fastconv.conv2d_backward(gyv, x, wv, **opts)[0], want[0], np.float32, "grad_x (views)")
    assert len(seen) == 2


@pytest.mark.parametrize("xs, ws, opts, channels", [CASES[0], CASES[3], CASES[4]])
def test_matches_torch(xs, ws, opts, channels, rng, torch):
    x, wt, gy = _inputs(rng, xs, ws, opts, np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.conv2d(tx, torch.from_numpy(wt), **opts).backward(torch.from_numpy(gy))
    gx = fastconv.conv2d_backward(gy, x, wt, **opts)[0]
    assert_close(gx, tx.grad.numpy().astype(np.float64), np.float32, "grad_x vs torch")


def test_finite_differences(rng):
    """grad_x of sum(conv(x) * gy) against central differences (float64), corners included."""
    xs, ws, opts = (4, 16, 7, 8), (64, 16, 3, 3), {"dilation": (1, 2)}
    assert isinstance(fastconv.plan_conv2d(xs, ws, **opts, dtype=np.float64).cpu.grad_input, TapTiling)
    x, wt, gy = _inputs(rng, xs, ws, opts, np.float64)
    gx, _, _ = fastconv.conv2d_backward(gy, x, wt, **opts)
    check_grads(lambda x: fastconv.conv2d(x, wt, **opts), {"x": x}, {"x": gx}, gy,
                at=[(0, 0, 0, 0), (1, 5, 3, 4), (3, 15, 6, 7), (2, 9, 0, 7), (0, 3, 6, 0)], rtol=1e-7)


@pytest.mark.parametrize("where", ["grad_output", "weight"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_nan_inf_match_reference(where, dtype, rng, monkeypatch):
    """Only the products PyTorch computes: an Inf weight reaches exactly the
    grad_x pixels its tap touches (a full correlation would multiply it by
    the zeros around grad_output), still by taps."""
    xs, ws, opts, _ = CASES[0]
    x, wt, gy = _inputs(rng, xs, ws, opts, dtype)
    put_nonfinite(where, gy, wt, [(0, 2, 0, 0), (1, 5, 3, 2), (4, 0, 10, 10)], [(1, 0, 0, 0), (40, 31, 2, 1)])
    seen = _spy_taps(monkeypatch)
    with np.errstate(invalid="ignore", over="ignore"):
        got = fastconv.conv2d_backward(gy, x, wt, **opts)[0]
        want = reference.conv2d_backward(gy, x, wt, **opts)[0]
    assert len(seen) == 1
    assert_same_nonfinite(got, want, dtype, "grad_x")
    assert np.isfinite(got).any() and not np.isfinite(got).all()


def test_conv_transpose2d_runs_taps(rng, monkeypatch):
    """conv_transpose2d is conv2d's grad_x: the same plan, the same kernel."""
    xs, ws, opts, _ = CASES[1]
    _, wt, gy = _inputs(rng, xs, ws, opts, np.float32)
    seen = spy_calls(monkeypatch, conv_transpose, "grad_input_taps")
    y = fastconv.conv_transpose2d(gy, wt)
    assert seen
    assert_close(y, reference.conv_transpose2d(gy, wt), np.float32, "conv_transpose2d")


KERNEL_CASES = [
    ((2, 12, 9, 11), (8, 6, 3, 5), (2, 1), (1, 2), (1, 2), 2),
    ((2, 20, 10, 10), (16, 20, 5, 5), (1, 1), (2, 2), (1, 1), 1),
    ((2, 70, 7, 6), (40, 35, 3, 3), (2, 2), (1, 0), (2, 1), 2),
    ((3, 33, 6, 6), (5, 33, 1, 1), (1, 1), (0, 0), (1, 1), 1),
    ((5, 16, 5, 5), (16, 16, 3, 3), (1, 1), (0, 0), (1, 1), 1),
]


@pytest.mark.parametrize("images", [1, 2, 3])
@pytest.mark.parametrize("vectors", [1, 2, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("xs, ws, stride, padding, dilation, groups", KERNEL_CASES)
def test_kernel_any_geometry(xs, ws, stride, padding, dilation, groups, dtype, vectors, images, rng):
    """The kernel at strides, dilations, padding and groups the plan does not
    send it yet, with one, two and four vectors of channels per tap (channel
    blocks and empty lanes), one to three images per task (a shorter last
    block), into a NaN-filled grad_x: every element written."""
    opts = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    x, wt, gy = _inputs(rng, xs, ws, opts, dtype)
    vw = 64 // np.dtype(dtype).itemsize
    gx = np.full(xs, np.nan, dtype=dtype)
    grad_x_taps(gy, wt, gx, stride, padding, dilation, groups, TapTiling(vectors * vw, 4 * vw, images))
    assert_close(gx, reference.conv2d_backward(gy, x, wt, **opts)[0], dtype, "grad_x")
