"""CPU backend: Numba ``njit(parallel=True, cache=True)`` kernels.

This package's namespace is the backend interface that ``fastconv.ops`` calls
through ``_dispatch.backend``.  Arguments arriving here are validated, of the
compute dtype and C-contiguous; a convolution runs the ``fastconv._plan.ConvPlan``
it is given (the plan chose algorithm, layout and tilings), pooling takes its
parameter object from ``fastconv._params``.  Entry functions allocate outputs
with ``fastconv._alloc.empty`` (poisoned in tests).  Kernel modules are
imported on first use so ``import fastconv`` stays cheap.

Layout: ``layout`` (buffer geometry and tiling descriptors, pure Python),
``engine`` (the register-tile micro-kernels), one module per algorithm and
layout (``conv_direct``, ``conv_direct_bi``, ``conv_im2col``), ``pool``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _cache
from .._params import Pool2dParams, as_host_array
from .layout import same_buffer
from .registry import algorithm_module

if TYPE_CHECKING:
    from .._plan import ConvPlan

_cache.install()  # before any kernel module: it picks where their Numba cache lives


def on_inputs(**arrays: Any) -> contextlib.AbstractContextManager[None]:
    """Context of one public op made of several backend calls: host arrays have no
    device or stream to choose (the CUDA backend's has)."""
    return contextlib.nullcontext()


def asarray(a: Any, name: str) -> np.ndarray:
    """The argument as a host array with a real dtype (no copy if already one)."""
    return as_host_array(a, name)


def ascompute(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous array of ``dtype``; copies only when layout or dtype differ."""
    return np.ascontiguousarray(a, dtype=dtype)


def zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def index_range(indices: np.ndarray) -> tuple[int, int]:
    """(min, max) of non-empty max_pool2d indices, one parallel pass (fastconv.cpu.pool)."""
    from .pool import index_range as rng

    return rng(indices)


def conv2d_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, plan: ConvPlan
) -> tuple[np.ndarray, Any]:
    """(y, the prepared x if the plan's backward can reuse it, else None)."""
    y, prepared = algorithm_module(plan.algorithm, plan.layout).forward(x, weight, bias, plan)
    return y, prepared if plan.cpu_part().reuse_prepared_input else None


def conv2d_backward(
    gy: np.ndarray, x: np.ndarray, weight: np.ndarray, plan: ConvPlan, kept: Any = None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gx, gw, gb); gx is None (never computed) when the plan needs no input
    gradient.  ``kept``: the forward's prepared x (``conv2d_forward``) of this
    very x, used when it is the buffer this plan's backward would build."""
    c = plan.cpu_part()
    if kept is not None and not (c.reuse_prepared_input and same_buffer(kept.layout, c.backward_layout)):
        kept = None
    return algorithm_module(plan.backward_algorithm, plan.backward_layout).backward(gy, x, weight, plan, kept)


def max_pool2d_forward(x: np.ndarray, p: Pool2dParams, return_indices: bool) -> Any:
    from .pool import max_pool2d_forward as fwd

    return fwd(x, p, return_indices)


def max_pool2d_backward(gy: np.ndarray, indices: np.ndarray, p: Pool2dParams) -> np.ndarray:
    from .pool import max_pool2d_backward as bwd

    return bwd(gy, indices, p)


def avg_pool2d_forward(x: np.ndarray, p: Any) -> np.ndarray:
    from .avg_pool import avg_pool2d_forward as fwd

    return fwd(x, p)


def avg_pool2d_backward(gy: np.ndarray, p: Any) -> np.ndarray:
    from .avg_pool import avg_pool2d_backward as bwd

    return bwd(gy, p)


# --------------------------------------------------------------------------- conv_transpose2d helpers


def conv2d_input_grad(gy: np.ndarray, weight: np.ndarray, plan: ConvPlan) -> np.ndarray:
    """conv2d's grad_x alone (the transposed convolution), run by ``plan``'s direct backward."""
    from .conv_transpose import grad_input

    return grad_input(gy, weight, plan)


def add_bias(y: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """y (N, K, H, W) += bias (K,) in place; returns y."""
    y += bias.reshape(1, -1, 1, 1)
    return y


def channel_sums(gy: np.ndarray) -> np.ndarray:
    """(K,) sums of gy (N, K, H, W) over N, H, W (float64 accumulation)."""
    from .. import _alloc
    from .common import bias_grad

    return bias_grad(gy, _alloc.empty((gy.shape[1],), gy.dtype))


def pad_end(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """x (N, C, H, W) with ``rows`` zero rows and ``cols`` zero columns appended."""
    return np.pad(x, ((0, 0), (0, 0), (0, rows), (0, cols)))


def crop(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """C-contiguous a[:, :, :h, :w]."""
    return np.ascontiguousarray(a[:, :, :h, :w])


# --------------------------------------------------------------------------- padding modes, unpooling


def pad_input(x: np.ndarray, pads: tuple[int, int, int, int], mode: str) -> np.ndarray:
    """x (N, C, H, W) padded by (top, left, bottom, right) in ``mode`` (fastconv.cpu.pad)."""
    from .pad import pad as _pad

    return _pad(x, pads, mode)


def fold_input(gp: np.ndarray, pads: tuple[int, int, int, int], mode: str) -> np.ndarray:
    """The gradient of ``pad``: padded cells' gradients added to their source cells."""
    from .pad import fold as _fold

    return _fold(gp, pads, mode)


def max_unpool2d_forward(x: np.ndarray, indices: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    from .unpool import max_unpool2d_forward as fwd

    return fwd(x, indices, out_hw)


def max_unpool2d_backward(gy: np.ndarray, indices: np.ndarray) -> np.ndarray:
    from .unpool import max_unpool2d_backward as bwd

    return bwd(gy, indices)
