"""Device-array plumbing of the CUDA backend: interop, allocation, casts, launch sizes.

Everything here works on numba device arrays (or the simulator's stand-ins).
Elementwise kernels use a grid-stride loop with int64 flat indices, so any
array size is handled by a bounded grid.  Under numba-cuda's simulator every
CUDA thread is a Python thread and every block costs a thread start-up, so the
launch helpers shrink grids there (the kernels are written for any grid size).
Allocations and launches follow the device/stream rule of ``_streams``; allocations
go through the caching allocator of ``_device_cache``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda
from numba.cuda.cudadrv.devicearray import is_cuda_ndarray

from .. import _alloc
from .._params import _check_dtype
from . import _device_cache, _streams
from ._config import MAX_GRID_YZ, SIM, cdiv  # noqa: F401  (re-exported for the kernel modules)
from ._geometry import split3
from ._launch_plan import ELEMWISE_MAX_BLOCKS, ELEMWISE_TPB, elemwise_blocks  # noqa: F401
from ._streams import launch


def elemwise_grid(size: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over ``size`` elements."""
    return elemwise_blocks(size), ELEMWISE_TPB


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
def _copy_4d(src, dst):
    """dst (flat, C order) = src (4-D, any strides, any real dtype), converting dtype."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    d1, d2, d3 = src.shape[1], src.shape[2], src.shape[3]
    while i < dst.size:
        nc, i2, i3 = split3(i, d2, d3)
        i0 = nc // d1
        dst[i] = src[i0, nc - i0 * d1, i2, i3]
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
    """Uninitialised array on the current call's device, carrying its stream, from
    the caching allocator (``_device_cache``: a block no array references any more
    is reused, on the same device and stream)."""
    arr = _device_cache.device_array(shape, dtype)
    return _streams.tag(arr, _streams.call_device(), _streams.current_stream())


def fill(a, value) -> None:
    """Fill a C-contiguous device array in place."""
    if a.size:
        flat_a = flat(a)
        blocks, tpb = elemwise_grid(a.size)
        launch(_fill, blocks, tpb, flat_a, flat_a.dtype.type(value))


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


def reshape(a, shape: tuple[int, ...]):
    """View of a C-contiguous device array in ``shape``, carrying a's stream (numba's
    ``reshape`` drops it): an output's ``.stream`` is the stream it was written on."""
    return _streams.tag(a.reshape(shape), _streams.device_of(a), a.stream)


def _wrap_interface(a: Any):
    """Zero-copy numba view of an object exposing ``__cuda_array_interface__``, tagged with
    its device and stream (``_streams``); no host synchronisation on the producer's stream."""
    device, stream = _streams.source_device_and_stream(a)
    if SIM:  # the simulator has no from_cuda_array_interface: its device memory is host memory
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        arr = FakeCUDAArray(np.asarray(_HostView(a.__cuda_array_interface__)))
    else:
        with cuda.gpus[device]:
            arr = cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=a, sync=False)
    return _streams.tag(arr, device, stream)


class _HostView:
    """``__array_interface__`` twin of a CUDA array interface (simulator only)."""

    def __init__(self, desc: dict[str, Any]) -> None:
        host: dict[str, Any] = {k: desc[k] for k in ("shape", "typestr", "data", "strides") if k in desc}
        host["version"] = 3
        self.__array_interface__ = host


def asarray(a: Any, name: str):
    """A numba device array viewing ``a`` (zero-copy) with a real dtype.

    numba device arrays (and the simulator's) pass through; anything else with
    ``__cuda_array_interface__`` (CuPy, torch CUDA tensors) is wrapped without
    copying, remembering its device and stream (see ``_streams``).
    """
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    if is_cuda_ndarray(a):
        arr = a
    elif hasattr(a, "__cuda_array_interface__"):
        try:
            arr = _wrap_interface(a)
        except Exception as exc:  # e.g. torch bfloat16: no typestr numba understands
            raise TypeError(
                f"{name} must be a CUDA array numba can view (__cuda_array_interface__), got {type(a).__name__}: {exc}"
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
    else a device-side cast/copy on a's device and stream (never a host round trip)."""
    dtype = np.dtype(dtype)
    if np.dtype(a.dtype) == dtype and a.is_c_contiguous():
        return a
    with _streams.on_inputs(a=a):
        out = device_array(a.shape, dtype)
        if a.size == 0:
            return out
        blocks, tpb = elemwise_grid(a.size)
        if a.ndim == 1:
            launch(_copy_1d, blocks, tpb, a, out)
        elif a.ndim == 4:
            launch(_copy_4d, blocks, tpb, a, flat(out))
        else:  # arrays reaching a backend are validated to be 1-D (bias) or 4-D
            raise ValueError(f"expected a 1-D or 4-D array, got shape {a.shape}")
    return out


def index_range(indices) -> tuple[int, int]:
    """(min, max) of an int64 device array, reduced on the device; only the two
    results are copied to the host (a synchronisation: see docs/cuda.md)."""
    with _streams.on_inputs(indices=indices) as stream:
        out = cuda.to_device(np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min], dtype=np.int64), stream=stream)
        if indices.size:
            src = indices if indices.is_c_contiguous() else ascompute(indices, np.int64)
            blocks, tpb = elemwise_grid(indices.size)
            launch(_index_minmax, blocks, tpb, flat(src), out)
        lo, hi = out.copy_to_host(stream=stream)
        if stream != 0:
            stream.synchronize()
    return int(lo), int(hi)
