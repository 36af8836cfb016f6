"""Output allocation shared by the backends.

Every kernel entry function allocates its outputs through ``empty`` so that the
test suite can poison them (``POISON = True`` fills new outputs with NaN, or
the most negative integer for index arrays): an element a kernel forgets to
write then fails the comparison with the reference instead of passing by luck.
"""

from __future__ import annotations

from typing import Any

import numpy as np

POISON = False


def poison_value(dtype: Any) -> Any:
    dtype = np.dtype(dtype)
    return np.nan if dtype.kind == "f" else np.iinfo(dtype).min


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``np.empty``, or a NaN/sentinel-filled array while ``POISON`` is set."""
    a = np.empty(shape, dtype=dtype)
    if POISON:
        a.fill(poison_value(dtype))
    return a


def workspace(size: int, dtype: Any, align: int = 64) -> np.ndarray:
    """A 1-D scratch array of ``size`` elements starting on an ``align``-byte
    boundary (NumPy guarantees only 16), so vector loads at multiples of the
    vector width from its start are aligned.  Poisoned like ``empty``."""
    dtype = np.dtype(dtype)
    raw = np.empty(size * dtype.itemsize + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    a = raw[off : off + size * dtype.itemsize].view(dtype)
    if POISON:
        a.fill(poison_value(dtype))
    return a
