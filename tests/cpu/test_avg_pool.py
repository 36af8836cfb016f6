"""fastconv.avg_pool2d / avg_pool2d_backward on the CPU: against the float64
reference and torch (float64) for every option, finite differences, NaN/Inf
as torch, bad arguments.  Outputs are poisoned (conftest)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference
from fastconv._params import avg_pool2d_params

from tests.helpers import assert_close, assert_same_nonfinite, check_grads, spy_calls

DTYPES = [np.float32, np.float64]

CASES = [
    ((2, 3, 6, 7), dict(kernel_size=2)),
    ((1, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ((2, 2, 7, 6), dict(kernel_size=3, stride=2, ceil_mode=True)),
    # ceil_mode overhang past the right padding: not counted in the divisor
    ((1, 2, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    # a ceil_mode window that would start in the right padding is dropped (3 -> 2 outputs)
    ((1, 1, 3, 3), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 6, 7), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    ((2, 2, 5, 5), dict(kernel_size=3, stride=1, padding=1, divisor_override=4)),
    ((1, 2, 5, 6), dict(kernel_size=2, stride=1, divisor_override=-3, ceil_mode=True)),
    ((1, 3, 5, 4), dict(kernel_size=1, stride=2, ceil_mode=True)),
    ((3, 6, 7), dict(kernel_size=3, stride=2, padding=1)),  # unbatched
    # one window per plane (OH = OW = 1): the single-window kernels
    ((2, 8, 7, 7), dict(kernel_size=7)),  # global average pool
    ((1, 3, 3, 3), dict(kernel_size=4, stride=4, padding=1)),
    ((1, 3, 3, 3), dict(kernel_size=4, stride=4, padding=1, count_include_pad=False)),
    ((2, 3, 5, 4), dict(kernel_size=(5, 4), divisor_override=7)),
    ((1, 2, 6, 5), dict(kernel_size=(4, 3), stride=5)),  # a window that does not cover the plane
    # ceil_mode: the second window would start in the right padding and is dropped (one window left)
    ((1, 2, 3, 3), dict(kernel_size=3, stride=4, padding=1, ceil_mode=True)),
    ((1, 2, 3, 3), dict(kernel_size=3, stride=4, padding=1, ceil_mode=True, count_include_pad=False)),
]
IDS = [f"{'x'.join(map(str, s))}-" + "-".join(f"{k}{v}" for k, v in kw.items()) for s, kw in CASES]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kw", CASES, ids=IDS)
def test_matches_reference(rng, shape, kw, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    y = fastconv.avg_pool2d(x, **kw)
    ry = reference.avg_pool2d(x, **kw)
    assert y.dtype == dtype and y.shape == ry.shape
    assert_close(y, ry, dtype, "y")
    gy = rng.standard_normal(ry.shape).astype(dtype)
    gx = fastconv.avg_pool2d_backward(gy, shape, **kw)
    assert gx.dtype == dtype and gx.shape == shape
    assert_close(gx, reference.avg_pool2d_backward(gy, shape, **kw), dtype, "grad_x")


@pytest.mark.parametrize("shape, kw", CASES, ids=IDS)
def test_matches_torch(rng, torch, shape, kw):
    x = rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, **kw)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    assert_close(fastconv.avg_pool2d(x, **kw), ty.detach().numpy(), np.float64, "y")
    assert_close(fastconv.avg_pool2d_backward(gy, shape, **kw), tx.grad.numpy(), np.float64, "grad_x")
    assert_close(reference.avg_pool2d(x, **kw), ty.detach().numpy(), np.float64, "reference y")


@pytest.mark.parametrize("shape, kw", CASES[:6], ids=IDS[:6])
def test_finite_differences(rng, shape, kw):
    x = rng.standard_normal(shape)
    gy = rng.standard_normal(reference.avg_pool2d(x, **kw).shape)
    gx = fastconv.avg_pool2d_backward(gy, shape, **kw)
    check_grads(lambda x: fastconv.avg_pool2d(x, **kw), {"x": x}, {"x": gx}, gy, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_pool_nan_inf_as_torch(rng, torch, dtype):
    x = rng.standard_normal((2, 3, 7, 7))
    x[0, 0, 3, 3], x[0, 1, 0, 6], x[1, 2, 6, 0], x[1, 2, 5, 5] = np.nan, np.inf, np.inf, -np.inf
    want = torch.nn.functional.avg_pool2d(torch.tensor(x), 7).numpy()
    assert_same_nonfinite(fastconv.avg_pool2d(x.astype(dtype), 7), want, dtype, "y")
    gy = rng.standard_normal(want.shape)
    gy[0, 1, 0, 0] = np.nan
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.avg_pool2d(tx, 7).backward(torch.tensor(gy))
    got = fastconv.avg_pool2d_backward(gy.astype(dtype), x.shape, 7)
    assert_same_nonfinite(got, tx.grad.numpy(), dtype, "grad_x")


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_pool_at_resnet_size(rng, dtype):
    """ResNet-50's last pool, 2048 channels of 7x7 (the planes split over threads)."""
    x = rng.standard_normal((4, 2048, 7, 7)).astype(dtype)
    assert_close(fastconv.avg_pool2d(x, 7), reference.avg_pool2d(x, 7), dtype, "y")
    gy = rng.standard_normal((4, 2048, 1, 1)).astype(dtype)
    assert_close(fastconv.avg_pool2d_backward(gy, x.shape, 7), reference.avg_pool2d_backward(gy, x.shape, 7),
                 dtype, "grad_x")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inf_as_torch(rng, torch, dtype):
    x = rng.standard_normal((1, 2, 6, 6))
    x[0, 0, 1, 1], x[0, 0, 4, 4], x[0, 1, 2, 2], x[0, 1, 2, 3] = np.nan, np.inf, np.inf, -np.inf
    kw = dict(kernel_size=3, stride=2, padding=1)
    want = torch.nn.functional.avg_pool2d(torch.tensor(x), **kw).numpy()
    assert_same_nonfinite(fastconv.avg_pool2d(x.astype(dtype), **kw), want, dtype, "y")
    gy = np.ones(want.shape)
    gy[0, 0, 0, 0] = np.nan
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.avg_pool2d(tx, **kw).backward(torch.tensor(gy))
    assert_same_nonfinite(fastconv.avg_pool2d_backward(gy.astype(dtype), x.shape, **kw), tx.grad.numpy(), dtype,
                          "grad_x")


