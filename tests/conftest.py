"""Fixtures shared by every test directory (helper functions: tests/helpers.py)."""

from __future__ import annotations

import secrets

import numba
import numpy as np
import pytest

from tests.helpers import poisoned_outputs


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every output a kernel entry allocates starts as NaN (or INT64_MIN)."""
    with poisoned_outputs():
        yield


@pytest.fixture
def rng():
    """A fresh generator per test; the seed is printed so a failure can be replayed."""
    seed = secrets.randbits(32)
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def torch():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
    torch.set_num_threads(2)
    return torch


@pytest.fixture(scope="session")
def maybe_torch():
    """torch (2 threads) when installed, else None: tests whose main oracle is the
    reference still run without torch and add the torch comparison when it is there."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    return torch


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run the kernels with 1 and 2 numba threads (capped by NUMBA_NUM_THREADS)."""
    old = numba.get_num_threads()
    numba.set_num_threads(min(request.param, numba.config.NUMBA_NUM_THREADS))
    yield request.param
    numba.set_num_threads(old)
