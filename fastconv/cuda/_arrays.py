"""Device-array plumbing of the CUDA backend: interop, allocation, casts, launch sizes.

Everything here works on numba device arrays (or the simulator's stand-ins).
Elementwise kernels use a grid-stride loop with int64 flat indices, so any
array size is handled by a bounded grid.  Under numba-cuda's simulator every
CUDA thread is a Python thread and every block costs a thread start-up, so the
launch helpers shrink grids there (the kernels are written for any grid size).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda
from numba.cuda.cudadrv.devicearray import is_cuda_ndarray

from .. import _alloc
from .._params import _check_dtype

try:  # numba-cuda keeps its own config module; old numba.cuda used numba.config
    from numba.cuda.core import config as _config
except ImportError:  # pragma: no cover - older numba-cuda
    from numba.core import config as _config

SIM = bool(_config.ENABLE_CUDASIM)

# Elementwise launches: 256 threads, at most 4 resident-ish blocks per SM worth
# of grid (grid-stride loops cover the rest).  Simulator: one small block.
ELEMWISE_TPB = 8 if SIM else 256
ELEMWISE_MAX_BLOCKS = 2 if SIM else 132 * 16

# Blocks one grid dimension may have (CUDA limit for y and z).
MAX_GRID_YZ = 65535


def elemwise_grid(size: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over ``size`` elements."""
    blocks = max(1, min(ELEMWISE_MAX_BLOCKS, math.ceil(size / ELEMWISE_TPB)))
    return blocks, ELEMWISE_TPB


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------- kernels


@cuda.jit(cache=True)
def _fill(a, value):
    """a[:] = value for a flat contiguous array."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < a.size:
        a[i] = value
        i += step


@cuda.jit(cache=True)
def _copy_1d(src, dst):
    """dst[i] = src[i] (any strides, any real dtype -> dst's dtype)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < dst.size:
        dst[i] = src[i]
        i += step


@cuda.jit(cache=True)
def _copy_4d(src, dst, d1, d2, d3):
    """dst (flat, C order) = src (4-D, any strides, any real dtype), converting dtype."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < dst.size:
        j = i
        i3 = j % d3
        j //= d3
        i2 = j % d2
        j //= d2
        i1 = j % d1
        i0 = j // d1
        dst[i] = src[i0, i1, i2, i3]
        i += step


@cuda.jit(cache=True)
def _index_minmax(idx, out):
    """out[0] = min(idx), out[1] = max(idx) for flat int64 idx (out preset to +/- extremes).

    Per-block tree reduction in shared memory, then one integer atomic per block:
    integer min/max are order-independent, so the result is exact and deterministic.
    """
    lo = cuda.shared.array(ELEMWISE_TPB, dtype=np.int64)
    hi = cuda.shared.array(ELEMWISE_TPB, dtype=np.int64)
    t = cuda.threadIdx.x
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    a = out[0]
    b = out[1]
    while i < idx.size:
        v = idx[i]
        a = min(a, v)
        b = max(b, v)
        i += step
    lo[t] = a
    hi[t] = b
    cuda.syncthreads()
    half = ELEMWISE_TPB // 2
    while half > 0:
        if t < half:
            lo[t] = min(lo[t], lo[t + half])
            hi[t] = max(hi[t], hi[t + half])
        cuda.syncthreads()
        half //= 2
    if t == 0:
        cuda.atomic.min(out, 0, lo[0])
        cuda.atomic.max(out, 1, hi[0])


# --------------------------------------------------------------------------- host side


def device_array(shape: tuple[int, ...], dtype: Any):
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


def fill(a, value) -> None:
    """Fill a C-contiguous device array in place."""
    if a.size:
        flat_a = flat(a)
        blocks, tpb = elemwise_grid(a.size)
        _fill[blocks, tpb](flat_a, flat_a.dtype.type(value))


def empty(shape: tuple[int, ...], dtype: Any):
    """Device twin of ``fastconv._alloc.empty``: NaN / INT64_MIN-filled while
    ``fastconv._alloc.POISON`` is set, so an element a kernel forgets to write
    fails the comparison with the reference."""
    a = device_array(shape, dtype)
    if _alloc.POISON:
        fill(a, _alloc.poison_value(dtype))
    return a


def zeros(shape: tuple[int, ...], dtype: Any):
    a = device_array(shape, dtype)
    fill(a, 0)
    return a


def flat(a):
    """1-D view of a C-contiguous device array (no copy)."""
    return a.reshape(a.size)


def asarray(a: Any, name: str):
    """A numba device array viewing ``a`` (zero-copy) with a real dtype.

    numba device arrays (and the simulator's) pass through; anything else with
    ``__cuda_array_interface__`` (CuPy, torch CUDA tensors) is wrapped by
    ``numba.cuda.as_cuda_array`` without copying.
    """
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    if is_cuda_ndarray(a):
        arr = a
    elif hasattr(a, "__cuda_array_interface__"):
        try:
            arr = cuda.as_cuda_array(a)
        except Exception as exc:  # e.g. torch bfloat16: no typestr numba understands
            raise TypeError(
                f"{name} must be a CUDA array numba can view (__cuda_array_interface__), "
                f"got {type(a).__name__}: {exc}"
            ) from None
    else:
        raise TypeError(
            f"{name} must be a CUDA device array (numba device array, CuPy array or torch CUDA "
            f"tensor), got {type(a).__name__}"
        )
    _check_dtype(np.dtype(arr.dtype), name)
    return arr


def ascompute(a, dtype: Any):
    """C-contiguous device array of ``dtype``: ``a`` itself when it already is one,
    else a device-side cast/copy (never a host round trip)."""
    dtype = np.dtype(dtype)
    if np.dtype(a.dtype) == dtype and a.is_c_contiguous():
        return a
    out = device_array(a.shape, dtype)
    if a.size == 0:
        return out
    blocks, tpb = elemwise_grid(a.size)
    if a.ndim == 1:
        _copy_1d[blocks, tpb](a, out)
    elif a.ndim == 4:
        _copy_4d[blocks, tpb](a, flat(out), a.shape[1], a.shape[2], a.shape[3])
    else:  # arrays reaching a backend are validated to be 1-D (bias) or 4-D
        raise ValueError(f"expected a 1-D or 4-D array, got shape {a.shape}")
    return out


def index_range(indices) -> tuple[int, int]:
    """(min, max) of an int64 device array, reduced on the device; only the two
    results are copied to the host (the range check in ``_params`` runs there)."""
    out = cuda.to_device(np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min], dtype=np.int64))
    if indices.size:
        src = indices if indices.is_c_contiguous() else ascompute(indices, np.int64)
        blocks, tpb = elemwise_grid(indices.size)
        _index_minmax[blocks, tpb](flat(src), out)
    lo, hi = out.copy_to_host()
    return int(lo), int(hi)
