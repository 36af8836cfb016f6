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

import sys
import threading

import numpy as np
import pytest

from tests.cuda.cudahelpers import AVAILABLE, REASON, SIM


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
