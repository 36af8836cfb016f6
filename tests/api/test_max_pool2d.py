"""fastconv.max_pool2d / max_pool2d_backward on the CPU against the float64
reference, PyTorch (when installed) and finite differences.

Max pooling copies input values, so forward values and indices must match the
reference exactly.  Inputs are tie-free (a shuffled linspace) except in the
tests about ties, so the argmax is unambiguous.  Outputs are poisoned
(conftest), so an element a kernel forgets to write fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference
from fastconv._params import pool2d_params

from tests.helpers import assert_close, numeric_grad, tie_free

DTYPES = [np.float32, np.float64]

# (x shape, max_pool2d keyword arguments): odd sizes, every option, both fast
# paths (2x2 and 3x3 with column stride 2) with and without border columns,
# rows longer than a SIMD vector (remainder loops), overlapping windows.
CASES = [
    ((2, 3, 9, 11), dict(kernel_size=2)),
    ((2, 3, 26, 37), dict(kernel_size=2, stride=2)),
    ((1, 2, 9, 11), dict(kernel_size=2, stride=2, padding=1)),
    ((2, 2, 9, 11), dict(kernel_size=2, stride=2, ceil_mode=True)),
    ((2, 3, 23, 37), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 3, 10, 12), dict(kernel_size=3, stride=2)),
    ((2, 2, 10, 12), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ((2, 2, 8, 9), dict(kernel_size=3, stride=(1, 2), padding=1)),
    ((2, 2, 9, 11), dict(kernel_size=3, stride=1, padding=1)),
    ((1, 2, 13, 17), dict(kernel_size=3, stride=3)),
    ((2, 2, 9, 10), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    ((2, 2, 11, 13), dict(kernel_size=3, stride=2, padding=1, dilation=2)),
    ((1, 3, 12, 11), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(2, 3), ceil_mode=True)),
    ((2, 2, 7, 9), dict(kernel_size=1)),
    ((2, 2, 7, 9), dict(kernel_size=1, stride=2, ceil_mode=True)),
    ((2, 2, 11, 12), dict(kernel_size=5, stride=2, padding=2, ceil_mode=True)),
    ((2, 2, 13, 10), dict(kernel_size=4, stride=3, padding=2, ceil_mode=True)),
    ((2, 2, 9, 9), dict(kernel_size=2, stride=1, padding=1, dilation=3)),
    ((2, 2, 9, 8), dict(kernel_size=2, stride=[])),
    ((1, 2, 11, 5), dict(kernel_size=(7, 1), stride=1)),
    ((2, 3, 6, 7), dict(kernel_size=(6, 7))),
    ((1, 1, 37, 41), dict(kernel_size=3, stride=2, padding=1)),  # one plane: rows split over threads
    ((3, 1, 5, 6), dict(kernel_size=2, stride=(3, 2), padding=(1, 0), ceil_mode=True)),
]
CASE_IDS = [f"{'x'.join(map(str, s))}-" + "-".join(f"{k}{v}" for k, v in kw.items()) for s, kw in CASES]


def torch_pool(torch, x, **kw):
    """PyTorch's values and indices for a NumPy input (any layout)."""
    y, i = torch.nn.functional.max_pool2d(torch.from_numpy(np.ascontiguousarray(x)), return_indices=True, **kw)
    return y.numpy(), i.numpy()


def assert_matches_torch(torch, x, kw, y, idx):
    """Values (NaN == NaN) and indices equal PyTorch's; a no-op without torch."""
    if torch is None:
        return
    y_t, idx_t = torch_pool(torch, x, **kw)
    np.testing.assert_array_equal(y, y_t)
    np.testing.assert_array_equal(idx, idx_t)


def check_forward(x, kw):
    """fastconv (with and without indices) == reference, exactly, in x's compute dtype."""
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    y_only = fastconv.max_pool2d(x, **kw)
    y_ref, idx_ref = reference.max_pool2d(x, **kw, return_indices=True)
    assert y.dtype == x.dtype and y_only.dtype == x.dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y, y_ref.astype(x.dtype))
    np.testing.assert_array_equal(y_only, y_ref.astype(x.dtype))
    np.testing.assert_array_equal(idx, idx_ref)
    return y, idx


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kw", CASES, ids=CASE_IDS)
def test_forward_matches_reference(rng, shape, kw, dtype):
    x = tie_free(rng, shape, dtype)
    y, _ = check_forward(x, kw)
    assert y.shape == pool2d_params(shape, **kw).y_shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kw", CASES, ids=CASE_IDS)
