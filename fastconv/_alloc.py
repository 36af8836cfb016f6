"""Output allocation shared by the backends.

Every kernel entry function allocates its outputs through ``empty`` so that the
test suite can poison them (``POISON = True`` fills new outputs with NaN, or
the most negative integer for index arrays): an element a kernel forgets to
write then fails the comparison with the reference instead of passing by luck.
"""

from __future__ import annotations

import threading
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


_scratch = threading.local()


def scratch(name: str, size: int, dtype: Any) -> np.ndarray:
    """A 1-D scratch array of ``size`` elements, 64-byte aligned, that the
    calling thread gets back for the same ``name`` and dtype on later calls
    (grown when too small), so a large workspace is not faulted in page by
    page on every call (blocks above glibc's mmap threshold are returned to
    the system when freed).  Only for buffers that never leave the kernel
    entry that takes them, and one name per buffer live at a time.
    Poisoned like ``empty``."""
    dtype = np.dtype(dtype)
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    key = (name, dtype.str)
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = workspace(size, dtype)
    a = buf[:size]
    if POISON:
        a.fill(poison_value(dtype))
    return a
