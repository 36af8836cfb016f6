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
    avg_pool2d_params,
    check_grad_output,
    check_padding_mode,
    check_pool_index_range,
    check_pool_indices,
    check_unpool_index_range,
    conv2d_params,
    conv_transpose2d_params,
    explicit_pads,
    max_unpool2d_params,
    pool2d_params,
    pool_input_shape,
)
from ._unbatched import check_like, drop, lift, lift_shape

__all__ = [
    "avg_pool2d",
    "avg_pool2d_backward",
    "conv2d",
    "conv2d_backward",
    "conv2d_padded",
    "conv2d_padded_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_unpool2d",
    "max_unpool2d_backward",
    "pad",
]


def _tap(xp: np.ndarray, p: Conv2dParams, i: int, j: int) -> tuple[slice, slice]:
    """Slices of the padded input that kernel tap (i, j) reads: (OH, OW) strided."""
    r0, c0 = i * p.dh, j * p.dw
    return (slice(r0, r0 + p.sh * (p.oh - 1) + 1, p.sh), slice(c0, c0 + p.sw * (p.ow - 1) + 1, p.sw))


def _pad(x: np.ndarray, p: Conv2dParams) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (p.ph, p.ph_end), (p.pw, p.pw_end)))


def conv2d(
    x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: Any = 1
) -> np.ndarray:
    """y (N, K, OH, OW) = cross-correlation of x (N, C, H, W) with weight (K, C/groups, R, S)."""
    x, unbatched = lift(as_host_array(x, "x").astype(np.float64), "x")
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
    return drop(y, unbatched)


