"""Unbatched (C, H, W) inputs, as torch accepts them: every op gives the
batched result without its batch axis (and torch's own unbatched result);
wrong ranks are refused naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference

from tests.helpers import assert_close

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alg", ["auto", "direct", "im2col"])
def test_conv2d(rng, torch, dtype, alg):
    x = rng.standard_normal((3, 6, 7)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    kw = dict(stride=(1, 2), padding=1)
    y = fastconv.conv2d(x, w, b, **kw, algorithm=alg)
    assert y.shape == (4, 6, 4) and y.dtype == dtype
    np.testing.assert_array_equal(y, fastconv.conv2d(x[None], w, b, **kw, algorithm=alg)[0])
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, torch.tensor(w.astype(np.float64)), torch.tensor(b.astype(np.float64)), **kw)
    assert_close(y, ty.detach().numpy(), dtype, "y")
    gy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(gy.astype(np.float64)))
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, **kw, algorithm=alg)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (4,)
    assert_close(gx, tx.grad.numpy(), dtype, "grad_x")
    bx, bw, bb = fastconv.conv2d_backward(gy[None], x[None], w, **kw, algorithm=alg)
    np.testing.assert_array_equal(gx, bx[0])
    np.testing.assert_array_equal(gw, bw)
    assert fastconv.conv2d_backward(gy, x, w, **kw, need_input_grad=False)[0] is None
    assert_close(reference.conv2d(x, w, b, **kw), ty.detach().numpy(), np.float64, "reference y")


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d(rng, torch, dtype):
    x = rng.permutation(np.linspace(-1, 1, 2 * 7 * 6)).reshape(2, 7, 6).astype(dtype)
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    y, idx = fastconv.max_pool2d(x, return_indices=True, **kw)
    ty, tidx = torch.nn.functional.max_pool2d(torch.tensor(x), return_indices=True, **kw)
    assert y.shape == tuple(ty.shape) == (2, 4, 4) and idx.shape == y.shape
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    np.testing.assert_array_equal(fastconv.max_pool2d(x, **kw), y)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = fastconv.max_pool2d_backward(gy, idx, x.shape)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gx, fastconv.max_pool2d_backward(gy[None], idx[None], (1,) + x.shape)[0])
    assert_close(gx, reference.max_pool2d_backward(gy, idx, x.shape), dtype, "grad_x")


def test_array_likes_and_non_contiguous(rng):
    x = rng.standard_normal((2, 5, 6))
    w = rng.standard_normal((3, 2, 2, 2))
    want = fastconv.conv2d(x, w)
    np.testing.assert_array_equal(fastconv.conv2d(x.tolist(), w), want)
    xt = np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)  # same values, not C-contiguous
    np.testing.assert_array_equal(fastconv.conv2d(xt, w), want)


@pytest.mark.parametrize("shape", [(5, 5), (1, 1, 2, 5, 5), (5,)])
def test_wrong_rank_names_the_argument(shape):
    x = np.zeros(shape)
    w = np.zeros((1, 1, 2, 2))
    nd = len(shape)
    msg = rf"x must be a 3-D \(C, H, W\) \(unbatched\) or 4-D \(N, C, H, W\) \(batched\) array, got a {nd}-D array"
    with pytest.raises(ValueError, match=msg):
        fastconv.conv2d(x, w)
    with pytest.raises(ValueError, match=msg):
        fastconv.conv2d_backward(np.zeros((1, 1, 4, 4)), x, w)
    with pytest.raises(ValueError, match=msg):
        fastconv.max_pool2d(x, 2)
    with pytest.raises(ValueError, match=msg):
        reference.conv2d(x, w)


def test_grad_output_and_indices_must_be_unbatched_too():
    x, w = np.zeros((1, 4, 4)), np.zeros((2, 1, 2, 2))
    with pytest.raises(ValueError, match=r"grad_output must be a 3-D array \(K, OH, OW\) like the unbatched x, "
                                         r"got a 4-D array of shape \(1, 2, 3, 3\)"):
        fastconv.conv2d_backward(np.zeros((1, 2, 3, 3)), x, w)
    with pytest.raises(ValueError, match=r"grad_output must have the forward output's shape \(1, 2, 3, 3\), "
                                         r"got \(1, 2, 3, 4\)"):
        fastconv.conv2d_backward(np.zeros((2, 3, 4)), x, w)
    with pytest.raises(ValueError, match=r"indices must be a 3-D array \(C, OH, OW\) like the unbatched "
                                         r"input_shape, got a 4-D array"):
        fastconv.max_pool2d_backward(np.zeros((1, 2, 2)), np.zeros((1, 1, 2, 2), np.int64), (1, 4, 4))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\)"):
        fastconv.max_pool2d_backward(np.zeros((1, 2, 2)), np.full((1, 2, 2), 16, np.int64), (1, 4, 4))
