"""The issue-15 surface on CUDA arrays (simulator: tiny shapes): avg_pool2d,
conv_transpose2d, max_unpool2d, conv2d's padding_mode and unbatched inputs,
against the float64 reference; results are device arrays of the compute dtype."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference

from tests.cuda.cudahelpers import dev, host
from tests.helpers import assert_close, tie_free

DTYPES = [np.float32, np.float64]

AVG_CASES = [
    ((2, 2, 5, 6), dict(kernel_size=2)),
    ((1, 2, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ((1, 1, 3, 3), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 5, 5), dict(kernel_size=(2, 3), stride=1, padding=(1, 1), divisor_override=5)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kw", AVG_CASES)
def test_avg_pool2d(rng, shape, kw, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    y = fastconv.avg_pool2d(dev(x), **kw)
    assert y.dtype == dtype
    ry = reference.avg_pool2d(x, **kw)
    assert_close(host(y), ry, dtype, "y")
    gy = rng.standard_normal(ry.shape).astype(dtype)
    gx = fastconv.avg_pool2d_backward(dev(gy), shape, **kw)
    assert_close(host(gx), reference.avg_pool2d_backward(gy, shape, **kw), dtype, "grad_x")


TRANSPOSE_CASES = [
    ((2, 2, 4, 5), (2, 3, 3, 3), dict()),
    ((1, 2, 4, 4), (2, 3, 3, 2), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3, 3), (4, 2, 3, 3), dict(dilation=2, output_padding=1, groups=2)),
]


@pytest.mark.parametrize("alg", ["direct", "im2col"])
@pytest.mark.parametrize("xs, ws, kw", TRANSPOSE_CASES)
def test_conv_transpose2d(rng, xs, ws, kw, alg):
    dtype = np.float64
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[1] * kw.get("groups", 1))
    y = fastconv.conv_transpose2d(dev(x), dev(w), dev(b), **kw, algorithm=alg)
    ry = reference.conv_transpose2d(x, w, b, **kw)
    assert_close(host(y), ry, dtype, "y")
    gy = rng.standard_normal(ry.shape)
    got = fastconv.conv_transpose2d_backward(dev(gy), dev(x), dev(w), **kw, algorithm=alg)
    for g, r, what in zip(got, reference.conv_transpose2d_backward(gy, x, w, **kw), ("gx", "gw", "gb")):
        assert_close(host(g), r, dtype, what)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_mode(rng, mode):
    x, w = rng.standard_normal((1, 2, 4, 5)).astype(np.float32), rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    kw = dict(padding=(2, 1), stride=(1, 2))
    y = fastconv.conv2d(dev(x), dev(w), padding_mode=mode, **kw)
    assert_close(host(y), reference.conv2d_padded(x, w, padding_mode=mode, **kw), np.float32, "y")
    gy = rng.standard_normal(y.shape).astype(np.float32)
    got = fastconv.conv2d_backward(dev(gy), dev(x), dev(w), padding_mode=mode, **kw)
    for g, r, what in zip(got, reference.conv2d_padded_backward(gy, x, w, padding_mode=mode, **kw),
                          ("gx", "gw", "gb")):
        assert_close(host(g), r, np.float32, what)


def test_max_unpool2d(rng):
    x = tie_free(rng, (2, 2, 4, 5))
    y, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    u = fastconv.max_unpool2d(dev(y), dev(idx), 2, output_size=(4, 5))
    np.testing.assert_array_equal(host(u), reference.max_unpool2d(y, idx, 2, output_size=(4, 5)))
    gy = rng.standard_normal(u.shape)
    gx = fastconv.max_unpool2d_backward(dev(gy), dev(idx), 2, output_size=(4, 5))
    np.testing.assert_array_equal(host(gx), reference.max_unpool2d_backward(gy, idx, 2, output_size=(4, 5)))
    bad = idx.copy()
    bad[0, 0, 0, 0] = 20
    with pytest.raises(ValueError, match=r"found an invalid max index 20"):
        fastconv.max_unpool2d(dev(y), dev(bad), 2, output_size=(4, 5))


def test_unbatched(rng):
    x, w = rng.standard_normal((2, 5, 6)), rng.standard_normal((3, 2, 3, 3))
    y = fastconv.conv2d(dev(x), dev(w), padding=1)
    assert y.shape == (3, 5, 6)
    assert_close(host(y), reference.conv2d(x, w, padding=1), np.float64, "conv2d")
    gx, gw, _ = fastconv.conv2d_backward(dev(rng.standard_normal((3, 5, 6))), dev(x), dev(w), padding=1)
    assert gx.shape == x.shape and gw.shape == w.shape
    p, i = fastconv.max_pool2d(dev(x), 2, return_indices=True)
    assert p.shape == i.shape == (2, 2, 3)
    assert fastconv.max_pool2d_backward(p, i, x.shape).shape == x.shape
    assert fastconv.avg_pool2d(dev(x), 2).shape == (2, 2, 3)


def test_unbatched_strided_device_array_is_refused_clearly(rng):
    x = dev(rng.standard_normal((2, 5, 6)))
    with pytest.raises(ValueError, match=r"x: an unbatched \(3-D\) CUDA array must be C-contiguous"):
        fastconv.avg_pool2d(x[:, :, ::2], 2)
