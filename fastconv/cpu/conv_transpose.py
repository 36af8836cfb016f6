"""conv2d's grad_x alone, for conv_transpose2d's forward (no grad_weight).

The same steps as the grad_x part of ``conv_direct.backward`` and
``conv_direct_bi.backward``, on the plan of the conv2d whose grad_x this is
(algorithm direct; its layout rule decides standard or batch-inner):
grad_output copied into the geometry of x's prepared layout with ``lead``
zeros in front, then the engine's correlation with the mirrored taps (or grad_x
by taps where the plan takes it); the
stride-1 correlations on the sub-pixel grids for strides > 1 (as
``conv_direct.backward``), the exact scatter kernel for non-finite weights.  No new kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import _alloc
from .common import empty_bias
from .conv_direct import grad_input_in_place, grad_input_pointwise, grad_input_scatter, grad_input_taps
from .conv_subpixel import grad_input_subpixel
from .engine import correlate, pack_weights, prepare_batch_inner, prepare_standard
from .layout import TapTiling, grad_output_layout, mirrored_lead, tap_offsets

if TYPE_CHECKING:
    from .._plan import ConvPlan

__all__ = ["grad_input"]


def grad_input(gy: np.ndarray, weight: np.ndarray, plan: ConvPlan) -> np.ndarray:
    """grad_x (N, C, H, W) of conv2d for gy (N, K, OH, OW), by ``plan``'s
    direct backward layout and grad_x tiling."""
    p, c = plan.params, plan.cpu_part()
    dtype = gy.dtype
    gx = _alloc.empty(p.x_shape, dtype)
    if isinstance(c.grad_input, TapTiling) and plan.backward_algorithm == "direct":
        return grad_input_taps(gy, weight, gx, p, c.grad_input)
    if grad_input_in_place(c.grad_input, p) and plan.backward_algorithm == "direct":
        return grad_input_pointwise(gy, weight, gx, p, c.grad_input)
    tiling = c.grad_input_corr()
    finite_w = bool(np.isfinite(weight).all())
    if tiling is None or plan.backward_algorithm != "direct" or not finite_w:
        if finite_w and c.grad_input_phases:  # strided: the sub-pixel grids' correlations
            return grad_input_subpixel(gy, weight, gx, p, c.grad_input_phases)
        return grad_input_scatter(gy, weight, gx, p)
    lay = c.backward_layout
    w4 = weight.reshape(p.groups, p.kg, p.cg, p.kh * p.kw).transpose(0, 2, 1, 3)
    wpk = pack_weights(w4, tiling)
    if plan.backward_layout == "batch-inner":
        lead = mirrored_lead(p.kh, p.kw, p.dh, p.dw, p.ph, p.pw, lay.pitch, lay.step)
        gyb = prepare_batch_inner(gy, grad_output_layout(lay, p.y_shape, dtype.itemsize, lead), scratch="transpose.gy")
        offs = tap_offsets(
            p.kh, p.kw, -p.dh, -p.dw, lay.pitch, step=lay.step, origin=lead + p.ph * lay.pitch + p.pw * lay.step
        )
        correlate(gyb.buf, gyb.layout, offs, wpk, empty_bias(dtype), gx, tiling)
        return gx
    lead = mirrored_lead(p.kh, p.kw, p.dh, p.dw, p.ph, p.pw, lay.pitch)
    gyf = prepare_standard(gy, grad_output_layout(lay, p.y_shape, dtype.itemsize, lead), scratch="transpose.gy")
    glay = gyf.layout
    offs = tap_offsets(p.kh, p.kw, -p.dh, -p.dw, glay.pitch, origin=glay.lead + p.ph * glay.pitch + p.pw)
    correlate(gyf.buf, glay, offs, wpk, empty_bias(dtype), gx, tiling)
    return gx
