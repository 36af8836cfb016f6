"""fastconv.max_unpool2d / max_unpool2d_backward on the CPU: torch's output
size and output_size rule, round trip with max_pool2d, indices out of range,
repeated indices, unbatched inputs, finite differences, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference

from tests.helpers import check_grads

DTYPES = [np.float32, np.float64]

# (input of the pooling, pooling options, output_size)
CASES = [
    ((2, 3, 6, 6), dict(kernel_size=2), None),
    ((2, 3, 7, 7), dict(kernel_size=2), (7, 7)),
    ((2, 3, 7, 6), dict(kernel_size=2), (2, 3, 7, 6)),
    ((1, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1), None),
    ((1, 2, 8, 7), dict(kernel_size=3, stride=2, padding=1), (8, 7)),
    ((1, 2, 6, 7), dict(kernel_size=(2, 3), stride=(1, 2)), None),
    ((3, 6, 6), dict(kernel_size=2), None),  # unbatched
]
IDS = [f"{'x'.join(map(str, s))}-" + "-".join(f"{k}{v}" for k, v in kw.items()) + f"-out{o}" for s, kw, o in CASES]


def _pooled(rng, shape, kw, dtype=np.float64):
    x = rng.permutation(np.linspace(-1, 1, int(np.prod(shape)))).reshape(shape).astype(dtype)
    return fastconv.max_pool2d(x, return_indices=True, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kw, out", CASES, ids=IDS)
def test_matches_reference_and_torch(rng, torch, shape, kw, out, dtype):
    y, idx = _pooled(rng, shape, kw, dtype)
    u = fastconv.max_unpool2d(y, idx, **kw, output_size=out)
    assert u.dtype == dtype
    np.testing.assert_array_equal(u, reference.max_unpool2d(y, idx, **kw, output_size=out))
    ty = torch.tensor(y.astype(np.float64), requires_grad=True)
    tu = torch.nn.functional.max_unpool2d(ty, torch.tensor(idx), **kw, output_size=out)
    np.testing.assert_array_equal(u, tu.detach().numpy())
    gy = rng.standard_normal(u.shape)
    tu.backward(torch.tensor(gy))
    gx = fastconv.max_unpool2d_backward(gy.astype(dtype), idx, **kw, output_size=out)
    assert gx.dtype == dtype and gx.shape == y.shape
    np.testing.assert_array_equal(gx, ty.grad.numpy().astype(dtype))
    np.testing.assert_array_equal(gx, reference.max_unpool2d_backward(gy, idx, **kw, output_size=out).astype(dtype))


def test_finite_differences(rng):
    y, idx = _pooled(rng, (2, 2, 6, 6), dict(kernel_size=2))
    gy = rng.standard_normal((2, 2, 6, 6))
    gx = fastconv.max_unpool2d_backward(gy, idx, 2)
    check_grads(lambda x: fastconv.max_unpool2d(x, idx, 2), {"x": y}, {"x": gx}, gy, rng)


def test_repeated_index_keeps_the_last_value_and_nan_passes(torch):
    x = np.array([[[[1.0, 2.0], [np.nan, 4.0]]]])
    idx = np.array([[[[5, 5], [0, 15]]]], dtype=np.int64)
    u = fastconv.max_unpool2d(x, idx, 2)
    want = torch.nn.functional.max_unpool2d(torch.tensor(x), torch.tensor(idx), 2).numpy()
    np.testing.assert_array_equal(u, want)
    assert u[0, 0, 1, 1] == 2.0 and np.isnan(u[0, 0, 0, 0])


@pytest.mark.parametrize("mod", [fastconv, reference], ids=["fastconv", "reference"])
@pytest.mark.parametrize("bad", [16, -1])
def test_index_out_of_range(mod, bad):
    x = np.ones((1, 1, 2, 2))
    idx = np.array([[[[0, 1], [2, bad]]]], dtype=np.int64)
    with pytest.raises(ValueError, match=rf"indices must lie in \[0, 16\) .* found an invalid max index {bad}"):
        mod.max_unpool2d(x, idx, 2)
    with pytest.raises(ValueError, match=rf"found an invalid max index {bad}"):
        mod.max_unpool2d_backward(np.ones((1, 1, 4, 4)), idx, 2)


X, IDX = np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), np.int64)


@pytest.mark.parametrize("mod", [fastconv, reference], ids=["fastconv", "reference"])
@pytest.mark.parametrize("args, kw, exc, match", [
    ((X, IDX, 2), dict(output_size=(6, 4)), ValueError,
     r'invalid output_size "\(6, 4\)" \(dim 0 must be between 2 and 6, exclusive\)'),
    ((X, IDX, 2), dict(output_size=(4, 2)), ValueError, r"dim 1 must be between 2 and 6"),
    ((X, IDX, 2), dict(output_size=(4,)), ValueError, r"output_size must have 2 elements"),
    ((X, IDX, 2), dict(output_size=(4.0, 4)), TypeError, r"output_size must be None or a sequence of ints"),
    ((X, IDX.astype(np.int32), 2), dict(), TypeError, r"indices must have dtype int64"),
    ((X, IDX[..., :1], 2), dict(), ValueError, r"indices must have the shape of x \(1, 1, 2, 2\)"),
    ((X, IDX, 0), dict(), ValueError, r"kernel_size must be >= 1"),
])
def test_bad_arguments(mod, args, kw, exc, match):
    with pytest.raises(exc, match=match):
        mod.max_unpool2d(*args, **kw)


def test_unbatched_indices_must_match():
    with pytest.raises(ValueError, match=r"indices must be a 3-D array \(C, H, W\) like the unbatched x"):
        fastconv.max_unpool2d(X[0], IDX, 2)
    with pytest.raises(ValueError, match=r"grad_output must have the forward output's shape \(1, 1, 4, 4\)"):
        fastconv.max_unpool2d_backward(np.ones((1, 1, 4, 5)), IDX, 2)
