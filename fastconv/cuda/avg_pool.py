"""Average pooling on the GPU (numba.cuda), PyTorch semantics (see
``fastconv/cpu/avg_pool.py`` for the window and divisor rules).

Forward: one thread per output element, grid-stride loop over the flat
N*C*OH*OW output; consecutive threads take consecutive output columns, so
window-row loads and the stores are coalesced.  The window sum runs in
row-major order.

Backward: a gather, one thread per *input* element: it sums gradient/divisor
over the outputs whose windows cover it (rows ceil((i+ph-kh+1)/sh) ..
floor((i+ph)/sh), the same for columns) in a fixed order.  No atomics, no
races, bit-identical run to run.  No fast-math: NaN and Inf propagate.
Allocations and launches follow the device/stream rule of ``_streams``.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._params import AvgPool2dParams
from . import _arrays
from ._arrays import elemwise_grid, flat, launch
from ._geometry import split3

U = np.uint64  # unsigned indices skip numba's negative-index wraparound


@cuda.jit(device=True, inline=True)
def _divisor(oi, oj, h, w, kh, kw, sh, sw, ph, pw, include_pad, divisor):
    if divisor != 0:
        return divisor
    hs = oi * sh - ph
    ws = oj * sw - pw
    he = min(hs + kh, h + ph)
    we = min(ws + kw, w + pw)
    if include_pad:
        return (he - hs) * (we - ws)
    return (min(he, h) - max(hs, 0)) * (min(we, w) - max(ws, 0))


@cuda.jit(cache=True)
def avg_pool2d_forward_kernel(x, y, h, w, oh, ow, kh, kw, sh, sw, ph, pw, include_pad, divisor):
    """y (flat N*C*OH*OW) = window sums of x (flat N*C*H*W) / their divisors."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < y.size:
        pl, oi, oj = split3(i, oh, ow)
        base = pl * h * w
        hs = oi * sh - ph
        ws = oj * sw - pw
        acc = x[U(base)] * 0  # typed zero
        for a in range(max(hs, 0), min(hs + kh, h)):
            for b in range(max(ws, 0), min(ws + kw, w)):
                acc += x[U(base + a * w + b)]
        y[U(i)] = acc / _divisor(oi, oj, h, w, kh, kw, sh, sw, ph, pw, include_pad, divisor)
        i += step


@cuda.jit(cache=True)
def avg_pool2d_backward_kernel(gy, gx, h, w, oh, ow, kh, kw, sh, sw, ph, pw, include_pad, divisor):
    """gx (flat N*C*H*W) = sum of gy / divisor over the windows covering each element."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < gx.size:
        pl, ih, iw = split3(i, h, w)
        base = pl * oh * ow
        o0 = max(0, (ih + ph - kh + sh) // sh)
        o1 = min(oh - 1, (ih + ph) // sh)
        p0 = max(0, (iw + pw - kw + sw) // sw)
        p1 = min(ow - 1, (iw + pw) // sw)
        acc = gy[U(base)] * 0
        for oi in range(o0, o1 + 1):
            for oj in range(p0, p1 + 1):
                acc += gy[U(base + oi * ow + oj)] / _divisor(oi, oj, h, w, kh, kw, sh, sw, ph, pw, include_pad, divisor)
        gx[U(i)] = acc
        i += step


def _geometry(p: AvgPool2dParams) -> tuple:
    return (p.h, p.w, p.oh, p.ow, p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, bool(p.count_include_pad), p.divisor)


def avg_pool2d_forward(x, p: AvgPool2dParams):
    """x (N, C, H, W) device array -> y (N, C, OH, OW)."""
    y = _arrays.empty(p.y_shape, x.dtype)
    blocks, tpb = elemwise_grid(y.size)
    launch(avg_pool2d_forward_kernel, blocks, tpb, flat(x), flat(y), *_geometry(p))
    return y


def avg_pool2d_backward(gy, p: AvgPool2dParams):
    """gy (N, C, OH, OW) device array -> gx (N, C, H, W)."""
    gx = _arrays.empty(p.x_shape, gy.dtype)
    blocks, tpb = elemwise_grid(gx.size)
    launch(avg_pool2d_backward_kernel, blocks, tpb, flat(gy), flat(gx), *_geometry(p))
    return gx
