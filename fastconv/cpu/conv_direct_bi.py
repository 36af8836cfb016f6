"""Direct convolution in the batch-inner layout: small planes, stride 1.

In the standard layout Q = n*plane + oh*pitch + ow walks image by image, and
the padding rows and columns of every image are computed and dropped: for a
5x5 input and a 3x3 kernel, 9 output pixels per 25 Q.  In the batch-inner
layout (``fastconv.cpu.layout``) channel c is a (Hp, Wp, N) block -- the
padded plane with the batch innermost -- so Q = (oh*Wp + ow)*N + n and tap
(r, s) is the shift (r*dh*Wp + s*dw)*N.  Only the Wp - OW padding columns of
each output row are garbage (no per-image rows), e.g. 13 Q per 9 outputs for
5x5 -> 3x3, 141 per 121 for 13x13 -> 11x11.  The vector lanes run over the
batch.  The engine's register tiles do the arithmetic; the price is the
transposing copies in (x, grad_output) and out (the engine writes y and
grad_x back in NCHW from its accumulators), which are small in exactly the
cases the plan chooses this layout for (``fastconv._plan.use_batch_inner``).

grad_x (unless the plan takes it by taps, as ``conv_direct`` does) reads
grad_output's buffer at negative tap offsets, as the standard
layout's stride-1 path does (see ``conv_direct``): a read before an output
row lands in the zero columns after the previous row (Wp - OW = (KW-1)*dw),
before a channel's first row in the zero rows after the previous channel's
last (Hp - OH = (KH-1)*dh) or, for channel 0, in ``lead`` zeros.  A
grad_weight that came out NaN (a 0 * inf at a garbage Q may cause that) is
recomputed over exact output rows (``conv_direct.grad_weight_exact``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import _alloc
from .._params import Conv2dParams
from .common import bias_grad, empty_bias
from .conv_direct import grad_input_scatter, grad_input_taps, grad_weight_exact
from .engine import (
    Prepared,
    correlate,
    correlate_pixels,
    grad_weight_contiguous,
    pack_weights,
    prepare_batch_inner,
    prepare_standard,
)
from .layout import (
    Layout,
    PixelTiling,
    TapTiling,
    grad_output_layout,
    mirrored_lead,
    standard_layout,
    tap_offsets,
)

if TYPE_CHECKING:
    from .._plan import ConvPlan

__all__ = ["backward", "forward"]


def _tap_offsets(p: Conv2dParams, lay: Layout) -> np.ndarray:
    return tap_offsets(p.kh, p.kw, p.dh, p.dw, lay.pitch, step=lay.step)


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, plan: ConvPlan) -> tuple[np.ndarray, Prepared]:
    """(y (N, K, OH, OW), the prepared x), stride 1, batch-inner layout."""
    p, c = plan.params, plan.cpu_part()
    # the copy outlives the call only when the backward reuses it
    xb = prepare_batch_inner(x, c.forward_layout, scratch=None if c.reuse_prepared_input else "bi.forward.x")
    b = empty_bias(x.dtype) if bias is None else bias
    wpk = pack_weights(weight.reshape(p.groups, p.kg, p.cg, p.kh * p.kw), c.forward)
    y = _alloc.empty(p.y_shape, x.dtype)
    if isinstance(c.forward, PixelTiling):
        correlate_pixels(xb.buf, xb.layout, _tap_offsets(p, xb.layout), wpk, b, y, c.forward, (1, 1))
    else:
        correlate(xb.buf, xb.layout, _tap_offsets(p, xb.layout), wpk, b, y, c.forward)
    return y, xb


def _grad_weight_exact(gy: np.ndarray, x: np.ndarray, p: Conv2dParams, threads: int) -> np.ndarray:
    """grad_weight over exact output rows, x prepared in the standard layout."""
    lay = standard_layout(p.x_shape, (p.ph, p.pw, p.ph_end, p.pw_end), x.dtype.itemsize)
    return grad_weight_exact(gy, prepare_standard(x, lay), p, threads)


def backward(
    gy: np.ndarray, x: np.ndarray, weight: np.ndarray, plan: ConvPlan, kept: Prepared | None = None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gx or None, gw, gb) as ``conv_direct.backward``, stride 1, batch-inner
    layout.  ``kept``: the forward's prepared x of this very x, if kept."""
    p, c = plan.params, plan.cpu_part()
    dtype = x.dtype
    xb = kept if kept is not None else prepare_batch_inner(x, c.backward_layout, scratch="bi.backward.x")
    lay = xb.layout
    # grad_x (finite weights only: it multiplies zeros by weights) reads the
    # grad_output buffer down to -lead
    # grad_x by correlation (taps multiply only the products that exist: any weights)
    fast_gx = c.grad_input_corr() is not None and bool(np.isfinite(weight).all())
    lead = mirrored_lead(p.kh, p.kw, p.dh, p.dw, p.ph, p.pw, lay.pitch, lay.step) if fast_gx else 0
    gyb = prepare_batch_inner(gy, grad_output_layout(lay, p.y_shape, dtype.itemsize, lead), scratch="bi.backward.gy")
    offs = _tap_offsets(p, lay)
    qn = (p.oh - 1) * lay.pitch + p.ow * p.n
    gw64 = grad_weight_contiguous(
        gyb.buf,
        lead,
        gyb.layout.cstride,
        xb.buf,
        lay.cstride,
        offs,
        qn,
        p.groups,
        (p.k, p.cg, p.kh * p.kw),
        c.grad_weight,
    )
    if np.isnan(gw64).any():
        gw64 = _grad_weight_exact(gy, x, p, c.grad_weight.threads)
    gb = bias_grad(gy, _alloc.empty((p.k,), dtype))
    gw = gw64.astype(dtype).reshape(p.weight_shape)
    if not plan.need_input_grad:
        return None, gw, gb
    gx = _alloc.empty(p.x_shape, dtype)
    if isinstance(c.grad_input, TapTiling):
        return grad_input_taps(gy, weight, gx, p, c.grad_input), gw, gb
    tiling = c.grad_input_corr()
    if not fast_gx or tiling is None:
        return grad_input_scatter(gy, weight, gx, p), gw, gb
    offs_gx = tap_offsets(
        p.kh, p.kw, -p.dh, -p.dw, lay.pitch, step=lay.step, origin=lead + p.ph * lay.pitch + p.pw * lay.step
    )
    w4 = weight.reshape(p.groups, p.kg, p.cg, p.kh * p.kw).transpose(0, 2, 1, 3)
    correlate(gyb.buf, gyb.layout, offs_gx, pack_weights(w4, tiling), empty_bias(dtype), gx, tiling)
    return gx, gw, gb