def test_empty_batch():
    y = fastconv.avg_pool2d(np.zeros((0, 2, 4, 4), np.float32), 2)
    assert y.shape == (0, 2, 2, 2) and y.dtype == np.float32
    assert fastconv.avg_pool2d_backward(np.zeros((0, 2, 2, 2)), (0, 2, 4, 4), 2).shape == (0, 2, 4, 4)


def test_integer_input_computes_in_float64():
    y = fastconv.avg_pool2d(np.arange(16).reshape(1, 1, 4, 4), 2)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y[0, 0], [[2.5, 4.5], [10.5, 12.5]])


@pytest.mark.parametrize("mod", [fastconv, reference], ids=["fastconv", "reference"])
@pytest.mark.parametrize("kw, exc, match", [
    (dict(divisor_override=0), ValueError, r"divisor_override must be None or a non-zero int.*got 0"),
    (dict(divisor_override=1.5), TypeError, r"divisor_override must be None or a non-zero int, got 1.5"),
    (dict(divisor_override=True), TypeError, r"divisor_override"),
    (dict(count_include_pad=1), TypeError, r"count_include_pad must be a bool"),
    (dict(ceil_mode="yes"), TypeError, r"ceil_mode must be a bool"),
    (dict(padding=2), ValueError, r"padding should be at most half of kernel size"),
    (dict(stride=0), ValueError, r"stride must be >= 1"),
    (dict(kernel_size=9), ValueError, r"avg_pool2d output size would be"),
])
def test_bad_arguments(mod, kw, exc, match):
    args = dict(kernel_size=2)
    args.update(kw)
    with pytest.raises(exc, match=match):
        mod.avg_pool2d(np.zeros((1, 2, 5, 5)), **args)


