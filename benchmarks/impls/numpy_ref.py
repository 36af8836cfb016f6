"""``fastconv.reference``, the float64 NumPy oracle: it checks every other
implementation once per group and is timed only on small problems (it loops
over kernel taps or output pixels in Python)."""

from __future__ import annotations

import math
from typing import Any, Callable

from benchmarks.shapes import AvgPoolCase, ConvCase, ConvTransposeCase, PoolCase, conv_flops, surface_work

MAX_FLOPS = 2_000_000_000
MAX_POOL_OUTPUTS = 1_000
MAX_UNPOOL_INPUTS = 100_000


def fns() -> dict[str, Callable[..., Any]]:
    from fastconv import reference

    return {
        "conv2d_fwd": lambda c, x, w, b: reference.conv2d(x, w, b, **c.kwargs),
        "conv2d_bwd": lambda c, gy, x, w: reference.conv2d_backward(gy, x, w, **c.kwargs),
        "pool_fwd": lambda c, x: reference.max_pool2d(x, *c.args),
        "pool_fwd_idx": lambda c, x: reference.max_pool2d(x, *c.args, return_indices=True),
        "pool_bwd": lambda c, gy, idx, x: reference.max_pool2d_backward(gy, idx, c.x_shape),
        "convt_fwd": lambda c, x, w: reference.conv_transpose2d(x, w, None, **c.kwargs),
        "convt_bwd": lambda c, gy, x, w: reference.conv_transpose2d_backward(gy, x, w, **c.kwargs),
        "avgpool_fwd": lambda c, x: reference.avg_pool2d(x, *c.args),
        "avgpool_bwd": lambda c, gy, x: reference.avg_pool2d_backward(gy, c.x_shape, *c.args),
        "unpool_fwd": lambda c, x, idx: reference.max_unpool2d(x, idx, *c.args),
        "unpool_bwd": lambda c, gy, idx: reference.max_unpool2d_backward(gy, idx, *c.args),
    }


def applies(op: str, case: Any) -> str | None:
    if isinstance(case, ConvCase) and conv_flops(case, op) > MAX_FLOPS:
        return f"not timed above {MAX_FLOPS / 1e9:g} GFLOP (float64 reference too slow)"
    if isinstance(case, ConvTransposeCase) and surface_work(case, op) > MAX_FLOPS:
        return f"not timed above {MAX_FLOPS / 1e9:g} GFLOP (float64 reference too slow)"
    windows = isinstance(case, PoolCase) and op != "pool_bwd" or isinstance(case, AvgPoolCase)
    if windows and case.params.oh * case.params.ow > MAX_POOL_OUTPUTS:
        return f"not timed above {MAX_POOL_OUTPUTS} output pixels per plane (Python loop over windows)"
    if op == "unpool_fwd" and math.prod(case.x_shape) > MAX_UNPOOL_INPUTS:
        return f"not timed above {MAX_UNPOOL_INPUTS} input elements (Python loop over elements)"
    return None
