"""Every CUDA kernel with its argument types, and PTX compilation for a given
compute capability without a GPU (for the compile test and
``benchmarks/cuda_static.py``).  Not used at run time."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any


def kernels() -> list[tuple[str, Any, tuple[Any, ...], int]]:
    """(name, kernel, argument types, threads per block) for every kernel in float32 and float64."""
    import numba
    from numba.cuda import types as cuda_types

    T: Any = cuda_types  # attributes are created at import time: opaque to type checkers

    from . import _arrays as A
    from . import _geometry as geo
    from . import _launch_plan as lp
    from . import conv_direct as D
    from . import conv_im2col as I
    from . import pool as P

    i64, cg = T.int64, numba.typeof(geo.ConvGeom(*[0] * len(geo.ConvGeom._fields)))
    tile = numba.typeof(lp.DirectTile(*[0] * len(lp.DirectTile._fields)))
    pg = numba.typeof(geo.PoolGeom(*[0] * len(geo.PoolGeom._fields)))
    ia = T.Array(T.int64, 1, "C")
    ew = A.ELEMWISE_TPB
    out = []
    for dt in (T.float32, T.float64):
        a = T.Array(dt, 1, "C")
        s = str(dt)
        out += [
            (f"conv_igemm_kernel[{s}]", I.conv_igemm_kernel, (a, a, a, a, cg, i64, i64), I.NT),
            (f"conv_direct_kernel[{s}]", D.conv_direct_kernel, (a, a, a, a, cg, tile), D.NT),
            (f"conv_thin_kernel[{s}]", D.conv_thin_kernel, (a, a, a, a, cg), ew),
            (f"conv_wgrad_kernel[{s}]", I.conv_wgrad_kernel, (a, a, a, cg, i64), I.WNT),
            (f"sum_splits_kernel[{s}]", I.sum_splits_kernel, (a, a, i64), ew),
            (f"max_pool2d_forward_kernel[{s}]", P.max_pool2d_forward_kernel, (a, a, ia, pg), ew),
            (
                f"max_pool2d_backward_kernel[{s}]",
                P.max_pool2d_backward_kernel,
                (a, a, ia, a, i64, i64, i64, T.boolean),
                P.BWD_THREADS,
            ),
            (f"_fill[{s}]", A._fill, (a, dt), ew),
            (f"_copy_1d[{s}]", A._copy_1d, (T.Array(T.float16, 1, "A"), a), ew),
            (f"_copy_4d[{s}]", A._copy_4d, (T.Array(T.int64, 4, "A"), a), ew),
        ]
    out.append(("_index_minmax", A._index_minmax, (ia, ia), ew))
    return out


@contextlib.contextmanager
def _target_cc(cc: tuple[int, int]) -> Iterator[None]:
    """numba-cuda asks the current device for its compute capability when it compiles a
    device function called from a kernel; without a GPU there is none: answer ``cc``."""
    import numba.cuda.dispatcher as dispatcher

    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = real


def compile_ptx(kernel: Any, argtypes: tuple[Any, ...], cc: tuple[int, int] = (9, 0)) -> str:
    """PTX of one kernel for ``cc`` (needs libNVVM, not a GPU)."""
    from numba import cuda

    with _target_cc(cc):
        ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=cc)
    return ptx
