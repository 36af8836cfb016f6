"""The vectorised max_pool2d forward with indices at realistic sizes.

tests/api/test_max_pool2d.py holds the full option matrix on small planes; its rows are
shorter than one SIMD vector, so the vector bodies of the kernels (the 2x2 and
3x3 column-stride-2 rows, the generic per-tap passes, the int64 widening of the
int32 in-window offsets) only run here: planes 26..113 wide, many row blocks,
rows that do not divide evenly into blocks, border columns next to interior
ones, and 1 and 2 threads.  Oracles: the float64 reference (exact values and
indices: PyTorch's rule, strict ``>`` in row-major window order, NaN wins, the
last NaN's index), a vectorised NumPy window argmax for the largest shape (the
reference's Python loop over windows takes seconds there; tie-free inputs make
the first-maximum argmax exact), and PyTorch when installed.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import pool2d_params
from tests.helpers import tie_free

DTYPES = [np.float32, np.float64]

# (x shape, max_pool2d keyword arguments, which kernel row path it reaches)
WIDE_CASES = [
    ((64, 32, 26, 26), dict(kernel_size=2, stride=2), "k2s2 interior (the MNIST convnet's first pool)"),
    ((64, 64, 11, 11), dict(kernel_size=2, stride=2), "k2s2, odd width (last column dropped)"),
    ((2, 8, 57, 75), dict(kernel_size=3, stride=2, padding=1), "k3s2p1 interior + border columns and rows"),
    ((2, 8, 40, 75), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True), "k2s2p1 border columns"),
    ((2, 8, 31, 70), dict(kernel_size=3, stride=2, ceil_mode=True), "k3s2 ceil_mode: a last partial window"),
    ((2, 8, 30, 70), dict(kernel_size=3, stride=1, padding=1), "generic, column stride 1"),
    ((2, 8, 30, 75), dict(kernel_size=3, stride=3), "generic, column stride 3"),
    ((2, 8, 41, 70), dict(kernel_size=3, stride=2, padding=1, dilation=2), "generic, dilation, stride 2"),
    ((2, 8, 30, 70), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1)), "generic, non-square"),
]
CASE_IDS = [f"{'x'.join(map(str, s))}-" + "-".join(f"{k}{v}" for k, v in kw.items()) for s, kw, _ in WIDE_CASES]


def assert_equals_torch(torch, x, kw, y, idx):
    """Values (NaN == NaN) and indices equal PyTorch's; a no-op without torch."""
    if torch is None:
        return
    y_t, idx_t = torch.nn.functional.max_pool2d(torch.from_numpy(x), return_indices=True, **kw)
    np.testing.assert_array_equal(y, y_t.numpy())
    np.testing.assert_array_equal(idx, idx_t.numpy())


def assert_equals_reference(x, kw, y, idx):
    y_ref, idx_ref = reference.max_pool2d(x, **kw, return_indices=True)
    assert y.dtype == x.dtype and idx.dtype == np.int64 and y.shape == y_ref.shape
    np.testing.assert_array_equal(y, y_ref.astype(x.dtype))
    np.testing.assert_array_equal(idx, idx_ref)


def window_argmax(x, kernel_size, stride, padding):
    """(values, flat indices) by a stride-tricks view of the -inf-padded input and
    ``argmax`` (first maximum) over each window in row-major order.  Exact for
    finite inputs; no ceil_mode, no dilation."""
    n, c, h, w = x.shape
    p = pool2d_params(x.shape, kernel_size, stride, padding, 1, False)
    xp = np.full((n, c, h + 2 * p.ph, w + 2 * p.pw), -np.inf, x.dtype)
    xp[:, :, p.ph:p.ph + h, p.pw:p.pw + w] = x
    s = xp.strides
    win = np.lib.stride_tricks.as_strided(xp, (n, c, p.oh, p.ow, p.kh, p.kw),
                                          (s[0], s[1], p.sh * s[2], p.sw * s[3], s[2], s[3]))
    win = win.reshape(n, c, p.oh, p.ow, p.kh * p.kw)
    a = win.argmax(axis=-1)
    y = np.take_along_axis(win, a[..., None], axis=-1)[..., 0]
    rows = (np.arange(p.oh) * p.sh - p.ph)[:, None] + a // p.kw
    cols = (np.arange(p.ow) * p.sw - p.pw)[None, :] + a % p.kw
    return y, rows * w + cols


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kw, _path", WIDE_CASES, ids=CASE_IDS)
def test_wide_rows_match_reference(maybe_torch, rng, threads, shape, kw, _path, dtype):
    x = tie_free(rng, shape, dtype)
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    assert_equals_reference(x, kw, y, idx)
    assert_equals_torch(maybe_torch, x, kw, y, idx)


