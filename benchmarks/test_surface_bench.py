"""Issue 15's ops: conv_transpose2d forward (with fastconv's conv2d grad_x alone on
the same geometry: the goal's reference) and backward, avg_pool2d and
max_unpool2d forward and backward, fastconv against the NumPy reference and
torch CPU (and on a GPU fastconv CUDA and cuDNN).  One benchmark group per
operation and shape (see test_conv_bench.py for how to run)."""

from __future__ import annotations

import pytest

from benchmarks.conftest import cases_and_impls, run_op

TESTS = {"test_conv_transpose2d_forward": ("convt", "convt_fwd"),
         "test_conv_transpose2d_backward": ("convt", "convt_bwd"),
         "test_avg_pool2d_forward": ("avgpool", "avgpool_fwd"), "test_avg_pool2d_backward": ("avgpool", "avgpool_bwd"),
         "test_max_unpool2d_forward": ("unpool", "unpool_fwd"), "test_max_unpool2d_backward": ("unpool", "unpool_bwd")}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        family, op = TESTS[metafunc.function.__name__]
        metafunc.parametrize(("case", "impl"), cases_and_impls(metafunc.config, family, (op,)))


def test_conv_transpose2d_forward(benchmark, case, impl, full):
    run_op(benchmark, "convt_fwd", case, impl, full)


def test_conv_transpose2d_backward(benchmark, case, impl, full):
    run_op(benchmark, "convt_bwd", case, impl, full)


def test_avg_pool2d_forward(benchmark, case, impl, full):
    run_op(benchmark, "avgpool_fwd", case, impl, full)


def test_avg_pool2d_backward(benchmark, case, impl, full):
    run_op(benchmark, "avgpool_bwd", case, impl, full)


def test_max_unpool2d_forward(benchmark, case, impl, full):
    run_op(benchmark, "unpool_fwd", case, impl, full)


def test_max_unpool2d_backward(benchmark, case, impl, full):
    run_op(benchmark, "unpool_bwd", case, impl, full)
