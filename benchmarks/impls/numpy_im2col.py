"""NumPy baselines (cs231n style), written against an array module so the same
code runs on CuPy arrays (``benchmarks.impls.cupy``):

* conv2d as im2col (a stride-tricks view copied into columns) + one BLAS GEMM
  per group; its backward by GEMMs on the columns and a col2im of one strided
  add per kernel tap;
* max_pool2d as a stride-tricks window view + ``max``/``argmax``; its backward
  by one ``bincount``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from fastconv._params import Conv2dParams, conv2d_params, pool2d_params


def _xp(a: Any) -> tuple[Any, Callable[..., Any]]:
    """(array module, as_strided) for a NumPy or CuPy array, so one im2col serves both."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy, cupy.lib.stride_tricks.as_strided
    return np, np.lib.stride_tricks.as_strided


def _conv_columns(x: Any, p: Conv2dParams) -> tuple[Any, Any]:
    """(padded x, columns (groups, C/groups*R*S, N*OH*OW)): the cs231n im2col.

    A stride-tricks view (C, R, S, N, OH, OW) of the padded input is reshaped,
    which copies it once into GEMM-ready rows (channel, tap) x columns (pixel).
    """
    xp, as_strided = _xp(x)
    if p.ph or p.ph_end or p.pw or p.pw_end:
        x = xp.pad(x, ((0, 0), (0, 0), (p.ph, p.ph_end), (p.pw, p.pw_end)))
    s_n, s_c, s_h, s_w = x.strides
    win = as_strided(x, shape=(p.c, p.kh, p.kw, p.n, p.oh, p.ow),
                     strides=(s_c, p.dh * s_h, p.dw * s_w, s_n, p.sh * s_h, p.sw * s_w))
    return x, win.reshape(p.groups, p.cg * p.kh * p.kw, p.n * p.oh * p.ow)


def _gemm(a: Any, b: Any) -> Any:
    """Batched (groups) GEMM; a plain 2-D product (one BLAS call) when groups == 1."""
    if a.shape[0] == 1:
        return (a[0] @ b[0])[None]
    return a @ b


def numpy_im2col_conv2d(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                        dilation: Any = 1, groups: int = 1) -> Any:
    """conv2d as im2col (stride tricks) + one BLAS GEMM per group, in x's dtype.

    Works on NumPy and CuPy arrays (CuPy's GEMM is cuBLAS).
    """
    xp, _ = _xp(x)
    p = conv2d_params(x.shape, weight.shape, None if bias is None else bias.shape, stride, padding, dilation,
                      groups)
    _, cols = _conv_columns(x, p)
    y = _gemm(weight.reshape(p.groups, p.kg, -1), cols).reshape(p.k, p.n * p.oh * p.ow)
    if bias is not None:
        y += bias[:, None]
    return xp.ascontiguousarray(y.reshape(p.k, p.n, p.oh, p.ow).transpose(1, 0, 2, 3))


def numpy_im2col_conv2d_backward(gy: Any, x: Any, weight: Any, stride: Any = 1, padding: Any = 0,
                                 dilation: Any = 1, groups: int = 1) -> tuple[Any, Any, Any]:
    """(gx, gw, gb) by GEMMs on the im2col columns; col2im adds one strided
    slice per kernel tap (R*S NumPy adds, no per-pixel Python loop)."""
    xp, _ = _xp(x)
    p = conv2d_params(x.shape, weight.shape, None, stride, padding, dilation, groups)
    xpad, cols = _conv_columns(x, p)
    gy2 = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(p.groups, p.kg, p.n * p.oh * p.ow)
    gw = _gemm(gy2, cols.transpose(0, 2, 1)).reshape(weight.shape)
    gb = gy.sum(axis=(0, 2, 3))
    gcols = _gemm(weight.reshape(p.groups, p.kg, -1).transpose(0, 2, 1), gy2)
    gcols = gcols.reshape(p.c, p.kh, p.kw, p.n, p.oh, p.ow)
    gxp = xp.zeros(xpad.shape, dtype=gy.dtype)
    for i in range(p.kh):
        for j in range(p.kw):
            r0, c0 = i * p.dh, j * p.dw
            gxp[:, :, r0:r0 + p.sh * (p.oh - 1) + 1:p.sh, c0:c0 + p.sw * (p.ow - 1) + 1:p.sw] += \
                gcols[:, i, j].transpose(1, 0, 2, 3)
    gx = xp.ascontiguousarray(gxp[:, :, p.ph:p.ph + p.h, p.pw:p.pw + p.w])
    return gx, gw, gb


