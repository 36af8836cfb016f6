"""conv2d forward and backward: every fastconv algorithm against the NumPy
reference, NumPy im2col, scipy.signal.correlate (single-channel shapes), torch
CPU and, on a GPU, fastconv CUDA, cuDNN and CuPy.  One benchmark group per
operation and shape.  ``pytest benchmarks --benchmark-enable --benchmark-only``
times the standard shapes; a plain ``pytest benchmarks`` checks tiny ones."""

from __future__ import annotations

import pytest

from benchmarks.conftest import cases_and_impls, run_op


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        metafunc.parametrize(("case", "impl"), cases_and_impls(metafunc.config, "conv", ("conv2d_fwd",)))


def test_conv2d_forward(benchmark, case, impl, full):
    run_op(benchmark, "conv2d_fwd", case, impl, full)


def test_conv2d_backward(benchmark, case, impl, full):
    run_op(benchmark, "conv2d_bwd", case, impl, full)
