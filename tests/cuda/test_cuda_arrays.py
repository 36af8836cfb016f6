"""The CUDA backend's array plumbing: zero-copy wrapping, device-side casts,
poisoned allocation, the index-range reduction, availability."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
import fastconv._alloc
import fastconv.cuda
from fastconv.cuda import _arrays

from tests.cuda.cudahelpers import dev, host


def test_available_here():
    assert fastconv.cuda.is_available()
    fastconv.cuda.require_available()


def test_asarray_is_zero_copy_and_checks_dtype():
    a = dev(np.arange(6.0).reshape(2, 3))
    assert fastconv.cuda.asarray(a, "x") is a
    with pytest.raises(TypeError, match=r"weight must have a real numeric dtype .* got dtype bool"):
        fastconv.cuda.asarray(dev(np.ones(3, bool)), "weight")
    with pytest.raises(TypeError, match=r"x must be a CUDA device array .* got ndarray"):
        fastconv.cuda.asarray(np.ones(3), "x")


def test_ascompute_passes_through_or_casts_on_device(rng):
    a = dev(rng.standard_normal((2, 3, 4, 5)).astype(np.float32))
    assert fastconv.cuda.ascompute(a, np.float32) is a
    x = rng.standard_normal((2, 3, 4, 10))
    strided = dev(x)[:, 1:, :, ::3]
    got = fastconv.cuda.ascompute(strided, np.float32)
    assert got.is_c_contiguous() and got.dtype == np.float32
    assert np.array_equal(host(got), x[:, 1:, :, ::3].astype(np.float32))
    b = rng.integers(-5, 5, size=9)
    got1 = fastconv.cuda.ascompute(dev(b)[::2], np.float64)
    assert np.array_equal(host(got1), b[::2].astype(np.float64))


def test_empty_is_poisoned_while_poison_is_set():
    assert fastconv._alloc.POISON  # root conftest
    assert np.isnan(host(_arrays.empty((3, 4), np.float32))).all()
    assert (host(_arrays.empty((5,), np.int64)) == np.iinfo(np.int64).min).all()
    assert not host(fastconv.cuda.zeros((2, 3), np.float64)).any()


def test_index_range(rng):
    idx = rng.integers(-7, 50, size=(2, 3, 4, 5)).astype(np.int64)
    assert fastconv.cuda.index_range(dev(idx)) == (int(idx.min()), int(idx.max()))
    assert fastconv.cuda.index_range(dev(idx)[:, :, ::2]) == (int(idx[:, :, ::2].min()), int(idx[:, :, ::2].max()))
