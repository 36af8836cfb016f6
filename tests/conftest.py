"""Shared test helpers: poisoned outputs, fresh random inputs, tolerances."""

from __future__ import annotations

import dataclasses
import secrets

import numpy as np
import pytest

import fastconv
import fastconv._alloc

# ||y - ref|| / ||ref|| bounds against the float64 reference (docs/architecture.md, "Testing").
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def rel_err(y, ref) -> float:
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert y.shape == ref.shape, f"shape {y.shape} != reference shape {ref.shape}"
    denom = np.linalg.norm(ref)
    num = np.linalg.norm(y - ref)  # NaN (a poisoned, unwritten element) makes this NaN -> fails
    return float(num / denom) if denom > 0 else float(num)


def assert_close(y, ref, dtype, what: str = "output") -> None:
    err = rel_err(y, ref)
    tol = TOL[np.dtype(dtype)]
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e} ({np.dtype(dtype)})"


def assert_same_nonfinite(got, want, dtype, what: str) -> None:
    """NaN and +-inf at the same positions as the reference, finite values within TOL."""
    assert got.dtype == dtype, what
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=f"{what}: +inf positions")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"{what}: -inf positions")
    fin = np.isfinite(want)
    assert rel_err(got[fin], want[fin]) <= TOL[np.dtype(dtype)], what


def spy_calls(monkeypatch, module, name) -> list:
    """Replace ``module.name`` by a wrapper that records each call's positional
    arguments (the list returned) and then calls the original."""
    real, calls = getattr(module, name), []

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def with_cpu(plan, **changes):
    """``plan`` with fields of its CPU section replaced (a test's way to choose
    a tiling, a chunking or a grad_weight walk: run it with
    ``fastconv.Conv2dOp.from_plan``)."""
    return dataclasses.replace(plan, cpu=dataclasses.replace(plan.cpu, **changes))


def run_plan(plan, x, weight, bias, grad_output):
    """(y, (grad_x, grad_weight, grad_bias)) of ``plan`` run by a fixed-plan op."""
    op = fastconv.Conv2dOp.from_plan(plan)
    y = op.forward(x, weight, bias)
    return y, op.backward(grad_output)


@pytest.fixture(autouse=True)
def poison_outputs():
    """Every output a kernel entry allocates starts as NaN (or INT64_MIN)."""
    old = fastconv._alloc.POISON
    fastconv._alloc.POISON = True
    yield
    fastconv._alloc.POISON = old


@pytest.fixture
def rng():
    """A fresh generator per test; the seed is printed so a failure can be replayed."""
    seed = secrets.randbits(32)
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def torch():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
    torch.set_num_threads(2)
    return torch


def check_vjp(f, arrays, grads, gy, rng, eps=1e-6, points=6) -> None:
    """Central finite differences in float64: for ``points`` random coordinates
    of each array in ``arrays`` (a dict name -> array), d/da sum(f(**arrays) * gy)
    must match the analytic gradient ``grads[name]`` (the ops checked this way
    are linear or piecewise linear in each argument, so the bound is tight)."""
    for name, a in arrays.items():
        for _ in range(points):
            i = tuple(int(rng.integers(s)) for s in a.shape)
            plus, minus = dict(arrays), dict(arrays)
            plus[name], minus[name] = a.copy(), a.copy()
            plus[name][i] += eps
            minus[name][i] -= eps
            fd = (np.sum(f(**plus) * gy) - np.sum(f(**minus) * gy)) / (2 * eps)
            assert abs(fd - grads[name][i]) <= 1e-6 * max(1.0, abs(fd)), f"d/d{name}{i}: fd {fd} vs {grads[name][i]}"