def test_bad_ndim_and_grad_output():
    with pytest.raises(ValueError, match=r"x must be a 3-D \(C, H, W\) \(unbatched\) or 4-D \(N, C, H, W\) "
                                         r"\(batched\) array, got a 2-D array of shape \(5, 5\)"):
        fastconv.avg_pool2d(np.zeros((5, 5)), 2)
    with pytest.raises(ValueError, match=r"grad_output must have the forward output's shape \(1, 2, 2, 2\), "
                                         r"got \(1, 2, 3, 2\)"):
        fastconv.avg_pool2d_backward(np.zeros((1, 2, 3, 2)), (1, 2, 5, 5), 2)
    with pytest.raises(ValueError, match=r"grad_output must be a 3-D array \(C, OH, OW\) like the unbatched "
                                         r"input_shape, got a 4-D array"):
        fastconv.avg_pool2d_backward(np.zeros((1, 2, 2, 2)), (2, 5, 5), 2)
    with pytest.raises(TypeError, match=r"input_shape must be a sequence of 4 ints"):
        fastconv.avg_pool2d_backward(np.zeros((1, 2, 2, 2)), 5, 2)


@st.composite
def avg_problems(draw):
    """Random shapes and every option; seeds for the data (fixed per example)."""
    shape = (draw(st.integers(0, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    kw = dict(kernel_size=k, stride=(draw(st.integers(1, 4)), draw(st.integers(1, 4))),
              padding=(draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))),
              ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
              divisor_override=draw(st.sampled_from([None, None, 1, 3, -2])))
    return shape, kw, draw(st.sampled_from(DTYPES)), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None)
@given(problem=avg_problems())
def test_property_matches_torch_and_reference(problem):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
    shape, kw, dtype, seed = problem
    try:
        avg_pool2d_params(shape, **kw)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.avg_pool2d(tx, **kw)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    y = fastconv.avg_pool2d(x.astype(dtype), **kw)
    gx = fastconv.avg_pool2d_backward(gy.astype(dtype), shape, **kw)
    assert y.shape == tuple(ty.shape) and gx.shape == shape
    if x.size:
        assert_close(y, ty.detach().numpy(), dtype, "y")
        assert_close(gx, tx.grad.numpy(), dtype, "grad_x")
        assert_close(reference.avg_pool2d(x, **kw), ty.detach().numpy(), np.float64, "reference y")


def test_single_window_kernels_run_only_for_one_output(rng, monkeypatch):
    from fastconv.cpu import avg_pool as cpu_avg

    names = ("_avg_fwd_flat", "_avg_fwd_single", "_avg_bwd_flat", "_avg_bwd_single")
    calls = [spy_calls(monkeypatch, cpu_avg, name) for name in names]
    x = rng.standard_normal((2, 3, 7, 7))
    fastconv.avg_pool2d(x, 7)  # whole rows: one flat run
    fastconv.avg_pool2d(x, (4, 3), stride=5)  # part of each row
    fastconv.avg_pool2d_backward(np.ones((2, 3, 1, 1)), x.shape, 7)
    fastconv.avg_pool2d_backward(np.ones((2, 3, 1, 1)), x.shape, (4, 3), stride=5)
    assert [len(c) for c in calls] == [1, 1, 1, 1]
    fastconv.avg_pool2d(x, 3)
    fastconv.avg_pool2d_backward(np.ones((2, 3, 2, 2)), x.shape, 3)
    assert [len(c) for c in calls] == [1, 1, 1, 1]
