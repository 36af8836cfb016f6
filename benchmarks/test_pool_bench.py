"""max_pool2d forward (with and without indices) and backward: fastconv against
the NumPy reference, a NumPy stride-tricks window implementation, torch CPU
and, on a GPU, fastconv CUDA, cuDNN and CuPy.  One benchmark group per
operation and shape (see test_conv_bench.py for how to run)."""

from __future__ import annotations

import pytest

from benchmarks.conftest import cases_and_impls, run_op


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        metafunc.parametrize(("case", "impl"), cases_and_impls(metafunc.config, "pool", ("pool_fwd",)))


def test_max_pool2d_forward(benchmark, case, impl, full):
    run_op(benchmark, "pool_fwd", case, impl, full)


def test_max_pool2d_forward_indices(benchmark, case, impl, full):
    run_op(benchmark, "pool_fwd_idx", case, impl, full)


def test_max_pool2d_backward(benchmark, case, impl, full):
    run_op(benchmark, "pool_bwd", case, impl, full)
