"""Direct 2-D convolution on the CPU (no column buffer), standard layout.

x is copied once into the standard prepared layout (``fastconv.cpu.layout``:
channel-major, zero-padded, polyphase for stride > 1), in which every kernel
tap (r, s) is a constant shift of one index ``Q = n*plane + oh*pitch + ow``
running over the whole batch.  Stride, padding ("same" included, asymmetric)
and dilation are then only numbers in the tap offsets: the loops have no
bounds tests, and they are long even for 13x13 images.  Workspace: one padded
copy of x (not KH*KW copies like a column buffer).  The plan
(``fastconv._plan``) chose the layout's geometry and the engine's tilings;
this module builds the buffers and calls the engine.

Forward: ``engine.correlate`` over the forward's compact layout (rows and
images share their zero padding), in the style of Zhang/Franchetti/Low's
direct convolution.

Backward.  grad_bias: the per-plane sums the copy of grad_output into x's
layout takes (no pass of its own).  grad_weight: the engine's dot products of
that copy (zeros at garbage Q) with the shifted prepared x.  grad_input,
stride 1, where the plan takes it: by taps (``engine.pixels.grad_x_taps``,
only the products that exist).  Otherwise at stride 1: a transposed
convolution is a correlation of grad_output with the
weights read as (C, K) and the taps mirrored, reading the *same* grad_output
buffer at negative tap offsets: a read before a row or plane lands in the
previous one's zero padding (pitch - OW = (KW-1)*dw, rows - OH = (KH-1)*dh at
stride 1), before the first plane in ``lead`` zeros.  Stride > 1:
``grad_input_scatter``, parallel over grad_x planes, each owned by one
iteration (race-free).

Exactness with NaN/Inf.  The fast gradient paths multiply things PyTorch never
multiplies: zero margins of grad_output by weights (grad_x) and zero garbage
Q of grad_output by input values (grad_weight).  Those products are exact
zeros when the other factor is finite, so grad_x's correlation runs only when
the weights are all finite, and a grad_weight containing a NaN is recomputed
over exact output rows only (``grad_weight_exact``).  The forward multiplies
the zero padding like PyTorch and the reference do, and drops garbage outputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeGuard

import numpy as np
from numba import njit, prange

from .. import _alloc
from .._params import Conv2dParams
from .common import FASTMATH, bias_grad, empty_bias, tap_cols
from .conv_subpixel import grad_input_subpixel
from .engine import (
    Prepared,
    correlate,
    correlate_pixels,
    grad_weight_contiguous,
    grad_weight_per_image,
    grad_weight_pixels,
    grad_weight_rows,
    grad_x_taps,
    pack_weights,
    prepare_standard,
)
from .layout import (
    GradWeightTiling,
    Layout,
    PixelTiling,
    TapTiling,
    grad_output_layout,
    mirrored_lead,
    nchw_layout,
    pointwise_in_place,
    tap_offsets,
)

if TYPE_CHECKING:
    from .._plan import ConvPlan

__all__ = [
    "backward",
    "forward",
    "grad_input_in_place",
    "grad_input_pointwise",
    "grad_input_scatter",
    "grad_weight_exact",
    "standard_tap_offsets",
]


def standard_tap_offsets(p: Conv2dParams, lay: Layout) -> np.ndarray:
    """x's tap offsets in a standard layout."""
    return tap_offsets(p.kh, p.kw, p.dh, p.dw, lay.pitch, strides=(p.sh, p.sw), phase_stride=lay.phase_stride)


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, plan: ConvPlan) -> tuple[np.ndarray, Prepared]:
    """(y (N, K, OH, OW), the prepared x) for x (N, C, H, W), weight (K, C/groups, KH, KW)."""
    p, c = plan.params, plan.cpu_part()
    # the copy outlives the call only when the backward reuses it
    xp = prepare_standard(x, c.forward_layout, scratch=None if c.reuse_prepared_input else "direct.forward.x")
    y = _alloc.empty(p.y_shape, x.dtype)
    b = empty_bias(x.dtype) if bias is None else bias
    wpk = pack_weights(weight.reshape(p.groups, p.kg, p.cg, p.kh * p.kw), c.forward)
    if isinstance(c.forward, PixelTiling):  # a stride-1 layout, output pixels sh, sw apart
        offs = tap_offsets(p.kh, p.kw, p.dh, p.dw, xp.layout.pitch)
        correlate_pixels(xp.buf, xp.layout, offs, wpk, b, y, c.forward, (p.sh, p.sw))
    else:
        correlate(xp.buf, xp.layout, standard_tap_offsets(p, xp.layout), wpk, b, y, c.forward)
    return y, xp


