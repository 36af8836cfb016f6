"""fastconv through its public API: ``conv2d``/``conv2d_backward`` with
``algorithm="auto"`` (what a user gets: the headline column) or one forced
algorithm, ``max_pool2d``/``max_pool2d_backward``, issue 15's
``conv_transpose2d``, ``avg_pool2d`` and ``max_unpool2d`` with their backwards,
and conv2d's grad_x alone (the reference row of conv_transpose2d's goal); on the
CPU and on a GPU (numba-cuda device arrays)."""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

import numpy as np


def algorithms() -> tuple[str, ...]:
    """The algorithms a caller can force (every name but "auto"), so a new one
    (Winograd, ...) gets its benchmark rows without touching this file."""
    from fastconv._params import CONV_ALGORITHMS

    return tuple(a for a in CONV_ALGORITHMS if a != "auto")


def available() -> str | None:
    """None if fastconv imports, else why not."""
    try:
        importlib.import_module("fastconv")
    except ImportError as exc:
        return f"fastconv not importable ({exc})"
    return None


def conv_fns(algorithm: str) -> dict[str, Callable[..., Any]]:
    import fastconv

    return {
        "conv2d_fwd": lambda c, x, w, b: fastconv.conv2d(x, w, b, **c.kwargs, algorithm=algorithm),
        "conv2d_bwd": lambda c, gy, x, w: fastconv.conv2d_backward(gy, x, w, **c.kwargs, algorithm=algorithm),
    }


def pool_fns() -> dict[str, Callable[..., Any]]:
    import fastconv

    return {
        "pool_fwd": lambda c, x: fastconv.max_pool2d(x, *c.args),
        "pool_fwd_idx": lambda c, x: fastconv.max_pool2d(x, *c.args, return_indices=True),
        "pool_bwd": lambda c, gy, idx, x: fastconv.max_pool2d_backward(gy, idx, c.x_shape),
    }


def surface_fns() -> dict[str, Callable[..., Any]]:
    """Issue 15's ops (``shapes.SURFACE_OPS``) through the public API."""
    import fastconv

    return {
        "convt_fwd": lambda c, x, w: fastconv.conv_transpose2d(x, w, None, **c.kwargs),
        "convt_bwd": lambda c, gy, x, w: fastconv.conv_transpose2d_backward(gy, x, w, **c.kwargs),
        "avgpool_fwd": lambda c, x: fastconv.avg_pool2d(x, *c.args),
        "avgpool_bwd": lambda c, gy, x: fastconv.avg_pool2d_backward(gy, c.x_shape, *c.args),
        "unpool_fwd": lambda c, x, idx: fastconv.max_unpool2d(x, idx, *c.args),
        "unpool_bwd": lambda c, gy, idx: fastconv.max_unpool2d_backward(gy, idx, *c.args),
    }


def grad_x_fns(device: str) -> dict[str, Callable[..., Any]]:
    """conv2d's grad_x alone in conv_transpose2d's groups: the backend's ``conv2d_input_grad``
    under the plan ``conv_transpose2d`` builds (``fastconv._surface._conv_plan``) on the conv2d
    whose grad_x the transposed forward is, without the op around it (validation, dtype,
    padding of x, output allocation by the op): issue 15's 1.1x goal divides by this row."""
    from fastconv import _dispatch, _surface

    name = "cuda" if device == "gpu" else "cpu"

    def grad_x(c: Any, x: Any, w: Any) -> Any:
        plan = _surface._conv_plan(c.params, np.dtype(x.dtype), name, "auto")
        return _dispatch.backend(name).conv2d_input_grad(x, w, plan)

    return {"convt_fwd": grad_x}


def grad_x_applies(op: str, case: Any) -> str | None:
    """The grad_x row needs the conv2d's grad_output to be x itself (no zero rows appended)."""
    t = case.params
    if t.extra_h or t.extra_w:
        return "output_padding >= stride pads x first: no plain conv2d grad_x has this geometry"
    return None


def cuda_available() -> str | None:
    try:
        import fastconv.cuda as fcuda
    except ImportError as exc:
        return f"fastconv.cuda not importable ({exc})"
    is_available = getattr(fcuda, "is_available", None)
    if is_available is None:
        return "fastconv.cuda backend not built yet"
    if not is_available():
        return "no CUDA GPU (fastconv.cuda.is_available() is False)"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "numba CUDA simulator: timings would mean nothing"
    return None


def cuda_to_native(a: np.ndarray) -> Any:
    from numba import cuda

    return cuda.to_device(a)


def cuda_to_host(a: Any) -> np.ndarray:
    return a.copy_to_host()


def cuda_sync() -> None:
    from numba import cuda

    cuda.synchronize()


def auto_choice(case: Any, op: str) -> str | None:
    """The algorithm ``algorithm="auto"`` runs for ``op`` on ``case`` (CPU), for
    the report's cost-model table: the plan's when fastconv has
    ``plan_conv2d``, else the dispatch rule's; None when neither answers."""
    import fastconv

    try:
        plan_conv2d = getattr(fastconv, "plan_conv2d", None)
        if plan_conv2d is not None:
            plan = plan_conv2d(case.x_shape, case.params.weight_shape, dtype="float32", **case.kwargs)
            if op.endswith("_bwd"):
                return str(getattr(plan, "backward_algorithm", getattr(plan, "algorithm", plan)))
            return str(getattr(plan, "algorithm", plan))
        from fastconv import _dispatch

        return str(_dispatch.conv2d_algorithm("auto", case.params, "cpu", True))
    except Exception:  # an API in flux must not stop a report
        return None


def algorithm_applies(algorithm: str, device: str) -> Callable[[str, Any], str | None]:
    """Skip reason of a forced algorithm on a case it does not support (e.g. Winograd
    on a 1x1 or strided layer): the reason its plan gives, so the row says why."""

    def applies(op: str, case: Any) -> str | None:
        import fastconv

        if not op.startswith("conv2d") or not hasattr(case.params, "weight_shape"):
            return None  # not a convolution case: the op table says what runs
        try:
            fastconv.plan_conv2d(case.x_shape, case.params.weight_shape, dtype="float32", algorithm=algorithm,
                                 backend="cuda" if device == "gpu" else "cpu", **case.kwargs)
        except ValueError as exc:
            return str(exc)
        return None

    return applies
