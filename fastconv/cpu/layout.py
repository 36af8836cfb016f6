"""Geometry of the CPU engine's prepared buffers (pure Python, no Numba).

Every CPU convolution computes with the same register-tile micro-kernels
(``fastconv.cpu.engine``), which read "a prepared buffer in which every kernel
tap is a constant shift of one flat index Q".  A ``Layout`` is the small
descriptor of such a buffer: where channel c starts (``lead + c*cstride``),
the row pitch and plane size that turn (n, oh, ow) into Q, and the total size
including the zeroed tail the rounded-up tiles may read.  Three kinds exist:

* ``standard``: for strides (sh, sw) a zero-padded plane is split into sh*sw
  phase planes of Hq x Wq (phase (a, b) holds padded pixels (a + sh*i,
  b + sw*j)), each stored in ``rows`` >= Hq rows of pitch Wq.  Channel-major:
  for channel c and phase ph the N images' planes are consecutive, so
  ``Q = n*plane + oh*pitch + ow``.  "Compact" (stride 1, forward only):
  pitch W + max(left, right), H + max(top, bottom) rows, so consecutive rows
  (images) share their zero columns (rows) and the last image's taps read on
  past its plane into zeros the channel stride reserves.  Q that are not
  output pixels (columns OW..pitch-1, rows OH..rows-1) are "garbage":
  computed over, never stored.
* ``batch-inner``: channel c is a (Hp, Wp, N) block, the batch innermost:
  ``Q = (oh*Wp + ow)*N + n``; only the padding columns are garbage.
* ``column``: the im2col matrix, row c*T + t for input channel c's tap t,
  rows ``ld`` apart; no garbage Q at all.

This module is the one place that rounds channel strides and row lengths
(``odd_lines``) and computes tap offsets (``tap_offsets``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CACHE_LINE",
    "OVERRUN",
    "PIXEL_TILE",
    "TILE_SHAPES",
    "CorrTiling",
    "GradWeightTiling",
    "Layout",
    "PixelTiling",
    "TapTiling",
    "batch_inner_layout",
    "column_layout",
    "column_ld",
    "grad_output_layout",
    "nchw_layout",
    "mirrored_lead",
    "odd_lines",
    "phase_geometry",
    "pointwise_in_place",
    "same_buffer",
    "standard_layout",
    "tap_offsets",
    "taps_tile_extent",
]

CACHE_LINE = 64  # bytes
# Elements a register tile may read past a buffer's last Q: one 8 x 3-vector or
# 4 x 4-vector tile row of float32 is at most 64 elements wide.
OVERRUN = 64
# The register tiles of ``fastconv.cpu.engine.simd``, keyed by their output
# channels: (output channels, 512-bit vectors of Q per channel).
TILE_SHAPES = {8: (8, 3), 4: (4, 4)}
# The pixel tile of ``fastconv.cpu.engine.simd``: (output pixels, 512-bit
# vectors of output channels).
PIXEL_TILE = (6, 4)


@dataclass(frozen=True)
class Layout:
    """A prepared buffer's geometry (all in elements).

    ``kind``: "standard", "batch-inner", "column" or "nchw" (an unpadded
    array read in place by the pixel tiles: ``plane`` is then the distance of
    two images, C*H*W, and ``cstride`` of two channels, H*W).  Channel c starts at
    ``lead + c*cstride``; ``pitch`` is the Q distance of two output rows,
    ``plane`` of two images (standard), ``step`` of two neighbouring columns
    (1, or N in the batch-inner layout); ``size`` includes the zeroed tail.
    Standard layouts also carry the phase planes' shape (``hq`` rows used,
    ``rows`` stored), ``phase_stride`` (N*plane) and the copy's padding
    origin (``top``, ``left``) and strides (``sh``, ``sw``)."""

    kind: str
    n: int
    c: int
    pitch: int
    plane: int
    cstride: int
    lead: int
    size: int
    step: int = 1
    rows: int = 0
    hq: int = 0
    phase_stride: int = 0
    top: int = 0
    left: int = 0
    sh: int = 1
    sw: int = 1


def odd_lines(elements: int, itemsize: int) -> int:
    """``elements`` rounded up to a whole and *odd* number of cache lines.

    Used for channel strides and column-matrix rows: the rows a register tile
    walks through then do not all map to the same few L1 sets (a power-of-two
    stride would, and thrash L1)."""
    line = CACHE_LINE // itemsize
    lines = -(-elements // line)
    return (lines + 1 - lines % 2) * line


def phase_geometry(h: int, w: int, top: int, left: int, bottom: int, right: int, sh: int, sw: int) -> tuple[int, int]:
    """(Hq, Wq): the size of each of the sh*sw phase planes of a plane padded by
    (top, bottom) x (left, right)."""
    hp, wp = h + top + bottom, w + left + right
    return -(-hp // sh), -(-wp // sw)


def standard_layout(
    shape: tuple[int, int, int, int],
    pads: tuple[int, int, int, int],
    itemsize: int,
    *,
    strides: tuple[int, int] = (1, 1),
    rows_min: int = 0,
    pitch_min: int = 0,
    compact: bool = False,
    lead: int = 0,
) -> Layout:
    """The standard layout of an (N, C, H, W) array padded by ``pads`` = (top,
    left, bottom, right); ``rows_min``/``pitch_min`` enlarge the phase planes
    (an output larger than the padded input's phase, or another buffer's
    geometry to match), ``lead`` zeros before channel 0 (for reads at
    negative tap offsets)."""
    n, c, h, w = shape
    top, left, bottom, right = pads
    sh, sw = strides
    hq, wq = phase_geometry(h, w, top, left, bottom, right, sh, sw)
    reach = 0
    if compact and sh == 1 and sw == 1:
        # the right padding of a row is the left padding of the next one, so
        # a gap of max(left, right) zeros suffices; the last image's taps then
        # reach past its plane, by ``reach``
        hp, wp = hq, wq
        hq, wq = h + max(top, bottom), w + max(left, right)
        reach = (hp - 1) * max(wq, pitch_min) + wp
    pitch = max(wq, pitch_min)
    rows = max(hq, rows_min)
    plane = rows * pitch
    reach = max(0, reach - plane)
    cstride = odd_lines(sh * sw * n * plane + reach, itemsize)
    # tail: reads of rounded-up blocks past the last plane stay inside zeros
    size = lead + c * cstride + plane + reach + OVERRUN
    return Layout("standard", n, c, pitch, plane, cstride, lead, size, 1, rows, hq, n * plane, top, left, sh, sw)


def nchw_layout(shape: tuple[int, int, int, int]) -> Layout:
    """An (N, C, H, W) C-contiguous array itself as the pixel tiles' buffer
    (no padding to add, so no copy)."""
    n, c, h, w = shape
    return Layout("nchw", n, c, w, c * h * w, h * w, 0, n * c * h * w, 1, h, h)


def batch_inner_layout(
    shape: tuple[int, int, int, int], hp: int, wp: int, itemsize: int, *, top: int = 0, left: int = 0, lead: int = 0
) -> Layout:
    """The batch-inner layout of an (N, C, H, W) array in (hp, wp) planes, its
    pixel (i, j) at padded position (i + top, j + left)."""
    n, c = shape[0], shape[1]
    pitch = wp * n
    plane = hp * pitch
    cstride = odd_lines(plane, itemsize)
    return Layout(
        "batch-inner", n, c, pitch, plane, cstride, lead, lead + c * cstride + OVERRUN, n, hp, hp, 0, top, left
    )


def column_layout(n: int, rows: int, ntap: int, ld: int, oh: int, ow: int) -> Layout:
    """The column matrix of n images as a prepared buffer: ``rows`` = C*T rows
    of length ``ld``, input channel c's taps from row c*T on (channel stride
    T*ld), Q = i*OH*OW + oh*OW + ow."""
    return Layout("column", n, rows // ntap, ow, oh * ow, ntap * ld, 0, rows * ld)


def same_buffer(a: Layout, b: Layout) -> bool:
    """True when two layouts describe the same buffer contents: the forward's
    compact layout equals the backward's plain padded one when no row or
    column is shared (the rows it leaves out of ``hq`` are zeros either way)."""
    return (a.kind, a.n, a.c, a.pitch, a.plane, a.cstride, a.lead, a.size, a.rows, a.top, a.left, a.sh, a.sw) == (
        b.kind,
        b.n,
        b.c,
        b.pitch,
        b.plane,
        b.cstride,
        b.lead,
        b.size,
        b.rows,
        b.top,
        b.left,
        b.sh,
        b.sw,
    )


def column_ld(q: int, itemsize: int) -> int:
    """Row length of a column matrix with q used columns: room for the tiles'
    overrun, rounded by ``odd_lines``."""
    return odd_lines(q + OVERRUN, itemsize)


def tap_offsets(
    kh: int,
    kw: int,
    dh: int,
    dw: int,
    pitch: int,
    *,
    step: int = 1,
    strides: tuple[int, int] = (1, 1),
    phase_stride: int = 0,
    origin: int = 0,
) -> np.ndarray:
    """Offset of kernel tap (r, s) (row-major order) from a channel's start:
    ``origin + (a*sw + b)*phase_stride + i*pitch + j*step`` where (i, a) =
    divmod(r*dh, sh) and (j, b) = divmod(s*dw, sw) (row shift i inside phase
    row a).  A correlation with mirrored taps (a transposed convolution at
    stride 1) passes -dh, -dw and the origin of tap (0, 0); a column matrix
    passes pitch = KW*ld, step = ld.  Read-only and cached: every call of a
    layer asks for the same offsets."""
    return _tap_offsets(
        int(kh),
        int(kw),
        int(dh),
        int(dw),
        int(pitch),
        int(step),
        (int(strides[0]), int(strides[1])),
        int(phase_stride),
        int(origin),
    )


@functools.lru_cache(maxsize=256)
def _tap_offsets(
    kh: int, kw: int, dh: int, dw: int, pitch: int, step: int, strides: tuple[int, int], phase_stride: int, origin: int
) -> np.ndarray:
    sh, sw = strides
    offs = np.empty((kh * kw,), np.int64)
    for r in range(kh):
        i, a = divmod(r * dh, sh)
        for s in range(kw):
            j, b = divmod(s * dw, sw)
            offs[r * kw + s] = origin + (a * sw + b) * phase_stride + i * pitch + j * step
    offs.flags.writeable = False
    return offs


@dataclass(frozen=True)
class CorrTiling:
    """How the engine runs one correlation over a prepared buffer.

    ``channels`` x ``vectors``: the register tile (output channels x 512-bit
    vectors of Q); ``channels == 1`` is the one-channel loop LLVM vectorises
    (groups with fewer than 4 output channels, weights packed by 4).
    ``block``: Q per parallel task; ``channel_block``: input channels per pass
    of the tiles (their inputs and weights stay in L1); ``image_tiles`` > 0:
    each image of a block gets that many tiles from its first Q on, covering
    its output rows only (0: tiles cover the block contiguously)."""

    channels: int
    vectors: int
    block: int
    channel_block: int
    image_tiles: int = 0

    @property
    def pack(self) -> int:
        """Output channels per block of the packed weights."""
        return max(4, self.channels)

    def describe(self) -> str:
        tile = "1-channel vector loop" if self.channels == 1 else f"{self.channels}×{self.vectors} register tile"
        n = self.image_tiles
        return tile + (f" · {n} tile{'s' if n > 1 else ''} per image" if n else "")


@dataclass(frozen=True)
class PixelTiling:
    """How the engine runs a correlation with the output channels in the
    vector lanes (``fastconv.cpu.engine.pixels``): tiles of ``pixels`` output
    pixels x ``vectors`` 512-bit vectors of output channels (``channels`` per
    tile: the packed weights' block), ``block`` pixels per parallel task,
    ``channel_block`` input channels per pass of the tiles.
    ``packs_per_task``: each task packs its block's weights for each pass
    into a buffer that stays in L1, instead of the whole weight being packed
    before the correlation (layers whose weights outweigh their pixels: the
    weight is then read once and no packed copy is written)."""

    pixels: int
    vectors: int
    channels: int
    block: int
    channel_block: int
    packs_per_task: bool = False

    def __post_init__(self) -> None:
        # a task's tiles read pixel offsets from its first pixel on, padded to whole tiles only at the end
        if self.block % self.pixels:
            raise ValueError(f"a pixel block must be whole tiles of {self.pixels} pixels, got {self.block}")

    @property
    def pack(self) -> int:
        """Output channels per block of the packed weights."""
        return self.channels

    def describe(self) -> str:
        packing = " · weights packed per task" if self.packs_per_task else ""
        return f"{self.pixels}×{self.channels} pixel tile (output channels in the vector lanes){packing}"


@dataclass(frozen=True)
class TapTiling:
    """How the engine runs grad_x by taps (``fastconv.cpu.engine.pixels.grad_x_taps``):
    for each grad_output pixel, its (tap, input channel) contributions on the
    pixel tiles -- ``lanes`` per pass, ``channels`` input channels per tap,
    taps side by side, ``images`` images per task -- added into a
    channels-innermost tile of grad_x."""

    channels: int
    lanes: int
    images: int = 1

    def describe(self) -> str:
        per_task = f", {self.images} images per task" if self.images > 1 else ""
        return f"by taps ({self.channels} input channels per tap, {self.lanes}-lane pixel tiles{per_task})"


def taps_tile_extent(
    x_hw: tuple[int, int],
    y_hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """(rows, cols) of grad_x-by-taps' padded grad_x tile: from the top-left
    padding on, every position a (grad_output pixel, tap) pair reaches and
    every grad_x pixel."""
    return (
        max(x_hw[0] + padding[0], (y_hw[0] - 1) * strides[0] + (kernel[0] - 1) * dilation[0] + 1),
        max(x_hw[1] + padding[1], (y_hw[1] - 1) * strides[1] + (kernel[1] - 1) * dilation[1] + 1),
    )


@dataclass(frozen=True)
class GradWeightTiling:
    """How the engine runs grad_weight's dot products.

    ``mode``: "contiguous" (all Q of the layout, in calls of ``segment`` Q),
    "per-image" (each image's first ``span`` Q, images grouped into calls of
    about ``segment`` Q) or "rows" (exact output rows of an unpadded
    grad_output, with its per-channel sums) or "pixels" (the pixel tiles of
    ``engine.pixels.grad_weight_pixels``: ``segment`` output pixels per chunk,
    ``channel_block`` (input channel, tap) pairs per task; stride 1).
    Otherwise ``channel_block`` > 0: parallel
    over blocks of that many output channels, each task owning its rows of the
    result; 0: parallel over at most ``threads`` chunks of Q, each with a
    private float64 partial result summed afterwards."""

    mode: str
    segment: int
    threads: int
    span: int = 0
    channel_block: int = 0

    def describe(self) -> str:
        walk = {
            "contiguous": "contiguous segments",
            "per-image": "per-image segments",
            "rows": "exact output rows",
            "pixels": "exact output pixels on the pixel tiles",
        }[self.mode]
        if self.mode == "pixels":
            return walk
        return walk + (f", parallel over blocks of {self.channel_block} output channels" if self.channel_block else "")


def pointwise_in_place(kh: int, kw: int, sh: int, sw: int, pads: tuple[int, int, int, int]) -> bool:
    """A 1×1, stride-1, unpadded convolution: grad_output has x's planes, so
    its grad_x on the pixel tiles is a forward correlation that reads
    grad_output in place (NCHW) with the transposed weights."""
    return (kh, kw, sh, sw) == (1, 1, 1, 1) and pads == (0, 0, 0, 0)


def mirrored_lead(kh: int, kw: int, dh: int, dw: int, ph: int, pw: int, pitch: int, step: int = 1) -> int:
    """Zeros needed before a stride-1 grad_output buffer's first element for a
    correlation with mirrored taps (grad_x): minus its most negative tap offset."""
    return max(0, ((kh - 1) * dh - ph) * pitch + ((kw - 1) * dw - pw) * step)


def grad_output_layout(x_layout: Layout, y_shape: tuple[int, int, int, int], itemsize: int, lead: int) -> Layout:
    """grad_output (N, K, OH, OW) in the geometry of x's prepared layout (same
    pitch and plane, zeros at x's garbage Q), ``lead`` zeros before it (a
    standard layout rounds it up to 16 elements, keeping rows on 64-byte
    boundaries for aligned loads)."""
    if x_layout.kind == "batch-inner":
        return batch_inner_layout(y_shape, x_layout.rows, x_layout.pitch // x_layout.n, itemsize, lead=lead)
    _, _, oh, ow = y_shape
    return standard_layout(
        y_shape,
        (0, 0, x_layout.rows - oh, x_layout.pitch - ow),
        itemsize,
        rows_min=x_layout.rows,
        pitch_min=x_layout.pitch,
        lead=-(-lead // 16) * 16,
    )
