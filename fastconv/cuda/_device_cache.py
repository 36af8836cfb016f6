"""A caching allocator for the CUDA backend's outputs and workspaces.

Every array the backend and ``fastconv.nn`` allocate on the device comes from
here (``_arrays.device_array``).  Memory is handed out in *blocks* obtained from
numba (``cuda.device_array``) once and kept: when the last array viewing a
block (the array handed out, or any view or reshape of it) is garbage, the
block goes back to a free list instead of to the driver, and the next request
of the same size on the same device and stream takes it.  A training loop
that allocates the same shapes every step stops allocating after its first
steps.

Rules:

* **Never a live buffer**: a block is free only once nothing references its
  memory (numba's reference count on the device pointer, which views and
  reshapes share; in the simulator, NumPy's base chain).  Until then it is not
  on any free list.
* **Streams**: free lists are per (device, stream, size).  A block freed on
  stream s is reused only by work queued later on s, which the stream orders
  after every earlier use, so no synchronisation is needed.  Work on *another*
  stream that reads a block must be ordered before the block is dropped (the
  same rule as torch's caching allocator without ``record_stream``): fastconv's
  own calls do this, since a call runs on its inputs' stream and its outputs
  carry it.
* **Devices**: a block belongs to the device it was allocated on (the key).

``empty_cache()`` hands the free blocks back to numba (and so to the driver);
``cache_info()`` says what is held.  Sizes are rounded up to 256 bytes.
"""

from __future__ import annotations

import collections
import threading
import weakref
from typing import Any

import numpy as np
from numba import cuda

from . import _streams
from ._config import SIM

ROUND = 256

_free: dict[tuple[int, Any, int], collections.deque[Any]] = {}
_live: dict[int, Any] = {}  # GPU: the managed pointer of each handed-out block, until it is freed
_lock = threading.RLock()  # re-entrant: a finalizer may run (GC) while it is held
_stats = {"hits": 0, "misses": 0}


def _key(nbytes: int) -> tuple[int, Any, int]:
    return _streams.call_device(), _streams.current_stream(), max(ROUND, -(-nbytes // ROUND) * ROUND)


def _take(key: tuple[int, Any, int]) -> Any:
    """A free block of ``key``, or a new one from numba."""
    free = _free.get(key)
    if free:
        try:
            block = free.pop()
            _stats["hits"] += 1
            return block
        except IndexError:  # emptied by another thread since the test
            pass
    _stats["misses"] += 1
    return cuda.device_array(key[2], dtype=np.uint8, stream=key[1])


def _release(key: tuple[int, Any, int], block: Any) -> None:
    """Back on its free list (runs when the last view of the block is gone)."""
    with _lock:
        _free.setdefault(key, collections.deque()).append(block)


def device_array(shape: tuple[int, ...], dtype: Any) -> Any:
    """An uninitialised (shape, dtype) array on the current call's device and stream."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    key = _key(nbytes)
    block = _take(key)
    return (_sim_view if SIM else _gpu_view)(block, key, shape, dtype)


class _SimOwner:
    """Owns a simulator block's memory for one hand-out: arrays made from it (and all
    their NumPy views) keep it alive through their ``base``; when it dies the block
    is released."""

    def __init__(self, block: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
        host = block._ary
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (host.__array_interface__["data"][0], False),
            "strides": None,
            "version": 3,
        }


def _sim_view(block: Any, key: tuple[int, Any, int], shape: tuple[int, ...], dtype: np.dtype) -> Any:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    owner = _SimOwner(block, shape, dtype)
    weakref.finalize(owner, _release, key, block)
    return FakeCUDAArray(np.asarray(owner), stream=key[1])


def _gpu_view(block: Any, key: tuple[int, Any, int], shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """A DeviceNDArray on the block's memory behind a reference-counted pointer whose
    finalizer releases the block (the way numba's own allocations free theirs)."""
    from numba.cuda.cudadrv import devicearray, driver

    ident = id(block)

    def free() -> None:
        _live.pop(ident, None)
        _release(key, block)

    mem = driver.AutoFreePointer(cuda.current_context(), block.gpu_data.device_pointer, key[2], finalizer=free)
    _live[ident] = mem  # numba's allocations are held by the context the same way
    return devicearray.DeviceNDArray(shape, _c_strides(shape, dtype.itemsize), dtype, stream=key[1], gpu_data=mem.own())


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for s in reversed(shape):
        strides.append(step)
        step *= max(int(s), 1)
    return tuple(reversed(strides))


def cache_info() -> dict[str, int]:
    """Free blocks and bytes held, and the hits and misses so far."""
    with _lock:
        blocks = sum(len(d) for d in _free.values())
        nbytes = sum(k[2] * len(d) for k, d in _free.items())
    return {"free_blocks": blocks, "free_bytes": nbytes, **_stats}


def empty_cache() -> None:
    """Hand every free block back to numba (blocks in use stay where they are)."""
    with _lock:
        _free.clear()