def numpy_max_pool2d(x: Any, kernel_size: int, stride: int | None = None, padding: int = 0, dilation: int = 1,
                     ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """max_pool2d on a stride-tricks window view (N, C, OH, OW, KH*KW) of the
    -inf-padded input: ``max`` and ``argmax`` over the last axis (the first
    maximum wins a tie, as in torch; benchmark inputs hold no NaN)."""
    xp, as_strided = _xp(x)
    p = pool2d_params(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    # ceil_mode's last window may reach past the right padding: pad far enough for it.
    hp = max(p.h + 2 * p.ph, (p.oh - 1) * p.sh + p.dh * (p.kh - 1) + 1)
    wp = max(p.w + 2 * p.pw, (p.ow - 1) * p.sw + p.dw * (p.kw - 1) + 1)
    if (hp, wp) != (p.h, p.w):
        xpad = xp.full((p.n, p.c, hp, wp), -xp.inf, dtype=x.dtype)
        xpad[:, :, p.ph:p.ph + p.h, p.pw:p.pw + p.w] = x
    else:
        xpad = xp.ascontiguousarray(x)
    s_n, s_c, s_h, s_w = xpad.strides
    win = as_strided(xpad, shape=(p.n, p.c, p.oh, p.ow, p.kh, p.kw),
                     strides=(s_n, s_c, p.sh * s_h, p.sw * s_w, p.dh * s_h, p.dw * s_w))
    win = win.reshape(p.n, p.c, p.oh, p.ow, p.kh * p.kw)
    if not return_indices:
        return win.max(axis=-1)
    a = win.argmax(axis=-1)
    y = xp.take_along_axis(win, a[..., None], axis=-1)[..., 0]
    ai, aj = a // p.kw, a % p.kw
    rows = (xp.arange(p.oh) * p.sh - p.ph)[:, None] + ai * p.dh
    cols = (xp.arange(p.ow) * p.sw - p.pw)[None, :] + aj * p.dw
    return y, (rows * p.w + cols).astype(xp.int64)


def numpy_max_pool2d_backward(gy: Any, indices: Any, input_shape: Sequence[int]) -> Any:
    """Scatter-add of gy to the argmax positions with one ``bincount`` (sums
    overlapping windows; accumulates in float64, returned in gy's dtype)."""
    xp, _ = _xp(gy)
    n, c, h, w = (int(v) for v in input_shape)
    plane = (xp.arange(n * c, dtype=xp.int64) * (h * w))[:, None]
    flat = (indices.reshape(n * c, -1) + plane).ravel()
    gx = xp.bincount(flat, weights=gy.ravel(), minlength=n * c * h * w)
    return gx.astype(gy.dtype).reshape(n, c, h, w)



def fns() -> dict[str, Callable[..., Any]]:
    """The op table (see ``benchmarks.shapes``) of these baselines."""
    return {
        "conv2d_fwd": lambda c, x, w, b: numpy_im2col_conv2d(x, w, b, **c.kwargs),
        "conv2d_bwd": lambda c, gy, x, w: numpy_im2col_conv2d_backward(gy, x, w, **c.kwargs),
        "pool_fwd": lambda c, x: numpy_max_pool2d(x, *c.args),
        "pool_fwd_idx": lambda c, x: numpy_max_pool2d(x, *c.args, return_indices=True),
        "pool_bwd": lambda c, gy, idx, x: numpy_max_pool2d_backward(gy, idx, (c.n, c.c, c.h, c.w)),
    }