def test_forward_matches_torch(torch, rng, shape, kw, dtype):
    x = tie_free(rng, shape, dtype)
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    assert_matches_torch(torch, x, kw, y, idx)
    np.testing.assert_array_equal(fastconv.max_pool2d(x, **kw), torch_pool(torch, x, **kw)[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "view",
    [
        lambda a: a[:, :, ::2, 1::2],
        lambda a: a.transpose(0, 1, 3, 2),
        lambda a: a[:, ::-1, ::-1, ::-1],
        lambda a: a.transpose(1, 0, 2, 3)[:, :, 1:-1],
        np.asfortranarray,
    ],
    ids=["step-slice", "transpose-hw", "negative-strides", "transpose-nc", "fortran"],
)
@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 3), stride=1)],
                         ids=["k3s2p1", "k2x3s1"])
def test_forward_non_contiguous(maybe_torch, rng, view, kw, dtype):
    x = view(tie_free(rng, (3, 4, 18, 16), dtype))
    assert not x.flags.c_contiguous
    y, idx = check_forward(x, kw)
    assert_matches_torch(maybe_torch, x, kw, y, idx)


def test_forward_accepts_array_likes():
    x = [[[[1.0, 5.0, 2.0], [0.0, 3.0, 4.0]]]]
    y, idx = fastconv.max_pool2d(x, 2, stride=1, return_indices=True)
    np.testing.assert_array_equal(y, [[[[5.0, 5.0]]]])
    np.testing.assert_array_equal(idx, [[[[1, 1]]]])
    assert y.dtype == np.float64


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_size_batch(maybe_torch, dtype):
    x = np.zeros((0, 3, 7, 6), dtype)
    y = fastconv.max_pool2d(x, 3, 2, 1)
    y2, idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert y.shape == y2.shape == idx.shape == (0, 3, 4, 3)
    if maybe_torch is not None:
        assert torch_pool(maybe_torch, x, kernel_size=3, stride=2, padding=1)[0].shape == y.shape
    assert y.dtype == dtype and idx.dtype == np.int64
    gx = fastconv.max_pool2d_backward(np.zeros((0, 3, 4, 3), dtype), idx, (0, 3, 7, 6))
    assert gx.shape == (0, 3, 7, 6) and gx.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_one(maybe_torch, rng, dtype):
    x = tie_free(rng, (1, 5, 26, 26), dtype)
    kw = dict(kernel_size=2, stride=2)
    y, idx = check_forward(x, kw)
    assert_matches_torch(maybe_torch, x, kw, y, idx)
    gy = rng.standard_normal(y.shape).astype(dtype)
    assert_close(fastconv.max_pool2d_backward(gy, idx, x.shape),
                 reference.max_pool2d_backward(gy, idx, x.shape), dtype, "grad_x")


@pytest.mark.parametrize(
    "in_dtype, out_dtype",
    [(np.int32, np.float64), (np.int64, np.float64), (np.uint8, np.float64), (np.float16, np.float32)],
)
def test_dtype_promotion(rng, in_dtype, out_dtype):
    x = rng.permutation(np.arange(2 * 3 * 9 * 8) % 251).reshape(2, 3, 9, 8).astype(in_dtype)
    y, idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    y_ref, idx_ref = reference.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert y.dtype == out_dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y, y_ref)
    # values repeat (x mod 251 over 432 elements): the tie rule must hold after the cast too
    np.testing.assert_array_equal(idx, idx_ref)
    gy = rng.integers(-5, 5, y.shape).astype(in_dtype if in_dtype != np.uint8 else np.int16)
    gx = fastconv.max_pool2d_backward(gy, idx, x.shape)
    assert gx.dtype == out_dtype
    np.testing.assert_array_equal(gx, reference.max_pool2d_backward(gy, idx, x.shape))


# --------------------------------------------------------------------------- NaN, Inf, ties


def _special(rng, shape, dtype, density):
    x = tie_free(rng, shape, dtype)
    flat = x.reshape(-1)
    pos = rng.choice(flat.size, size=int(density * flat.size), replace=False)
    flat[pos] = rng.choice([np.nan, np.inf, -np.inf], size=pos.size, p=[0.5, 0.25, 0.25])
    return x


