"""CuPy: the NumPy im2col baseline run on CuPy arrays (cuBLAS GEMMs)."""

from __future__ import annotations

from typing import Any

import numpy as np


def available() -> str | None:
    try:
        import cupy
    except ImportError:
        return "cupy not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA GPU visible to cupy"
    except Exception as exc:  # no driver
        return f"no CUDA GPU visible to cupy ({exc})"
    return None


def to_native(a: np.ndarray) -> Any:
    import cupy

    return cupy.asarray(a)


def to_host(a: Any) -> np.ndarray:
    import cupy

    return cupy.asnumpy(a)


def sync() -> None:
    import cupy

    cupy.cuda.Device().synchronize()