def test_resnet_stem_pool_matches_window_argmax(maybe_torch, rng):
    """(32,64,112,112) 3x3 stride 2 padding 1, float32: the ResNet stem pool."""
    x = rng.standard_normal((32, 64, 112, 112), dtype=np.float32)
    y, idx = fastconv.max_pool2d(x, 3, 2, 1, return_indices=True)
    y_np, idx_np = window_argmax(x, 3, 2, 1)
    np.testing.assert_array_equal(y, y_np)
    np.testing.assert_array_equal(idx, idx_np)
    assert_equals_torch(maybe_torch, x, dict(kernel_size=3, stride=2, padding=1), y, idx)


TIE_KW = [dict(kernel_size=2, stride=2), dict(kernel_size=3, stride=2, padding=1),
          dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2, padding=1, dilation=2)]
TIE_IDS = ["k2s2", "k3s2p1", "k3s1p1", "k3s2p1d2"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", TIE_KW, ids=TIE_IDS)
def test_wide_ties_first_maximum_wins(maybe_torch, rng, threads, kw, dtype):
    """Three distinct values: most windows tie; the first maximum in row-major order wins."""
    x = rng.integers(0, 3, (4, 8, 30, 74)).astype(dtype)
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    assert_equals_reference(x, kw, y, idx)
    assert_equals_torch(maybe_torch, x, kw, y, idx)


@pytest.mark.parametrize("kw", TIE_KW, ids=TIE_IDS)
def test_wide_constant_plane_points_at_first_in_bounds_element(kw):
    x = np.full((2, 3, 29, 70), -1.5, np.float32)
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    assert_equals_reference(x, kw, y, idx)
    assert (y == -1.5).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", TIE_KW, ids=TIE_IDS)
@pytest.mark.parametrize("density", [0.02, 0.3])
def test_wide_nan_and_inf(maybe_torch, rng, threads, kw, dtype, density):
    """NaN wins and the last NaN's index is kept; +inf wins, -inf loses to anything finite."""
    x = tie_free(rng, (4, 8, 30, 74), dtype)
    flat = x.reshape(-1)
    pos = rng.choice(flat.size, size=int(density * flat.size), replace=False)
    flat[pos] = rng.choice([np.nan, np.inf, -np.inf], size=pos.size, p=[0.5, 0.25, 0.25])
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    assert np.isnan(y).any() and np.isposinf(y).any()
    assert_equals_reference(x, kw, y, idx)
    assert_equals_torch(maybe_torch, x, kw, y, idx)


@pytest.mark.parametrize("kw", TIE_KW, ids=TIE_IDS)
def test_wide_all_neg_inf_windows(maybe_torch, kw):
    """An all -inf window points at its first in-bounds element, padding or not."""
    x = np.full((2, 4, 21, 70), -np.inf, np.float32)
    x[:, :, 5, 7::9] = 2.0
    y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
    assert np.isneginf(y).any()
    assert_equals_reference(x, kw, y, idx)
    assert_equals_torch(maybe_torch, x, kw, y, idx)


def test_fewer_rows_than_blocks_and_one_plane(maybe_torch, rng, threads):
    """3 output rows in all (fewer than the kernel's row blocks), and one plane of many rows."""
    for shape in [(1, 1, 7, 80), (1, 1, 257, 66), (3, 1, 2, 40)]:
        for kw in TIE_KW[:2]:
            x = tie_free(rng, shape, np.float32)
            y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
            assert_equals_reference(x, kw, y, idx)
            assert_equals_torch(maybe_torch, x, kw, y, idx)


def test_backward_uses_the_fast_indices(rng):
    """The indices feed the backward unchanged: gradient lands on the argmax."""
    x = tie_free(rng, (8, 16, 26, 26), np.float32)
    y, idx = fastconv.max_pool2d(x, 2, 2, return_indices=True)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx = fastconv.max_pool2d_backward(gy, idx, x.shape)
    np.testing.assert_allclose(gx, reference.max_pool2d_backward(gy, idx, x.shape), rtol=1e-6)