SPECIAL_KW = [
    dict(kernel_size=2, stride=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2), ceil_mode=True),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", SPECIAL_KW, ids=["k2s2", "k3s2p1", "k3s1p1", "generic"])
@pytest.mark.parametrize("density", [0.05, 0.4])
def test_nan_and_inf_match_torch(maybe_torch, rng, kw, dtype, density):
    """A NaN in a window is the result and its index the last NaN (PyTorch CPU:
    ``val > max || isnan(val)``); +inf wins, -inf loses to anything finite."""
    x = _special(rng, (2, 3, 11, 19), dtype, density)
    y, idx = check_forward(x, kw)  # the reference encodes torch's rule; torch itself when installed
    assert_matches_torch(maybe_torch, x, kw, y, idx)
    assert np.isnan(y).any()
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = fastconv.max_pool2d_backward(gy, idx, x.shape)
    assert_close(gx, reference.max_pool2d_backward(gy, idx, x.shape), dtype, "grad_x")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", SPECIAL_KW, ids=["k2s2", "k3s2p1", "k3s1p1", "generic"])
def test_all_neg_inf_windows(maybe_torch, rng, kw, dtype):
    """An all -inf window gives -inf at its first in-bounds element (PyTorch's
    initial argmax), also where the window overlaps the padding."""
    x = np.full((1, 2, 9, 10), -np.inf, dtype)
    x[0, 0, 4, 5] = 1.0
    y, idx = check_forward(x, kw)
    assert_matches_torch(maybe_torch, x, kw, y, idx)
    assert np.isneginf(y).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", SPECIAL_KW + [dict(kernel_size=3, stride=3)],
                         ids=["k2s2", "k3s2p1", "k3s1p1", "generic", "k3s3"])
def test_ties_first_maximum_wins(maybe_torch, rng, kw, dtype):
    """Ties go to the first maximum in row-major window order, as in PyTorch."""
    x = rng.integers(0, 3, (2, 3, 12, 21)).astype(dtype)
    y, idx = check_forward(x, kw)
    assert_matches_torch(maybe_torch, x, kw, y, idx)


@pytest.mark.parametrize("kw", [dict(kernel_size=2, stride=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=3, stride=1, dilation=2)], ids=["k2s2", "k3s2p1", "k3s1d2"])
def test_ties_constant_input(kw):
    """Every window of a constant plane points at its first in-bounds element."""
    x = np.full((1, 1, 7, 8), 2.5, np.float32)
    p = pool2d_params(x.shape, **kw)
    _, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    for oi in range(p.oh):
        for oj in range(p.ow):
            r, c = oi * p.sh - p.ph, oj * p.sw - p.pw
            while r < 0:  # first tap inside the input
                r += p.dh
            while c < 0:
                c += p.dw
            assert idx[0, 0, oi, oj] == r * 8 + c


# --------------------------------------------------------------------------- backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kw", CASES, ids=CASE_IDS)
def test_backward_matches_reference(rng, shape, kw, dtype):
    x = tie_free(rng, shape, dtype)
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = fastconv.max_pool2d_backward(gy, idx, shape)
    assert gx.dtype == dtype and gx.shape == shape
    assert_close(gx, reference.max_pool2d_backward(gy, idx, shape), dtype, "grad_x")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kw",
    [dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2, padding=1),
     dict(kernel_size=2, stride=1), dict(kernel_size=(3, 2), stride=1, dilation=(1, 2)),
     dict(kernel_size=5, stride=2, padding=2, ceil_mode=True)],
    ids=["k3s1p1", "k3s2p1", "k2s1", "k3x2s1d1x2", "k5s2p2ceil"],
)
def test_backward_overlapping_windows_match_torch_autograd(maybe_torch, rng, kw, dtype):
    """Stride < kernel: an input that is the argmax of several windows receives
    the sum of their gradients, under parallel execution (many planes)."""
    x = tie_free(rng, (4, 8, 15, 17), dtype)
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = fastconv.max_pool2d_backward(gy, idx, x.shape)
    if maybe_torch is not None:
        xt = maybe_torch.from_numpy(x).requires_grad_()
        maybe_torch.nn.functional.max_pool2d(xt, **kw).backward(maybe_torch.from_numpy(gy))
        assert_close(gx, xt.grad.numpy(), dtype, "grad_x vs torch")
    assert_close(gx, reference.max_pool2d_backward(gy, idx, x.shape), dtype, "grad_x vs reference")
    # the overlap really happened: some input collected more than one window's gradient
    counts = np.bincount(idx.reshape(8 * 4, -1)[0], minlength=15 * 17)
    assert counts.max() > 1


