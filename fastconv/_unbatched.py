"""Unbatched (C, H, W) inputs at the API boundary, as PyTorch accepts them.

A public function lifts a 3-D input to a batch of one (``lift``), runs the
batched op unchanged, and drops the batch axis from its results (``drop``):
no kernel, plan or parameter object ever sees a 3-D array.  Arrays that are
already 4-D pass through as the very same object (``Conv2dOp`` recognises
"the very x of the forward" by identity).  Wrong ranks are refused here with
the argument's name, before anything runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._dispatch import is_device_array
from ._params import as_host_array

__all__ = ["check_like", "drop", "lift", "lift_shape"]


def _shape(a: Any, name: str) -> tuple[Any, tuple[int, ...] | None]:
    """(a, its shape) for host and device arrays; array-likes are converted
    once here; None and non-arrays are left to the op's own validation."""
    if a is None:
        return a, None
    shape = getattr(a, "shape", None)
    if shape is not None and not isinstance(shape, tuple):  # e.g. torch.Size is a tuple; others may not be
        shape = tuple(shape)
    if shape is None and not is_device_array(a):
        a = as_host_array(a, name)
        shape = a.shape
    return a, None if shape is None else tuple(int(v) for v in shape)


def _reshape(a: Any, shape: tuple[int, ...], name: str) -> Any:
    if is_device_array(a):
        from . import cuda

        da = cuda.asarray(a, name)
        if not da.is_c_contiguous():  # numba cannot view a strided device array with a new axis
            raise ValueError(
                f"{name}: an unbatched (3-D) CUDA array must be C-contiguous, got strides "
                f"{tuple(da.strides)} for shape {tuple(da.shape)}; pass a contiguous copy or a 4-D batch"
            )
        return da.reshape(shape)
    return np.asarray(a).reshape(shape)


def lift(a: Any, name: str, layout: str = "(C, H, W)") -> tuple[Any, bool]:
    """(a as a 4-D batch, True) for a 3-D ``a``; (a unchanged, False) for 4-D;
    ValueError naming ``name`` for any other rank."""
    a, shape = _shape(a, name)
    if shape is None or len(shape) == 4:
        return a, False
    if len(shape) == 3:
        return _reshape(a, (1,) + shape, name), True
    batched = "(N, " + layout[1:]
    raise ValueError(
        f"{name} must be a 3-D {layout} (unbatched) or 4-D {batched} (batched) array, "
        f"got a {len(shape)}-D array of shape {shape}"
    )


def check_like(a: Any, name: str, unbatched: bool, layout: str, like: str = "x") -> Any:
    """``a`` (e.g. grad_output) lifted like the op's input: 3-D when that was
    unbatched, else passed on unchanged (the op checks its 4-D shape)."""
    if not unbatched:
        return a
    a, shape = _shape(a, name)
    if shape is not None and len(shape) != 3:
        raise ValueError(
            f"{name} must be a 3-D array {layout} like the unbatched {like}, "
            f"got a {len(shape)}-D array of shape {shape}"
        )
    return a if shape is None else _reshape(a, (1,) + shape, name)


def lift_shape(shape: Any, name: str = "input_shape") -> tuple[Any, bool]:
    """(a 4-D input shape, True) for a sequence of 3 values; unchanged otherwise."""
    try:
        items = tuple(shape)
    except TypeError:
        return shape, False
    if len(items) == 3:
        return (1,) + items, True
    return shape, False


def drop(a: Any, unbatched: bool) -> Any:
    """Result ``a`` without its batch axis of one (None stays None)."""
    if not unbatched or a is None:
        return a
    return a.reshape(tuple(a.shape[1:]))