def grad_weight_exact(gy: np.ndarray, xp: Prepared, p: Conv2dParams, threads: int) -> np.ndarray:
    """float64 grad_weight (K, C/groups, T) over exact output rows of gy (N, K,
    OH, OW), read in place, with x prepared in a standard layout."""
    lay = xp.layout
    gw64, _ = grad_weight_rows(
        gy.reshape(-1),
        (0, p.oh * p.ow, p.k * p.oh * p.ow, p.ow),
        xp.buf,
        lay.cstride,
        standard_tap_offsets(p, lay),
        lay.plane,
        lay.pitch,
        (p.n, p.oh, p.ow),
        p.groups,
        (p.k, p.cg, p.kh * p.kw),
        GradWeightTiling("rows", 0, threads),
    )
    return gw64


def _grad_weight(
    gy: np.ndarray, gyf: Prepared | None, xp: Prepared, offs: np.ndarray, p: Conv2dParams, tiling: GradWeightTiling
) -> np.ndarray:
    """float64 grad_weight from grad_output copied into x's layout (or, on the
    pixel tiles, in x's dtype from grad_output itself)."""
    lay = xp.layout
    shape = (p.k, p.cg, p.kh * p.kw)
    if tiling.mode == "pixels":  # x in a stride-1 layout at any stride
        offs1 = tap_offsets(p.kh, p.kw, p.dh, p.dw, lay.pitch)
        return grad_weight_pixels(gy, xp.buf, lay, offs1, p.groups, shape, tiling, (p.sh, p.sw))
    assert gyf is not None, "grad_output's copy"
    glay = gyf.layout
    if tiling.mode == "per-image":
        return grad_weight_per_image(
            gyf.buf, glay.lead, glay.cstride, xp.buf, lay.cstride, offs, lay.plane, p.n, p.groups, shape, tiling
        )
    qn = (p.n - 1) * lay.plane + (p.oh - 1) * lay.pitch + p.ow
    return grad_weight_contiguous(
        gyf.buf, glay.lead, glay.cstride, xp.buf, lay.cstride, offs, qn, p.groups, shape, tiling
    )


def backward(
    gy: np.ndarray, x: np.ndarray, weight: np.ndarray, plan: ConvPlan, kept: Prepared | None = None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gx, gw, gb) of conv2d for gy (N, K, OH, OW); shapes of x, weight and (K,).
    gx is None (not computed) when the plan needs no input gradient.
    ``kept``: the forward's prepared x of this very x, if the caller kept it."""
    p, c = plan.params, plan.cpu_part()
    dtype = x.dtype
    xp = kept if kept is not None else prepare_standard(x, c.backward_layout, scratch="direct.backward.x")
    lay = xp.layout
    # grad_x's correlations (stride 1 over a padded copy of grad_output, or the
    # strided sub-pixel grids) multiply grad_output's zero margins by the
    # weights, so they run only with finite weights; grad_x by taps, in place
    # (1×1) or by scatter multiplies only real products: any weights
    gx_in_place = grad_input_in_place(c.grad_input, p)
    margins = c.grad_input_corr() is not None or bool(c.grad_input_phases)
    finite_w = plan.need_input_grad and not gx_in_place and margins and bool(np.isfinite(weight).all())
    # grad_x by correlation reads grad_output's buffer at negative tap offsets, down to -lead
    fast_gx = c.grad_input_corr() is not None and finite_w
    lead = mirrored_lead(p.kh, p.kw, p.dh, p.dw, p.ph, p.pw, lay.pitch) if fast_gx else 0
    # grad_output's copy serves grad_x's correlation and the Q-lane grad_weight;
    # the pixel grad_weight and the strided grad_x read grad_output itself
    gyf = None
    if c.grad_weight.mode != "pixels" or fast_gx:
        gyf = prepare_standard(
            gy, grad_output_layout(lay, p.y_shape, dtype.itemsize, lead), sums=True, scratch="direct.backward.gy"
        )
        gb = gyf.sums.reshape(p.k, p.n).sum(axis=1).astype(dtype)  # grad_bias from the copy's sums
    else:
        gb = bias_grad(gy, _alloc.empty((p.k,), dtype))
    gw = _grad_weight(gy, gyf, xp, standard_tap_offsets(p, lay), p, c.grad_weight)
    if c.grad_weight.mode != "pixels":  # float64 sums over Q
        # maybe 0 * inf at a garbage Q: redo over exact rows (the pixel tiles read exact pixels only)
        if np.isnan(gw).any():
            gw = grad_weight_exact(gy, xp, p, c.grad_weight.threads)
        gw = gw.astype(dtype)
    gw = gw.reshape(p.weight_shape)
    if not plan.need_input_grad:
        return None, gw, gb
    gx = _alloc.empty(p.x_shape, dtype)
    if isinstance(c.grad_input, TapTiling):
        return grad_input_taps(gy, weight, gx, p, c.grad_input), gw, gb
    if grad_input_in_place(c.grad_input, p):
        return grad_input_pointwise(gy, weight, gx, p, c.grad_input), gw, gb
    if not fast_gx and c.grad_input_phases and finite_w:  # strided: the sub-pixel grids' correlations
        return grad_input_subpixel(gy, weight, gx, p, c.grad_input_phases), gw, gb
    tiling = c.grad_input_corr()
    if not fast_gx or tiling is None:
        return grad_input_scatter(gy, weight, gx, p), gw, gb
    # gx[h, w] = sum over taps of gy[h + ph - r*dh, w + pw - s*dw] * w[r, s],
    # gy (zero outside its OH x OW) stored at lead + i*pitch + j of each padded
    # plane; Q runs over gx's pixels
    assert gyf is not None, "grad_output's copy"
    glay = gyf.layout
    offs_gx = tap_offsets(p.kh, p.kw, -p.dh, -p.dw, glay.pitch, origin=glay.lead + p.ph * glay.pitch + p.pw)
    w4 = weight.reshape(p.groups, p.kg, p.cg, p.kh * p.kw).transpose(0, 2, 1, 3)
    correlate(gyf.buf, glay, offs_gx, pack_weights(w4, tiling), empty_bias(dtype), gx, tiling)
    return gx, gw, gb