def test_backward_accumulates_shared_argmax():
    """One global maximum shared by all 9 overlapping windows gets sum(grad_output)."""
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 7.0
    y, idx = fastconv.max_pool2d(x, 3, stride=1, return_indices=True)
    assert (idx == 12).all()
    gy = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    gx = fastconv.max_pool2d_backward(gy, idx, x.shape)
    expected = np.zeros((1, 1, 5, 5))
    expected[0, 0, 2, 2] = 45.0
    np.testing.assert_array_equal(gx, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_arbitrary_indices(rng, dtype):
    """Any valid indices (duplicates included), any layout of grad_output."""
    shape = (3, 5, 6, 7)
    idx = rng.integers(0, 42, (3, 5, 4, 9)).astype(np.int64)
    gy = rng.standard_normal((3, 5, 9, 4)).astype(dtype).transpose(0, 1, 3, 2)
    gx = fastconv.max_pool2d_backward(gy, idx, shape)
    assert_close(gx, reference.max_pool2d_backward(gy, idx, shape), dtype, "grad_x")
    gx1 = fastconv.max_pool2d_backward(gy[:1, :1], idx[:1, :1], (1, 1, 6, 7))  # one plane
    assert_close(gx1, reference.max_pool2d_backward(gy[:1, :1], idx[:1, :1], (1, 1, 6, 7)), dtype, "grad_x")


@pytest.mark.parametrize(
    "kw",
    [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=1),
     dict(kernel_size=(2, 3), stride=1, padding=(1, 0), dilation=2, ceil_mode=True)],
    ids=["k3s2p1", "k3s1", "generic"],
)
def test_backward_finite_differences(rng, kw):
    """d sum(gy * max_pool2d(x)) / dx by central differences, float64, tie-free x.
    The pooled function is piecewise linear: with a step far below the gap between
    input values no argmax moves, so the difference quotient is exact up to rounding."""
    shape = (1, 2, 7, 8)
    x = tie_free(rng, shape)
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    gy = rng.standard_normal(y.shape)
    gx = fastconv.max_pool2d_backward(gy, idx, shape)
    # eps 1e-6 (numeric_grad's default); the gap between values is 2 / 111
    fd = numeric_grad(lambda: float(np.sum(gy * fastconv.max_pool2d(x, **kw))), x)
    np.testing.assert_allclose(gx.reshape(-1), fd.reshape(-1), rtol=0, atol=1e-8)
    assert np.count_nonzero(gx) > 0


# --------------------------------------------------------------------------- properties


@st.composite
def pool_problems(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))  # empty batches: test_zero_size_batch
    h, w = draw(st.integers(1, 13)), draw(st.integers(1, 13))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    ceil_mode = draw(st.booleans())
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**32 - 1))
    kw = dict(kernel_size=(kh, kw), stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    return (n, c, h, w), kw, dtype, seed


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=pool_problems())
def test_property_forward_backward_match_reference(problem):
    shape, kw, dtype, seed = problem
    try:
        pool2d_params(shape, **kw)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(seed)
    x = tie_free(rng, shape, dtype)
    y, idx = check_forward(x, kw)
    # the indices point at the values they claim, inside each plane
    planes = x.reshape(shape[0] * shape[1], -1)
    np.testing.assert_array_equal(np.take_along_axis(planes, idx.reshape(planes.shape[0], -1), 1).reshape(y.shape), y)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = fastconv.max_pool2d_backward(gy, idx, shape)
    assert_close(gx, reference.max_pool2d_backward(gy, idx, shape), dtype, "grad_x")
    assert_close(gx.sum(axis=(2, 3)), gy.sum(axis=(2, 3)), dtype, "gradient mass")


@settings(max_examples=40, deadline=None)
@given(problem=pool_problems())
def test_property_matches_torch(problem):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
    shape, kw, dtype, seed = problem
    try:
        pool2d_params(shape, **kw)
    except ValueError:
        assume(False)
    x = tie_free(np.random.default_rng(seed), shape, dtype)
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    assert_matches_torch(torch, x, kw, y, idx)