def conv2d_backward(
    grad_output: Any, x: Any, weight: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: Any = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grad_x, grad_weight, grad_bias) of conv2d for grad_output (N, K, OH, OW)."""
    x, unbatched = lift(as_host_array(x, "x").astype(np.float64), "x")
    weight = as_host_array(weight, "weight").astype(np.float64)
    gy = as_host_array(grad_output, "grad_output").astype(np.float64)
    gy = check_like(gy, "grad_output", unbatched, "(K, OH, OW)")
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
    gx = gxp[:, :, p.ph : p.ph + p.h, p.pw : p.pw + p.w].copy()
    return drop(gx, unbatched), gw, gy.sum(axis=(0, 2, 3))


def _pool_windows(p: Pool2dParams, oi: int, oj: int) -> tuple[list[int], list[int]]:
    """In-bounds rows and columns of window (oi, oj), in scan order."""
    rows = [oi * p.sh - p.ph + a * p.dh for a in range(p.kh)]
    cols = [oj * p.sw - p.pw + b * p.dw for b in range(p.kw)]
    return [r for r in rows if 0 <= r < p.h], [c for c in cols if 0 <= c < p.w]


def max_pool2d(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """y (N, C, OH, OW), and int64 indices into each H*W plane if ``return_indices``.

    Scan order is row-major within the window; a value replaces the running
    maximum if it is strictly greater or NaN (PyTorch's CPU rule: the first
    maximum wins a tie, the last NaN wins).  Padding is implicit -inf.
    """
    x, unbatched = lift(as_host_array(x, "x").astype(np.float64), "x")
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
    y, idx = drop(y, unbatched), drop(idx, unbatched)
    return (y, idx) if return_indices else y


def max_pool2d_backward(grad_output: Any, indices: Any, input_shape: Any) -> np.ndarray:
    """grad_x (input_shape): grad_output scattered to the argmax positions, summed where windows overlap."""
    gy = as_host_array(grad_output, "grad_output").astype(np.float64)
    indices = np.asarray(indices)
    input_shape, unbatched = lift_shape(input_shape)
    gy = check_like(gy, "grad_output", unbatched, "(C, OH, OW)", "input_shape")
    indices = check_like(indices, "indices", unbatched, "(C, OH, OW)", "input_shape")
    shape = pool_input_shape(input_shape)
    check_pool_indices(indices.dtype, indices.shape, gy.shape, shape)
    if indices.size:
        check_pool_index_range(int(indices.min()), int(indices.max()), shape)
    n, c, h, w = shape
    gx = np.zeros((n * c, h * w))
    rows = np.repeat(np.arange(n * c), gy.shape[2] * gy.shape[3])
    np.add.at(gx, (rows, indices.reshape(-1)), gy.reshape(-1))
    return drop(gx.reshape(shape), unbatched)


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


def avg_pool2d(
    x: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Any = None,
) -> np.ndarray:
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


def avg_pool2d_backward(
    grad_output: Any,
    input_shape: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Any = None,
) -> np.ndarray:
    """grad_x (input_shape): each output's gradient / divisor added to its window's in-bounds taps."""
    gy = as_host_array(grad_output, "grad_output").astype(np.float64)
    shape, unbatched = lift_shape(input_shape)
    gy = check_like(gy, "grad_output", unbatched, "(C, OH, OW)", "input_shape")
    p = avg_pool2d_params(
        pool_input_shape(shape), kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    check_grad_output(gy.shape, p.y_shape)
    gx = np.zeros(p.x_shape)
    for oi in range(p.oh):
        for oj in range(p.ow):
            rs, cs, div = _avg_windows(p, oi, oj)
            gx[:, :, rs, cs] += (gy[:, :, oi, oj] / div)[:, :, None, None]
    return drop(gx, unbatched)


# --------------------------------------------------------------------------- conv_transpose2d


def conv_transpose2d(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: Any = 1,
    dilation: Any = 1,
) -> np.ndarray:
    """y (N, C_out, H_out, W_out): every input pixel scatters its weighted kernel
    (weight (C_in, C_out/groups, R, S)) to the output, then the padding is cut off."""
    x = as_host_array(x, "x").astype(np.float64)
    x, unbatched = lift(x, "x")
    weight = as_host_array(weight, "weight").astype(np.float64)
    b = None if bias is None else as_host_array(bias, "bias").astype(np.float64)
    t = conv_transpose2d_params(
        x.shape, weight.shape, None if b is None else b.shape, stride, padding, output_padding, groups, dilation
    )
    p = t.conv
    # the full (uncropped) output: rows -ph .. of the padded conv input
    yp = np.zeros((t.n, t.c_out, p.h + 2 * p.ph + p.sh, p.w + 2 * p.pw + p.sw))
    cin_g = t.c_in // p.groups
    for g in range(p.groups):
        xs, ys = slice(g * cin_g, (g + 1) * cin_g), slice(g * p.cg, (g + 1) * p.cg)
        for i in range(p.kh):
            for j in range(p.kw):
                r0, c0 = i * p.dh, j * p.dw
                rs = slice(r0, r0 + p.sh * (t.h - 1) + 1, p.sh)
                cs = slice(c0, c0 + p.sw * (t.w - 1) + 1, p.sw)
                yp[:, ys, rs, cs] += np.einsum("nkhw,kc->nchw", x[:, xs], weight[xs, :, i, j])
    y = yp[:, :, p.ph : p.ph + p.h, p.pw : p.pw + p.w].copy()
    if b is not None:
        y += b[None, :, None, None]
    return drop(y, unbatched)


def conv_transpose2d_backward(
    grad_output: Any,
    x: Any,
    weight: Any,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: Any = 1,
    dilation: Any = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grad_x, grad_weight, grad_bias) of conv_transpose2d: grad_x is conv2d of
    grad_output (cut to x's size), grad_weight conv2d's grad_weight with the roles
    of x and grad_output swapped."""
    x = as_host_array(x, "x").astype(np.float64)
    x, unbatched = lift(x, "x")
    gy = as_host_array(grad_output, "grad_output").astype(np.float64)
    gy = check_like(gy, "grad_output", unbatched, "(C_out, H_out, W_out)")
    weight = as_host_array(weight, "weight").astype(np.float64)
    t = conv_transpose2d_params(x.shape, weight.shape, None, stride, padding, output_padding, groups, dilation)
    check_grad_output(gy.shape, t.y_shape)
    p = t.conv
    geometry = ((p.sh, p.sw), (p.ph, p.pw), (p.dh, p.dw), p.groups)
    gx = conv2d(gy, weight, None, *geometry)[:, :, : t.h, : t.w].copy()
    xe = np.pad(x, ((0, 0), (0, 0), (0, t.extra_h), (0, t.extra_w)))
    _, gw, _ = conv2d_backward(xe, gy, weight, *geometry)
    return drop(gx, unbatched), gw, gy.sum(axis=(0, 2, 3))


