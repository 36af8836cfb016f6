"""Device helpers for the CUDA tests: availability, host<->device copies and the
fake third-party arrays of the stream-rule tests (the
shared tolerances, gradient checks and spies are in tests/helpers.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

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


# --------------------------------------------------------------------------- stream-rule fakes


class FakeArray:
    """A third-party CUDA array: an interface (v3) over host memory, with a stream."""

    def __init__(self, a: np.ndarray, stream: int | None = None, version: int = 3) -> None:
        self.a = np.ascontiguousarray(a)
        desc = dict(self.a.__array_interface__, version=version)
        desc.pop("descr", None)
        if stream is not None:
            desc["stream"] = stream
        self.__cuda_array_interface__ = desc


class FakeTorchTensor(FakeArray):
    """Looks like a torch CUDA tensor: module ``torch``, a ``device``, an interface without stream."""

    __module__ = "torch"

    def __init__(self, a: np.ndarray) -> None:
        super().__init__(a, None, version=2)
        self.device = SimpleNamespace(index=0, type="cuda")


def stream_handle(stream):
    """The raw handle of a stream object (the simulator's stand-in keeps it), or the int itself."""
    return getattr(stream, "handle", stream)
