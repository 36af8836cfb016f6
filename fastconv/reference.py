"""Float64 NumPy reference of every op: the oracle for tests and benchmarks.

Plain and obviously correct rather than fast: convolution is a sum over the
kernel taps (i, j) of an einsum over one strided slice of the padded input;
max pooling scans each window in row-major order exactly as PyTorch's CPU
kernel does.  Semantics are PyTorch's (NCHW, cross-correlation).  Every
function validates through ``fastconv._params`` and returns float64 arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._params import (
    AvgPool2dParams,
    Conv2dParams,
    Pool2dParams,
    as_host_array,
    check_grad_output,
    check_pool_index_range,
    check_pool_indices,
    conv2d_params,
    pool2d_params,
    avg_pool2d_params,
    pool_input_shape,
)
from ._unbatched import check_like, drop, lift, lift_shape

__all__ = ["avg_pool2d", "avg_pool2d_backward", "conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward"]


def _tap(xp: np.ndarray, p: Conv2dParams, i: int, j: int) -> tuple[slice, slice]:
    """Slices of the padded input that kernel tap (i, j) reads: (OH, OW) strided."""
    r0, c0 = i * p.dh, j * p.dw
    return (slice(r0, r0 + p.sh * (p.oh - 1) + 1, p.sh), slice(c0, c0 + p.sw * (p.ow - 1) + 1, p.sw))


def _pad(x: np.ndarray, p: Conv2dParams) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (p.ph, p.ph_end), (p.pw, p.pw_end)))


def conv2d(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: Any = 1) -> np.ndarray:
    """y (N, K, OH, OW) = cross-correlation of x (N, C, H, W) with weight (K, C/groups, R, S)."""
    x = as_host_array(x, "x").astype(np.float64)
    weight = as_host_array(weight, "weight").astype(np.float64)
    b = None if bias is None else as_host_array(bias, "bias").astype(np.float64)
    p = conv2d_params(x.shape, weight.shape, None if b is None else b.shape, stride, padding, dilation, groups)
    xp = _pad(x, p)
    y = np.zeros(p.y_shape)
    for g in range(p.groups):
        xs, ks = slice(g * p.cg, (g + 1) * p.cg), slice(g * p.kg, (g + 1) * p.kg)
        for i in range(p.kh):
            for j in range(p.kw):
                rs, cs = _tap(xp, p, i, j)
                y[:, ks] += np.einsum("nchw,kc->nkhw", xp[:, xs, rs, cs], weight[ks, :, i, j])
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv2d_backward(grad_output: Any, x: Any, weight: Any, stride: Any = 1, padding: Any = 0,
                    dilation: Any = 1, groups: Any = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grad_x, grad_weight, grad_bias) of conv2d for grad_output (N, K, OH, OW)."""
    x = as_host_array(x, "x").astype(np.float64)
    weight = as_host_array(weight, "weight").astype(np.float64)
    gy = as_host_array(grad_output, "grad_output").astype(np.float64)
    p = conv2d_params(x.shape, weight.shape, None, stride, padding, dilation, groups)
    check_grad_output(gy.shape, p.y_shape)
    xp = _pad(x, p)
    gxp = np.zeros_like(xp)
    gw = np.zeros(p.weight_shape)
    for g in range(p.groups):
        xs, ks = slice(g * p.cg, (g + 1) * p.cg), slice(g * p.kg, (g + 1) * p.kg)
        for i in range(p.kh):
            for j in range(p.kw):
                rs, cs = _tap(xp, p, i, j)
                gw[ks, :, i, j] = np.einsum("nkhw,nchw->kc", gy[:, ks], xp[:, xs, rs, cs])
                gxp[:, xs, rs, cs] += np.einsum("nkhw,kc->nchw", gy[:, ks], weight[ks, :, i, j])
    gx = gxp[:, :, p.ph:p.ph + p.h, p.pw:p.pw + p.w].copy()
    return gx, gw, gy.sum(axis=(0, 2, 3))


def _pool_windows(p: Pool2dParams, oi: int, oj: int) -> tuple[list[int], list[int]]:
    """In-bounds rows and columns of window (oi, oj), in scan order."""
    rows = [oi * p.sh - p.ph + a * p.dh for a in range(p.kh)]
    cols = [oj * p.sw - p.pw + b * p.dw for b in range(p.kw)]
    return [r for r in rows if 0 <= r < p.h], [c for c in cols if 0 <= c < p.w]


