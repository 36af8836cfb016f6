"""pytest-benchmark plumbing for the suites in this directory.

Shape sets: when benchmarks are disabled (pytest's default here, pyproject
passes ``--benchmark-disable``) the suites run as quick tests on tiny shapes;
with ``--benchmark-enable`` (e.g. ``--benchmark-enable --benchmark-only``) they
time the full standard shapes.  ``FASTCONV_BENCH_FULL=1`` / ``=0`` forces
either set.  ``FASTCONV_BENCH_THREADS`` (default 2) is the thread count given
to numba and torch alike.

Every benchmark: inputs made once per group (several input sets, cycled by
the timed callable), one warm-up call (JIT compile, outside timing) whose
output is checked against the float64 reference, then ``benchmark(...)``.
"""

from __future__ import annotations

import itertools
import os
import zlib
from typing import Any

import numpy as np
import pytest

from benchmarks import check, impls, inputs
from benchmarks.shapes import FLOP_OPS, op_work, shapes, surface_shapes
from benchmarks.threads import set_threads


def full_mode(config: pytest.Config) -> bool:
    env = os.environ.get("FASTCONV_BENCH_FULL")
    if env is not None and env != "":
        return env not in ("0", "false", "no")
    try:
        disabled = config.getoption("benchmark_disable") and not config.getoption("benchmark_enable")
    except ValueError:  # pytest-benchmark not installed
        return False
    return not disabled


def pytest_report_header(config: pytest.Config) -> str:
    mode = "full standard shapes" if full_mode(config) else "tiny test shapes (FASTCONV_BENCH_FULL=1 for full)"
    return f"fastconv benchmarks: {mode}, {bench_threads()} threads"


def bench_threads() -> int:
    return int(os.environ.get("FASTCONV_BENCH_THREADS", "2"))


@pytest.fixture(scope="session", autouse=True)
def _threads() -> dict[str, Any]:
    return set_threads(bench_threads())


@pytest.fixture(scope="session")
def full(pytestconfig: pytest.Config) -> bool:
    return full_mode(pytestconfig)


def cases_and_impls(config: pytest.Config, family: str, ops: tuple[str, ...]) -> list[Any]:
    """pytest params (case, impl name), case-major so one group's tests run together."""
    conv, pool, _ = shapes(full_mode(config))
    cases = {"conv": conv, "pool": pool, **surface_shapes(full_mode(config))}[family]
    names = impls.impl_names(ops)
    return [pytest.param(c, n, id=f"{c.name}-{n}") for c in cases for n in names]


_INPUTS: dict[Any, Any] = {}


def group_inputs(op: str, case: Any, full: bool) -> tuple[list[tuple[np.ndarray, ...]], Any]:
    """(input sets, reference output on set 0) for one group, shared by its
    implementations (only the latest group is kept: inputs can be 100s of MB)."""
    key = (op, case)
    if key not in _INPUTS:
        _INPUTS.clear()
        rng = np.random.default_rng(zlib.crc32(repr(key).encode()))
        sets = inputs.make_inputs(op, case, rng, None if full else 2)
        _INPUTS[key] = (sets, check.expected(op, case, sets[0]))
    return _INPUTS[key]


def run_op(benchmark: Any, op: str, case: Any, impl_name: str, full: bool) -> None:
    """Warm up and check once, then time ``impl_name`` on ``op``/``case`` with rotated inputs."""
    impl = impls.get_impl(impl_name)
    reason = impl.skip_reason(op, case)
    if reason:
        pytest.skip(reason)
    sets, ref = group_inputs(op, case, full)
    call = impl.bind(op, case, sets)
    check.check(op, impl.host(call(0)), ref)  # first call: JIT compile + the one correctness check
    call(1 % len(sets))
    benchmark.group = f"{op} {case.name} {case.label}"
    benchmark.extra_info["flops" if op in FLOP_OPS else "bytes"] = op_work(case, op)[0]
    benchmark.extra_info["input_sets"] = len(sets)
    order = itertools.cycle(range(len(sets)))
    benchmark(lambda: call(next(order)))
