"""fastconv.max_pool2d / max_pool2d_backward on CUDA arrays: values and indices
exactly equal to the float64 reference (pooling copies values), backward
against the reference, torch autograd (CPU) and a sequential float sum; NaN,
Inf, ties, bad indices.  Tiny shapes for the simulator; tie-free inputs except
in the tie tests.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference
from fastconv._params import pool2d_params

from tests.cuda.cudahelpers import dev, host
from tests.helpers import assert_close, tie_free

DTYPES = [np.float32, np.float64]

CASES = [
    ((2, 3, 6, 7), dict(kernel_size=2)),
    ((1, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1)),  # overlapping windows
    ((2, 2, 7, 6), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ((1, 2, 6, 7), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    ((1, 2, 7, 7), dict(kernel_size=3, stride=1, padding=1, dilation=2)),
    ((2, 1, 5, 7), dict(kernel_size=2, stride=1, padding=1, dilation=3)),
    ((1, 3, 5, 4), dict(kernel_size=1, stride=2, ceil_mode=True)),
    ((1, 2, 7, 5), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(2, 3), ceil_mode=True)),
]
CASE_IDS = [f"{'x'.join(map(str, s))}-" + "-".join(f"{k}{v}" for k, v in kw.items()) for s, kw in CASES]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kw", CASES, ids=CASE_IDS)
def test_forward_and_backward_match_reference(rng, shape, kw, dtype):
    x = tie_free(rng, shape, dtype)
    y, idx = fastconv.max_pool2d(dev(x), return_indices=True, **kw)
    ry, ridx = reference.max_pool2d(x, return_indices=True, **kw)
    assert y.dtype == dtype and idx.dtype == np.int64
    assert np.array_equal(host(y), ry.astype(dtype)) and np.array_equal(host(idx), ridx)
    assert np.array_equal(host(fastconv.max_pool2d(dev(x), **kw)), ry.astype(dtype))  # no-indices path
    gy = rng.standard_normal(ry.shape).astype(dtype)
    gx = fastconv.max_pool2d_backward(dev(gy), idx, shape)
    assert gx.dtype == dtype
    assert_close(host(gx), reference.max_pool2d_backward(gy, ridx, shape), dtype, "grad_x")


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_overlapping_windows_match_torch_autograd(torch, rng, dtype):
    kw = dict(kernel_size=3, stride=1, padding=1)
    x = tie_free(rng, (1, 2, 6, 5), dtype)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, **kw)
    gy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.tensor(gy))
    _, idx = fastconv.max_pool2d(dev(x), return_indices=True, **kw)
    gx = fastconv.max_pool2d_backward(dev(gy), idx, x.shape)
    assert_close(host(gx), tx.grad.numpy(), dtype, "grad_x")


def test_backward_sums_in_output_order_bit_exactly(rng):
    """Arbitrary (repeated) indices: each input's gradient is the float32 sum in
    output order -- exactly what a sequential np.add.at produces -- every run."""
    n, c, h, w, oh, ow = 2, 2, 3, 3, 4, 5
    gy = rng.standard_normal((n, c, oh, ow)).astype(np.float32) * np.float32(1e3)
    idx = rng.integers(0, 3, size=(n, c, oh, ow)).astype(np.int64)  # many collisions
    want = np.zeros((n * c, h * w), np.float32)
    np.add.at(want, (np.repeat(np.arange(n * c), oh * ow), idx.reshape(-1)), gy.reshape(-1))
    for _ in range(2):
        gx = host(fastconv.max_pool2d_backward(dev(gy), dev(idx), (n, c, h, w)))
        assert gx.tobytes() == want.reshape(n, c, h, w).tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_match_torch(torch, rng, dtype):
    kw = dict(kernel_size=3, stride=2, padding=1)
    x = tie_free(rng, (1, 2, 7, 6), dtype)
    x.reshape(-1)[rng.choice(x.size, 8, replace=False)] = np.nan
    x[0, 0, 0, :3] = np.inf
    x[0, 1, 6, :] = -np.inf
    y, idx = fastconv.max_pool2d(dev(x), return_indices=True, **kw)
    ty, tidx = torch.nn.functional.max_pool2d(torch.tensor(x), return_indices=True, **kw)
    np.testing.assert_array_equal(host(y), ty.numpy())
    assert np.array_equal(host(idx), tidx.numpy())
    ry, ridx = reference.max_pool2d(x, return_indices=True, **kw)
    assert np.array_equal(host(idx), ridx)


def test_ties_first_maximum_wins_and_all_neg_inf_windows():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 2:, 2:] = -np.inf
    kw = dict(kernel_size=2, stride=2)
    y, idx = fastconv.max_pool2d(dev(x), return_indices=True, **kw)
    ry, ridx = reference.max_pool2d(x, return_indices=True, **kw)
    assert np.array_equal(host(y), ry.astype(np.float32)) and np.array_equal(host(idx), ridx)
    assert host(idx)[0, 0, 0, 0] == 0 and host(idx)[0, 0, 1, 1] == 2 * 4 + 2


def test_deterministic(rng):
    x = tie_free(rng, (2, 2, 7, 7), np.float32)
    kw = dict(kernel_size=3, stride=2, padding=1)
    gy = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    runs = []
    for _ in range(2):
        y, idx = fastconv.max_pool2d(dev(x), return_indices=True, **kw)
        runs.append([host(y), host(idx), host(fastconv.max_pool2d_backward(dev(gy), idx, x.shape))])
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()


def test_bad_indices_and_mixing_messages(rng):
    gy = dev(np.ones((1, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\) .* got values in \[0, 16\]"):
        fastconv.max_pool2d_backward(gy, dev(np.array([0, 1, 2, 16]).reshape(1, 1, 2, 2)), (1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"got values in \[-1, 2\]"):
        fastconv.max_pool2d_backward(gy, dev(np.array([0, -1, 2, 1]).reshape(1, 1, 2, 2)), (1, 1, 4, 4))
    with pytest.raises(TypeError, match=r"indices must have dtype int64 .* got int32"):
        fastconv.max_pool2d_backward(gy, dev(np.zeros((1, 1, 2, 2), np.int32)), (1, 1, 4, 4))
    with pytest.raises(TypeError, match=r"grad_output on the GPU but indices on the host"):
        fastconv.max_pool2d_backward(gy, np.zeros((1, 1, 2, 2), np.int64), (1, 1, 4, 4))
    with pytest.raises(TypeError, match=r"x must have a real numeric dtype"):
        fastconv.max_pool2d(dev(np.ones((1, 1, 4, 4), np.complex128)), 2)


def test_zero_size_batch_and_device_results():
    from numba.cuda.cudadrv.devicearray import is_cuda_ndarray

    y, idx = fastconv.max_pool2d(dev(np.zeros((0, 2, 4, 4), np.float32)), 2, return_indices=True)
    assert host(y).shape == (0, 2, 2, 2) and host(idx).dtype == np.int64
    gx = fastconv.max_pool2d_backward(y, idx, (0, 2, 4, 4))
    assert is_cuda_ndarray(gx) and host(gx).shape == (0, 2, 4, 4)


@st.composite
def _pool_problems(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kw_ = dict(kernel_size=(kh, kw), stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
               padding=(draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))),
               dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))), ceil_mode=draw(st.booleans()))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    try:
        pool2d_params(shape, **kw_)
    except ValueError:
        assume(False)
    return shape, kw_, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_pool_problems())
def test_property_random_geometry_matches_reference(problem):
    shape, kw, seed = problem
    rng = np.random.default_rng(seed)
    x = tie_free(rng, shape, np.float32)
    y, idx = fastconv.max_pool2d(dev(x), return_indices=True, **kw)
    ry, ridx = reference.max_pool2d(x, return_indices=True, **kw)
    assert np.array_equal(host(y), ry.astype(np.float32)) and np.array_equal(host(idx), ridx)
    gy = rng.standard_normal(ry.shape).astype(np.float32)
    gx = fastconv.max_pool2d_backward(dev(gy), idx, shape)
    assert_close(host(gx), reference.max_pool2d_backward(gy, ridx, shape), np.float32, "grad_x")


def test_backward_kernel_skips_out_of_plane_indices(rng):
    """Indices the range check would refuse never make the kernel write out of bounds
    (callers passing their forward's own indices may leave the synchronising check out)."""
    from fastconv._params import pool2d_params
    from fastconv.cuda import pool

    p = pool2d_params((1, 2, 4, 4), 2)
    gy = rng.standard_normal((1, 2, 2, 2))
    idx = np.array([[[[0, 16], [-1, 5]], [[3, 3], [99, 15]]]], dtype=np.int64)
    gx = host(pool.max_pool2d_backward(dev(gy), dev(idx), p))
    want = np.zeros((2, 16))
    want[0, 0], want[0, 5] = gy[0, 0, 0, 0], gy[0, 0, 1, 1]
    want[1, 3] = gy[0, 1, 0, 0] + gy[0, 1, 0, 1]
    want[1, 15] = gy[0, 1, 1, 1]
    assert np.array_equal(gx.reshape(2, 16), want)
