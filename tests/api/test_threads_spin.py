"""fastconv._threads.start_numba_threads: Numba's OpenMP pool starts once, with a
short spin only when a BLAS pool is multi-threaded at that moment, with the
environment restored at once and the user's own settings left alone.  The
choice is checked with a recording stand-in for Numba's launcher (in this
process the pool already runs) and once end to end in a fresh interpreter.
No timing assertions: benchmarks/default_env.py measures what it gains."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import threadpoolctl
from numba.np.ufunc import parallel

from fastconv import _threads

from tests.helpers import REPO_ROOT as ROOT


@pytest.fixture
def fresh_start(monkeypatch):
    """A pool that is not started yet; the launcher records GOMP_SPINCOUNT as
    libgomp would read it when Numba loads it."""
    seen: list[str | None] = []
    monkeypatch.setattr(parallel, "_is_initialized", False)
    monkeypatch.setattr(parallel, "_launch_threads", lambda: seen.append(os.environ.get("GOMP_SPINCOUNT")))
    monkeypatch.setattr(_threads, "_numba_start", "")
    for var in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)
    return seen


def blas_limit(n):
    import scipy.linalg  # noqa: F401  (every BLAS a kernel may load is loaded first)

    return threadpoolctl.threadpool_limits(limits=n, user_api="blas")


def test_multithreaded_blas_gets_a_short_spin_only_while_numba_loads(fresh_start):
    with blas_limit(2):
        _threads.start_numba_threads()
    assert fresh_start == [_threads.NUMBA_OPENMP_SPINCOUNT]
    assert "GOMP_SPINCOUNT" not in os.environ
    assert "short spin" in _threads._numba_start


def test_single_threaded_blas_keeps_openmp_default_spin(fresh_start):
    with blas_limit(1):
        _threads.start_numba_threads()
    assert fresh_start == [None]
    assert "default spin" in _threads._numba_start


@pytest.mark.parametrize("var, value", [("GOMP_SPINCOUNT", "123"), ("OMP_WAIT_POLICY", "passive")])
def test_user_setting_wins(fresh_start, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with blas_limit(2):
        _threads.start_numba_threads()
    assert fresh_start == [os.environ.get("GOMP_SPINCOUNT")]
    assert os.environ[var] == value
    assert f"{var}={value}" in _threads._numba_start


def test_starts_once(fresh_start):
    with blas_limit(2):
        _threads.start_numba_threads()
        _threads.start_numba_threads()
    assert len(fresh_start) == 1


def test_pool_started_by_other_code_is_left_alone(fresh_start, monkeypatch):
    monkeypatch.setattr(parallel, "_is_initialized", True)
    _threads.start_numba_threads()
    assert fresh_start == []
    assert "before fastconv" in _threads._numba_start


def test_nn_training_first_starts_with_default_spin(fresh_start):
    """fit limits BLAS to one thread before its first kernel: the default spin."""
    with blas_limit(2), _threads.single_thread_blas():
        _threads.start_numba_threads()
    assert fresh_start == [None]


def test_launch_error_is_left_to_the_first_kernel(fresh_start, monkeypatch):
    def broken():
        raise ValueError("no threading layer")

    monkeypatch.setattr(parallel, "_launch_threads", broken)
    with blas_limit(2):
        _threads.start_numba_threads()  # does not raise: Numba raises it at the kernel
    assert "GOMP_SPINCOUNT" not in os.environ


_CHILD = r"""
import json, os
import numpy as np
import fastconv
from fastconv import _threads
x = np.ones((1, 1, 5, 5), np.float32)
before = _threads._numba_start
fastconv.conv2d(x, np.ones((1, 1, 3, 3), np.float32))
import numba
print(json.dumps({"before": before, "after": _threads._numba_start, "layer": numba.threading_layer(),
                  "env": os.environ.get("GOMP_SPINCOUNT")}))
"""


def test_first_functional_call_starts_the_pool_end_to_end():
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(OPENBLAS_NUM_THREADS="2", NUMBA_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600,
                         cwd=ROOT, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] == ""  # not at import
    assert got["env"] is None
    if got["layer"] == "omp":
        assert "short spin" in got["after"], got
    else:
        assert got["after"], got
