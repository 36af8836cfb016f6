"""CUDA test directory: runs in numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1, its
own pytest process) or on a real GPU; every test here is skipped, with the
reason, when neither is present.  Device helpers live in ``cudahelpers.py``.

The simulator runs each CUDA thread as a Python thread; a short interpreter
switch interval makes its ``syncthreads`` barriers ~10x cheaper (timing only).

The simulator's ``cuda.shared.array`` (numba-cuda 0.30, ``FakeCUDAShared.array``)
looks up and stores its per-launch allocation without a lock, so two threads of
one block can each create an array and one of them writes into an array no
other thread reads: a shared-memory reduction then reads uninitialised memory
(seen once in CI: a max of int64 indices that was a float64 bit pattern;
reproduced about once in 3,000 launches of an 8-thread kernel).  Under the
simulator the conftest installs the same lookup behind a lock.  This is a
simulator defect; real GPUs are unaffected.
"""

from __future__ import annotations

import contextlib
import sys
import threading

import numpy as np
import pytest

from tests.cuda.cudahelpers import AVAILABLE, REASON, SIM, stream_handle


def _make_locked_shared_array():
    from numba.cuda.simulator import kernelapi

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:  # dynamic shared memory / errors: unchanged
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)  # one allocation per source line, as upstream
        with lock:
            res = self._allocations.get(key)
            if res is None:
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array


if SIM:
    sys.setswitchinterval(1e-4)
    _make_locked_shared_array()


@pytest.fixture(autouse=True)
def _requires_cuda():
    if not AVAILABLE:
        pytest.skip(f"CUDA tests need a GPU or numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1): {REASON}")


# --------------------------------------------------------------------------- stream-rule spies
# (tests/cuda/test_cuda_streams.py, test_cuda_surface_streams.py)


@pytest.fixture
def launches(monkeypatch):
    """Streams named by every kernel launch (the simulator's kernel[grid, block, stream])."""
    from numba.cuda.simulator import kernel

    log: list = []
    real = kernel.FakeCUDAKernel.__getitem__

    def getitem(self, configuration):
        log.append(configuration[2] if len(configuration) > 2 else 0)
        return real(self, configuration)

    monkeypatch.setattr(kernel.FakeCUDAKernel, "__getitem__", getitem)
    return log


@pytest.fixture
def events(monkeypatch):
    """("record", stream) / ("wait", stream) of every event the rule uses."""
    from numba import cuda

    log: list = []

    class Event:
        def record(self, stream=0):
            log.append(("record", stream_handle(stream)))

        def wait(self, stream=0):
            log.append(("wait", stream_handle(stream)))

    monkeypatch.setattr(cuda, "event", lambda *a, **k: Event())
    return log


@pytest.fixture
def devices_entered(monkeypatch):
    """Device contexts entered (``cuda.gpus[i]``) while every pointer lives on device 1."""
    from numba import cuda

    entered: list = []
    real = cuda.gpus

    class Gpus:
        def __getitem__(self, i):
            entered.append(i)
            return contextlib.nullcontext()

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(cuda, "gpus", Gpus())
    from fastconv.cuda import _streams

    monkeypatch.setattr(_streams, "pointer_device", lambda ptr: 1)
    return entered