def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, return_indices: bool = False):
    """y (N, C, OH, OW), and int64 indices into each H*W plane if ``return_indices``.

    Scan order is row-major within the window; a value replaces the running
    maximum if it is strictly greater or NaN (PyTorch's CPU rule: the first
    maximum wins a tie, the last NaN wins).  Padding is implicit -inf.
    """
    x = as_host_array(x, "x").astype(np.float64)
    p = pool2d_params(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    y = np.empty(p.y_shape)
    idx = np.empty(p.y_shape, dtype=np.int64)
    planes = x.reshape(p.n * p.c, p.h * p.w)
    yv, iv = y.reshape(p.n * p.c, -1), idx.reshape(p.n * p.c, -1)
    for oi in range(p.oh):
        for oj in range(p.ow):
            rows, cols = _pool_windows(p, oi, oj)
            flat = np.array([r * p.w + c for r in rows for c in cols], dtype=np.int64)
            vals = planes[:, flat]  # (NC, taps) in scan order
            best = np.full(p.n * p.c, -np.inf)
            # torch starts from the window's first in-bounds element (an all -inf window points there)
            where = np.full(p.n * p.c, flat[0] if flat.size else 0)
            for t in range(flat.size):
                v = vals[:, t]
                upd = (v > best) | np.isnan(v)
                best = np.where(upd, v, best)
                where = np.where(upd, flat[t], where)
            yv[:, oi * p.ow + oj] = best
            iv[:, oi * p.ow + oj] = where
    return (y, idx) if return_indices else y


def max_pool2d_backward(grad_output: Any, indices: Any, input_shape: Any) -> np.ndarray:
    """grad_x (input_shape): grad_output scattered to the argmax positions, summed where windows overlap."""
    gy = as_host_array(grad_output, "grad_output").astype(np.float64)
    indices = np.asarray(indices)
    shape = pool_input_shape(input_shape)
    check_pool_indices(indices.dtype, indices.shape, gy.shape, shape)
    if indices.size:
        check_pool_index_range(int(indices.min()), int(indices.max()), shape)
    n, c, h, w = shape
    gx = np.zeros((n * c, h * w))
    rows = np.repeat(np.arange(n * c), gy.shape[2] * gy.shape[3])
    np.add.at(gx, (rows, indices.reshape(-1)), gy.reshape(-1))
    return gx.reshape(shape)


# --------------------------------------------------------------------------- avg_pool2d


def _avg_windows(p: AvgPool2dParams, oi: int, oj: int) -> tuple[slice, slice, float]:
    """In-bounds rows and columns of window (oi, oj) and its divisor (PyTorch's rule)."""
    hs, ws = oi * p.sh - p.ph, oj * p.sw - p.pw
    he, we = min(hs + p.kh, p.h + p.ph), min(ws + p.kw, p.w + p.pw)
    pool_size = (he - hs) * (we - ws)
    hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, p.h), min(we, p.w)
    if p.divisor:
        div = p.divisor
    else:
        div = pool_size if p.count_include_pad else (he - hs) * (we - ws)
    return slice(hs, he), slice(ws, we), float(div)


def avg_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Any = None) -> np.ndarray:
    """y (N, C, OH, OW): each window's sum over its in-bounds taps / its divisor."""
    x = as_host_array(x, "x").astype(np.float64)
    x, unbatched = lift(x, "x")
    p = avg_pool2d_params(x.shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    y = np.empty(p.y_shape)
    for oi in range(p.oh):
        for oj in range(p.ow):
            rs, cs, div = _avg_windows(p, oi, oj)
            y[:, :, oi, oj] = x[:, :, rs, cs].sum(axis=(2, 3)) / div
    return drop(y, unbatched)


def avg_pool2d_backward(grad_output: Any, input_shape: Any, kernel_size: Any, stride: Any = None,
                        padding: Any = 0, ceil_mode: bool = False, count_include_pad: bool = True,
                        divisor_override: Any = None) -> np.ndarray:
    """grad_x (input_shape): each output's gradient / divisor added to its window's in-bounds taps."""
    gy = as_host_array(grad_output, "grad_output").astype(np.float64)
    shape, unbatched = lift_shape(input_shape)
    gy = check_like(gy, "grad_output", unbatched, "(C, OH, OW)", "input_shape")
    p = avg_pool2d_params(pool_input_shape(shape), kernel_size, stride, padding, ceil_mode, count_include_pad,
                          divisor_override)
    check_grad_output(gy.shape, p.y_shape)
    gx = np.zeros(p.x_shape)
    for oi in range(p.oh):
        for oj in range(p.ow):
            rs, cs, div = _avg_windows(p, oi, oj)
            gx[:, :, rs, cs] += (gy[:, :, oi, oj] / div)[:, :, None, None]
    return drop(gx, unbatched)
