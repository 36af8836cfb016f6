"""CUDA pieces of the surface ops that are not convolution or pooling kernels:
the explicit pad of conv2d's padding_mode and its fold, max unpooling, the
bias of a transposed convolution, and conv2d's grad_x alone (the transposed
forward, on the existing convolution kernels).

Every kernel is a grid-stride loop over its output with one thread per
element and int64 flat indices.  The pad and the fold are gathers (the fold
walks the border cells that map to its element, at most the pad width per
axis), so no atomics and a fixed summation order.  The unpooling scatter
writes each input at its index; a repeated index is a race there, as in
PyTorch's CUDA kernel (which value wins is unspecified).  Allocations and
launches follow the device/stream rule of ``_streams`` (the backend interface
opens the call).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

from . import _arrays
from ._arrays import elemwise_grid, flat, launch
from ._geometry import split3

U = np.uint64
MODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}


@cuda.jit(device=True, inline=True)
def _src(q, top, n, mode):
    """Source index of padded index q (-1: a zero), as fastconv.cpu.pad._src."""
    i = q - top
    if i >= 0 and i < n:
        return i
    if mode == 0:
        return -1
    if mode == 1:
        return -i if i < 0 else 2 * (n - 1) - i
    if mode == 2:
        return 0 if i < 0 else n - 1
    return i + n if i < 0 else i - n


@cuda.jit(cache=True)
def pad_kernel(x, out, h, w, hp, wp, top, left, mode):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < out.size:
        pl, q, c = split3(i, hp, wp)
        a = _src(q, top, h, mode)
        b = _src(c, left, w, mode)
        if a >= 0 and b >= 0:
            out[U(i)] = x[U(pl * h * w + a * w + b)]
        else:
            out[U(i)] = 0
        i += step


@cuda.jit(device=True, inline=True)
def _fold_row(gp, row, b, w, wp, left, mode):
    """Sum of padded row ``row`` (flat offset) over the columns whose source is b:
    the interior column, then the left and right border columns, in order."""
    acc = gp[U(row)] * 0
    for c in range(left):
        if _src(c, left, w, mode) == b:
            acc += gp[U(row + c)]
    acc += gp[U(row + b + left)]
    for c in range(left + w, wp):
        if _src(c, left, w, mode) == b:
            acc += gp[U(row + c)]
    return acc


@cuda.jit(cache=True)
def fold_kernel(gp, gx, h, w, hp, wp, top, left, mode):
    """gx[a, b] = sum of gp over the padded cells whose source is (a, b): the
    interior cell and the border cells that map to it (at most the pad widths
    are scanned per axis)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < gx.size:
        pl, a, b = split3(i, h, w)
        base = pl * hp * wp
        acc = gp[U(base)] * 0
        for q in range(top):
            if _src(q, top, h, mode) == a:
                acc += _fold_row(gp, base + q * wp, b, w, wp, left, mode)
        acc += _fold_row(gp, base + (a + top) * wp, b, w, wp, left, mode)
        for q in range(top + h, hp):
            if _src(q, top, h, mode) == a:
                acc += _fold_row(gp, base + q * wp, b, w, wp, left, mode)
        gx[U(i)] = acc
        i += step


@cuda.jit(cache=True)
def channel_sums_kernel(gy, out, k, n, plane):
    """out[c] = sum of gy[:, c] in a fixed order (images, then pixels), accumulated in
    float64: deterministic, as conv2d's grad_bias."""
    c = cuda.grid(1)
    if c < k:
        acc = 0.0
        for i in range(n):
            base = (i * k + c) * plane
            for j in range(plane):
                acc += gy[U(base + j)]
        out[U(c)] = acc


@cuda.jit(cache=True)
def add_bias_kernel(y, bias, k, plane):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < y.size:
        y[U(i)] += bias[U((i // plane) % k)]
        i += step


@cuda.jit(cache=True)
def unpool_kernel(x, idx, y, m, hw):
    """y (flat, zeroed) [plane * hw + idx] = x, one thread per input element."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < x.size:
        y[U((i // m) * hw + idx[U(i)])] = x[U(i)]
        i += step


@cuda.jit(cache=True)
def unpool_backward_kernel(gy, idx, gx, m, hw):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < gx.size:
        gx[U(i)] = gy[U((i // m) * hw + idx[U(i)])]
        i += step


def _launch(kernel: Any, size: int, *args: Any) -> None:
    if size:
        blocks, tpb = elemwise_grid(size)
        launch(kernel, blocks, tpb, *args)


def pad_input(x, pads: tuple[int, int, int, int], mode: str):
    """x (N, C, H, W) padded by (top, left, bottom, right) in ``mode``."""
    n, c, h, w = x.shape
    top, left, bottom, right = pads
    hp, wp = h + top + bottom, w + left + right
    out = _arrays.empty((n, c, hp, wp), x.dtype)
    _launch(pad_kernel, out.size, flat(x), flat(out), h, w, hp, wp, top, left, MODES[mode])
    return out


def fold_input(gp, pads: tuple[int, int, int, int], mode: str):
    """The gradient of ``pad_input``: (N, C, HP, WP) -> (N, C, H, W)."""
    n, c, hp, wp = gp.shape
    top, left, bottom, right = pads
    h, w = hp - top - bottom, wp - left - right
    gx = _arrays.empty((n, c, h, w), gp.dtype)
    _launch(fold_kernel, gx.size, flat(gp), flat(gx), h, w, hp, wp, top, left, MODES[mode])
    return gx


def add_bias(y, bias):
    """y (N, K, H, W) += bias (K,) in place; returns y."""
    _launch(add_bias_kernel, y.size, flat(y), bias, y.shape[1], y.shape[2] * y.shape[3])
    return y


def channel_sums(gy):
    """(K,) sums of gy (N, K, H, W) over N, H, W (conv2d's deterministic grad_bias reduction)."""
    n, k, h, w = gy.shape
    out = _arrays.empty((k,), gy.dtype)
    _launch(channel_sums_kernel, k, flat(gy), out, k, n, h * w)
    return out


def crop(a, h: int, w: int):
    """C-contiguous a[:, :, :h, :w]."""
    return _arrays.ascompute(a[:, :, :h, :w], a.dtype)


def conv2d_input_grad(gy, weight, plan):
    """conv2d's grad_x alone for grad_output gy, by the plan's backward algorithm's kernel."""
    from . import _geometry as geo
    from . import conv_direct, conv_im2col

    p = plan.params
    gx = _arrays.empty(p.x_shape, gy.dtype)
    if plan.backward_algorithm == "direct":
        conv_direct.launch_conv_direct(gy, weight, None, gx, geo.input_grad(p))
    else:
        conv_im2col.launch_conv_igemm(gy, weight, None, gx, geo.input_grad(p))
    return gx


def max_unpool2d_forward(x, indices, out_hw: tuple[int, int]):
    n, c, h, w = x.shape
    y = _arrays.zeros((n, c) + tuple(out_hw), x.dtype)
    _launch(unpool_kernel, x.size, flat(x), flat(indices), flat(y), h * w, out_hw[0] * out_hw[1])
    return y


def max_unpool2d_backward(gy, indices):
    gx = _arrays.empty(tuple(indices.shape), gy.dtype)
    hw = gy.shape[2] * gy.shape[3]
    _launch(unpool_backward_kernel, gx.size, flat(gy), flat(indices), flat(gx), indices.shape[2] * indices.shape[3], hw)
    return gx
