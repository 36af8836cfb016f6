"""Geometry of one CUDA launch, passed to a kernel as one value, and the index helpers
every kernel shares.

A kernel receives a ``ConvGeom`` / ``PoolGeom`` named tuple of int64 fields instead of
twenty scalars (numba passes a named tuple by value; fields are read by name).  Flags
(``transposed``, ``has_bias``) are 0/1 integers so the tuple stays homogeneous, which
keeps one compiled signature per dtype.
"""

from __future__ import annotations

from typing import NamedTuple

from .._params import Conv2dParams, Pool2dParams
from ._config import device_fn


class ConvGeom(NamedTuple):
    """y (n, cout, oh, ow) = conv of x (n, cin, hin, win); see ``forward`` and ``input_grad``.

    ``transposed``: w is the forward weight (cin, cout_g, kh, kw) read transposed and
    flipped, and x is read with lhs dilation (lh, lw): element u of a dilated row is
    x[u / lh] if lh divides u, else 0.
    """

    n: int
    cin: int
    hin: int
    win: int
    cout: int
    oh: int
    ow: int
    cin_g: int
    cout_g: int
    kh: int
    kw: int
    sh: int
    sw: int
    pt: int
    pl: int
    dh: int
    dw: int
    lh: int
    lw: int
    transposed: int
    has_bias: int


class PoolGeom(NamedTuple):
    h: int
    w: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    with_idx: int
    relu: int  # the forward writes max(window max, 0) (nn's ConvReLUPool on the device)


def forward(p: Conv2dParams, has_bias: bool) -> ConvGeom:
    return ConvGeom(
        p.n,
        p.c,
        p.h,
        p.w,
        p.k,
        p.oh,
        p.ow,
        p.cg,
        p.kg,
        p.kh,
        p.kw,
        p.sh,
        p.sw,
        p.ph,
        p.pw,
        p.dh,
        p.dw,
        1,
        1,
        0,
        int(has_bias),
    )


def input_grad(p: Conv2dParams) -> ConvGeom:
    """grad_x as a forward convolution of grad_output: lhs dilation by the stride, weights
    transposed and flipped, padding (R-1)*dh - ph (a gather, never a scatter)."""
    return ConvGeom(
        p.n,
        p.k,
        p.oh,
        p.ow,
        p.c,
        p.h,
        p.w,
        p.kg,
        p.cg,
        p.kh,
        p.kw,
        1,
        1,
        (p.kh - 1) * p.dh - p.ph,
        (p.kw - 1) * p.dw - p.pw,
        p.dh,
        p.dw,
        p.sh,
        p.sw,
        1,
        0,
    )


def pool(p: Pool2dParams, with_idx: bool, relu: bool = False) -> PoolGeom:
    return PoolGeom(p.h, p.w, p.oh, p.ow, p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw, int(with_idx), int(relu))


def groups(g: ConvGeom) -> int:
    return g.cout // g.cout_g


@device_fn
def split2(i, d):
    """(i // d, i % d) for i >= 0 with one division."""
    q = i // d
    return q, i - q * d


@device_fn
def split3(i, d1, d2):
    """Flat index of a C-order (.., d1, d2) array -> (i0, i1, i2): the one NCHW
    decomposition (call it with the plane for (n*c, h, w), or with (oh, ow) for a GEMM column)."""
    q, i2 = split2(i, d2)
    i0, i1 = split2(q, d1)
    return i0, i1, i2


@device_fn
def nchw(n, c, h, w, cc, hh, ww):
    """Flat C-order offset of element (n, c, h, w) of an (., cc, hh, ww) tensor."""
    return ((n * cc + c) * hh + h) * ww + w


@device_fn
def dilated_tap(u, v, g):
    """(row, col, ok) of lhs-dilated input coordinates (u, v): the element of x they read,
    and whether it exists (inside x, and not a hole of the lhs dilation)."""
    if g.lh == 1 and g.lw == 1:
        return u, v, u >= 0 and u < g.hin and v >= 0 and v < g.win
    if u < 0 or v < 0:
        return u, v, False
    uq, ur = split2(u, g.lh)
    vq, vr = split2(v, g.lw)
    return uq, vq, ur == 0 and vr == 0 and uq < g.hin and vq < g.win
