"""Weights turned output channels innermost, in blocks of a tile's lanes.

The register tiles load a vector of output channels' weights for one (input
channel, tap) at a time, so the weight (G, Kout_g, Cin_g, T) is packed as
(G, Kout_g/kt, Cin_g, T, kt).  ``pack_block`` packs one block's rows for a
range of input channels; the whole-weight packers (``engine.correlate``) and
the pixel tiles' per-task packing (``engine.pixels``, for layers whose
weights outweigh their pixels) both run it.  It reads either a C-contiguous
weight or grad_x's view of one (``swapped``: its output channels are the
weight's input channels).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .transforms import transpose_block

__all__ = ["Unpacked", "pack_block"]


class Unpacked(NamedTuple):
    """The weights of a correlation whose tasks pack their own blocks
    (``PixelTiling.packs_per_task``): ``src`` the C-contiguous weight,
    (G, Kout_g, Cin_g, T), or with ``swapped`` (grad_x's view) (G, Cin_g,
    Kout_g, T) with the correlation's output channels on its third axis."""

    src: np.ndarray
    swapped: bool

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(G, Kout_g, Cin_g, T) of the correlation."""
        g, a, b, t = self.src.shape
        return (g, b, a, t) if self.swapped else (g, a, b, t)


@njit(inline="always", cache=True)
def pack_block(src, swapped, kog, cig, t_n, g, k0, nk, c0, cn, kt, dst, d0):
    """dst[d0 + ((c - c0)*T + t)*kt + i] = w[g, k0 + i, c, t] for c0 <= c <
    c0 + cn, t < T and i < kt (zero for i >= nk), w the correlation's (G,
    kog, cig, T) weight read from the flat ``src``: C-contiguous, or (with
    ``swapped``) its (G, cig, kog, T) C-contiguous transpose.  Blocks of a
    vector's lanes squared transposed in registers (``transpose_block``
    writes whole vectors)."""
    vw = 64 // src.itemsize
    for i0 in range(0, kt, vw):
        rows = max(0, min(vw, nk - i0))
        if swapped:  # a block's lanes T apart, each input channel's taps contiguous
            for c in range(cn):
                s0 = ((g * cig + c0 + c) * kog + k0 + i0) * t_n
                for j0 in range(0, t_n, vw):
                    transpose_block(src, s0 + j0, t_n, rows, min(vw, t_n - j0), dst, d0 + (c * t_n + j0) * kt + i0, kt)
        else:  # a lane's (input channel, tap) pairs contiguous
            s0 = ((g * kog + k0 + i0) * cig + c0) * t_n
            for j0 in range(0, cn * t_n, vw):
                transpose_block(src, s0 + j0, cig * t_n, rows, min(vw, cn * t_n - j0), dst, d0 + j0 * kt + i0, kt)
