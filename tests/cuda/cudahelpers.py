"""Device helpers for the CUDA tests: availability and host<->device copies (the
shared tolerances, gradient checks and spies are in tests/helpers.py)."""

from __future__ import annotations

import os

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


def dev(a):
    """Host array -> numba device array (C-contiguous copy)."""
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    """Device array -> NumPy array, checking it is a device array first."""
    from numba.cuda.cudadrv.devicearray import is_cuda_ndarray

    assert is_cuda_ndarray(a), f"expected a device array, got {type(a).__name__}"
    return a.copy_to_host()