# --------------------------------------------------------------------------- max_unpool2d


def max_unpool2d(
    x: Any, indices: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, output_size: Any = None
) -> np.ndarray:
    """y (N, C, OH, OW): zeros, x's values written at their flat indices in order."""
    x = as_host_array(x, "x").astype(np.float64)
    x, unbatched = lift(x, "x")
    idx = check_like(np.asarray(indices), "indices", unbatched, "(C, H, W)")
    p = max_unpool2d_params(x.shape, idx.dtype, idx.shape, kernel_size, stride, padding, output_size)
    if idx.size:
        check_unpool_index_range(int(idx.min()), int(idx.max()), p)
    y = np.zeros((p.n * p.c, p.oh * p.ow))
    for plane in range(p.n * p.c):
        for v, i in zip(x.reshape(p.n * p.c, -1)[plane], idx.reshape(p.n * p.c, -1)[plane]):
            y[plane, i] = v
    return drop(y.reshape(p.y_shape), unbatched)


def max_unpool2d_backward(
    grad_output: Any, indices: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, output_size: Any = None
) -> np.ndarray:
    """grad_x (the shape of indices): grad_output read at each index."""
    idx = np.asarray(indices)
    idx, unbatched = lift(idx, "indices")
    gy = as_host_array(grad_output, "grad_output").astype(np.float64)
    gy = check_like(gy, "grad_output", unbatched, "(C, OH, OW)", "indices")
    p = max_unpool2d_params(idx.shape, idx.dtype, idx.shape, kernel_size, stride, padding, output_size)
    check_grad_output(gy.shape, p.y_shape)
    if idx.size:
        check_unpool_index_range(int(idx.min()), int(idx.max()), p)
    planes = gy.reshape(p.n * p.c, -1)
    gx = np.take_along_axis(planes, idx.reshape(p.n * p.c, -1), axis=1)
    return drop(gx.reshape(p.x_shape), unbatched)


# --------------------------------------------------------------------------- padding modes


_NP_PAD_MODES: dict[str, Any] = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad(x: Any, pads: tuple[int, int, int, int], mode: str = "zeros") -> np.ndarray:
    """x (N, C, H, W) padded by (top, left, bottom, right) in a conv2d padding_mode (np.pad)."""
    x = as_host_array(x, "x").astype(np.float64)
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=_NP_PAD_MODES[check_padding_mode(mode)])


def conv2d_padded(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: Any = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """conv2d with ``torch.nn.Conv2d``'s padding_mode: pad, then convolve with padding 0."""
    x = as_host_array(x, "x").astype(np.float64)
    w = as_host_array(weight, "weight")
    p = conv2d_params(x.shape, w.shape, None, stride, padding, dilation, groups)
    pads = explicit_pads(p, check_padding_mode(padding_mode))
    return conv2d(pad(x, pads, padding_mode), w, bias, stride, 0, dilation, groups)


def conv2d_padded_backward(
    grad_output: Any,
    x: Any,
    weight: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: Any = 1,
    padding_mode: str = "zeros",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """conv2d_backward on the padded input; grad_x is the padded gradient folded
    back: the gradient of the linear map ``pad``, taken column by column."""
    x = as_host_array(x, "x").astype(np.float64)
    w = as_host_array(weight, "weight")
    p = conv2d_params(x.shape, w.shape, None, stride, padding, dilation, groups)
    pads = explicit_pads(p, check_padding_mode(padding_mode))
    gxp, gw, gb = conv2d_backward(grad_output, pad(x, pads, padding_mode), w, stride, 0, dilation, groups)
    rows = _pad_matrix(p.h, pads[0], pads[2], padding_mode)  # (HP, H)
    cols = _pad_matrix(p.w, pads[1], pads[3], padding_mode)  # (WP, W)
    return np.einsum("ncpq,ph,qw->nchw", gxp, rows, cols), gw, gb


def _pad_matrix(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """The (n + before + after, n) 0/1 matrix of padding one axis in ``mode``."""
    eye = np.eye(n)
    return np.pad(eye, ((before, after), (0, 0)), mode=_NP_PAD_MODES[mode])
