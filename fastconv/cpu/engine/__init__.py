"""The CPU engine: register-tile micro-kernels over prepared buffers.

The algorithms (``fastconv.cpu.conv_direct``, ``conv_direct_bi``,
``conv_im2col``) build a prepared buffer of some ``fastconv.cpu.layout.Layout``
and call the engine with the tilings their plan chose; the engine never
decides anything.

* ``prepare``: copies NCHW arrays into prepared buffers.
* ``correlate``: forward / grad_x / im2col GEMM correlations.
* ``pixels``: the forward correlation with output channels in the lanes, and
  grad_x by taps on the same tiles.
* ``grad_weight``: grad_weight dot products.
* ``simd``: the 512-bit register tiles, as LLVM IR.
"""

from .correlate import correlate, pack_weights
from .grad_weight import grad_weight_contiguous, grad_weight_per_image, grad_weight_rows
from .pixels import correlate_pixels, grad_weight_pixels, grad_x_taps
from .prepare import Prepared, prepare_batch_inner, prepare_standard

__all__ = [
    "Prepared",
    "correlate",
    "correlate_pixels",
    "grad_weight_contiguous",
    "grad_weight_per_image",
    "grad_weight_pixels",
    "grad_weight_rows",
    "grad_x_taps",
    "pack_weights",
    "prepare_batch_inner",
    "prepare_standard",
]
