"""CUDA test directory: runs in numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1, its
own pytest process) or on a real GPU; every test here is skipped, with the
reason, when neither is present.  Device helpers live in ``cudahelpers.py``.

The simulator runs each CUDA thread as a Python thread; a short interpreter
switch interval makes its ``syncthreads`` barriers ~10x cheaper (timing only).
"""

from __future__ import annotations

import sys

import pytest

from cudahelpers import AVAILABLE, REASON, SIM

if SIM:
    sys.setswitchinterval(1e-4)


@pytest.fixture(autouse=True)
def _requires_cuda():
    if not AVAILABLE:
        pytest.skip(f"CUDA tests need a GPU or numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1): {REASON}")
