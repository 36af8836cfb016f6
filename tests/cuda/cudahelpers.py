"""Helpers for the CUDA tests: availability, host<->device copies, the root
conftest's tolerances (loaded by path: ``conftest`` is an ambiguous module name
with two conftest files)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import fastconv.cuda

REASON = fastconv.cuda.unavailable_reason()
AVAILABLE = REASON is None
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
GPU = AVAILABLE and not SIM

# A real-GPU-only test (the simulator says nothing about speed or real-size behaviour).
gpu_only = pytest.mark.skipif(
    not GPU, reason="needs a real CUDA GPU: " + ("the simulator is on" if SIM else str(REASON)))

_spec = importlib.util.spec_from_file_location("_fastconv_root_conftest", Path(__file__).parents[1] / "conftest.py")
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
TOL, rel_err, assert_close = _root.TOL, _root.rel_err, _root.assert_close


def dev(a):
    """Host array -> numba device array (C-contiguous copy)."""
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    """Device array -> NumPy array, checking it is a device array first."""
    from numba.cuda.cudadrv.devicearray import is_cuda_ndarray

    assert is_cuda_ndarray(a), f"expected a device array, got {type(a).__name__}"
    return a.copy_to_host()


def tie_free(rng, shape, dtype=np.float64):
    """Distinct values (a shuffled linspace): the argmax of every pooling window is unique."""
    size = int(np.prod(shape))
    return rng.permutation(np.linspace(-1.0, 1.0, max(size, 1)))[:size].reshape(shape).astype(dtype)