def grad_input_in_place(tiling: object, p: Conv2dParams) -> TypeGuard[PixelTiling]:
    """grad_x runs as ``grad_input_pointwise`` (a 1×1 layer's on the pixel tiles)."""
    return isinstance(tiling, PixelTiling) and pointwise_in_place(
        p.kh, p.kw, p.sh, p.sw, (p.ph, p.pw, p.ph_end, p.pw_end)
    )


def grad_input_pointwise(
    gy: np.ndarray, weight: np.ndarray, gx: np.ndarray, p: Conv2dParams, tiling: PixelTiling
) -> np.ndarray:
    """gx (N, C, H, W) of a 1×1 stride-1 unpadded layer: gx[n, c] = sum over k
    of gy[n, k] * w[k, c], the forward's pixel correlation of grad_output,
    read in place, with the transposed weights (``pointwise_in_place``)."""
    gyp = prepare_standard(gy, nchw_layout(p.y_shape))
    w4 = weight.reshape(p.groups, p.kg, p.cg, 1).transpose(0, 2, 1, 3)
    offs = np.zeros(1, dtype=np.int64)
    return correlate_pixels(
        gyp.buf, gyp.layout, offs, pack_weights(w4, tiling), empty_bias(gx.dtype), gx, tiling, (1, 1)
    )


def grad_input_taps(
    gy: np.ndarray, weight: np.ndarray, gx: np.ndarray, p: Conv2dParams, tiling: TapTiling
) -> np.ndarray:
    """gx (N, C, H, W) <- grad_x by taps on the pixel tiles (``engine.pixels.grad_x_taps``)."""
    return grad_x_taps(gy, weight, gx, (p.sh, p.sw), (p.ph, p.pw), (p.dh, p.dw), p.groups, tiling)


def grad_input_scatter(gy: np.ndarray, weight: np.ndarray, gx: np.ndarray, p: Conv2dParams) -> np.ndarray:
    """gx (N, C, H, W) <- the exact transposed convolution of gy (``_gx_scatter``)."""
    return _gx_scatter(gy, weight, gx, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _gx_scatter(gy, w, gx, sh, sw, ph, pw, dh, dw):
    """gx (N, C, H, W) <- transposed convolution of gy (N, K, OH, OW) with
    w (K, C/groups, KH, KW), adding only the (output, tap) pairs that exist.

    Parallel over the N*C planes of gx; one iteration owns one plane, so no two
    threads ever add to the same element.  For each (k, tap, output row) one
    contiguous grad_output segment is added into a (strided) grad_x row."""
    n_img, k_n, oh_n, ow_n = gy.shape
    c_n, h, w_ = gx.shape[1], gx.shape[2], gx.shape[3]
    cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    groups = c_n // cg
    kg = k_n // groups
    for t in prange(n_img * c_n):
        n = t // c_n
        c = t - n * c_n
        g = c // cg
        ci = c - g * cg
        plane = gx[n, c]
        plane[:] = 0
        for k in range(g * kg, (g + 1) * kg):
            for r in range(kh):
                for s in range(kw):
                    wv = w[k, ci, r, s]
                    # output columns whose input column ow*sw - pw + s*dw lies in [0, W)
                    off, lo, hi = tap_cols(s, dw, pw, sw, w_, ow_n)
                    if hi == lo:
                        continue
                    for oh in range(oh_n):
                        ih = oh * sh - ph + r * dh
                        if ih < 0 or ih >= h:
                            continue
                        grow = gy[n, k, oh]
                        xrow = plane[ih]
                        if sw == 1:
                            xs = xrow[lo + off : hi + off]
                            gs = grow[lo:hi]
                            for i in range(hi - lo):
                                xs[i] += wv * gs[i]
                        else:
                            for ow in range(lo, hi):
                                xrow[ow * sw + off] += wv * grow[ow]
    return gx
