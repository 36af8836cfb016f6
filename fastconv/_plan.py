"""Convolution plans: the one place where algorithm, layout and tiling are chosen.

``build_plan`` turns a validated ``Conv2dParams``, the compute dtype, the
backend, the thread count, ``need_input_grad`` and the algorithm request into a
frozen ``ConvPlan``: which algorithm runs the forward and which the backward,
in which prepared-buffer layout, with which register tiles, blocks and
grad_weight segments, how much workspace that takes, and a short reason for
each choice.  The backends execute a plan and decide nothing themselves
(the only data-dependent steps, documented where they happen, are the exact
fallbacks for non-finite values).  ``fastconv.plan_conv2d`` is the public
front end; ``fastconv.conv2d(..., algorithm="auto")`` executes exactly the plan
it returns.

Extending: a new CPU algorithm adds its name to ``_params.CONV_ALGORITHMS``,
a ``_cpu_<name>`` planner here (layouts, tilings, workspace, reasons) and a
branch in ``_cpu_pass``; a backend-specific section is a frozen dataclass
field of ``ConvPlan`` defaulting to None (like ``cpu``), filled by that
backend's planner (``_cuda_plan`` fills only the common fields today).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

import numpy as np

from ._params import Conv2dParams
from .cpu.layout import (
    PIXEL_TILE,
    TILE_SHAPES,
    CorrTiling,
    GradWeightTiling,
    Layout,
    PixelTiling,
    TapTiling,
    batch_inner_layout,
    column_layout,
    column_ld,
    grad_output_layout,
    mirrored_lead,
    nchw_layout,
    pointwise_in_place,
    same_buffer,
    standard_layout,
    taps_tile_extent,
)

__all__ = [
    "BLOCK",
    "CHANNEL_BLOCK",
    "CHANNEL_BLOCK_BATCH_INNER",
    "COLUMN_BLOCK_BYTES",
    "COLUMN_WORKSPACE_BYTES",
    "FUSED_POOL_FAN_IN",
    "GRAD_WEIGHT_CHANNEL_BLOCK",
    "IN_PLACE_MIN",
    "LAYOUTS",
    "PARTIALS_MAX_BYTES",
    "PIXEL_BLOCK",
    "PACK_PER_TASK_BYTES",
    "PACK_PER_TASK_PIXELS",
    "PIXEL_BLOCK_POINTWISE",
    "PIXEL_CHANNEL_BLOCK",
    "PIXEL_WEIGHT_BYTES",
    "STREAM_CHANNELS",
    "STREAM_GRAD_X_CHANNELS",
    "STREAM_PLANE",
    "PIXEL_GW_CHUNK",
    "PIXEL_GW_PAIRS",
    "PIXEL_MIN_DEPTH",
    "SEGMENT",
    "TAPS_MAX_PIXELS",
    "TAPS_MIN_DEPTH",
    "TAPS_MIN_EXTRA",
    "TAPS_MIN_FILL",
    "WINOGRAD_AUTO_BACKWARD_CHANNELS",
    "WINOGRAD_AUTO_CHANNELS",
    "WINOGRAD_AUTO_COVER",
    "WINOGRAD_AUTO_FEW_TILES",
    "WINOGRAD_AUTO_FEW_TILES_BYTES",
    "WINOGRAD_AUTO_FEW_TILES_CHANNELS",
    "WINOGRAD_AUTO_TILES",
    "WINOGRAD_DILATED_CHANNELS",
    "ConvPlan",
    "ConvPoolPlan",
    "CpuConvPlan",
    "SubPixelPhase",
    "WinogradPlan",
    "build_plan",
    "check_layout",
    "check_winograd",
    "dilated_winograd_geometry",
    "chunk_images",
    "cpu_plan_for",
    "plan_conv_pool",
    "use_batch_inner",
    "space_to_batch_params",
    "winograd_geometry",
    "winograd_pays",
]

# Q elements per correlation task: a 4 x 1024 float32 accumulator is 16 KiB (L1).
BLOCK = 1024
# Input channels per pass of the register tiles over a task's block (standard
# layout): the tile's input rows and weights for 32 channels stay in L1.
CHANNEL_BLOCK = 32
# The same in the batch-inner layout: taps are whole pixels (N elements) apart,
# so a tile's loads for different taps do not share cache lines; 8 channels x
# 9 taps x 3 vectors stay in L1.
CHANNEL_BLOCK_BATCH_INNER = 8
# Q per grad_weight call: its 4 grad_output rows (16 KiB in float32) stay in L1.
SEGMENT = 1024
# Pixel tiles (output channels in the lanes): output pixels per task (a
# multiple of the tile's 6), the most input channels per pass, the bytes of
# a pass's packed weights (its input channels x taps x the tile's output
# channels) that keep them in L1 across the pass's tiles (32 KiB on the
# smallest L1 we run on, with room for the input and the accumulators), and
# the least reduction (input channels x taps) for the tiles.
PIXEL_BLOCK = 96
PIXEL_CHANNEL_BLOCK = 64
PIXEL_WEIGHT_BYTES = 24 * 2**10
PIXEL_MIN_DEPTH = 16
# Output pixels per task of a 1×1 kernel's correlation, whose input rows have
# no taps to reuse them: longer runs of each row, which the hardware
# prefetchers stream (benchmarks/results).
PIXEL_BLOCK_POINTWISE = 192
# Pixel tiles whose tasks pack their own weights (``PixelTiling.packs_per_task``):
# a weight of at least PACK_PER_TASK_BYTES with at least as many elements per
# input channel as the correlation has output pixels (batch-1 and small-plane
# layers, whose packed copy would cost a pass over memory as large as the
# rest), with at most PACK_PER_TASK_PIXELS pixels per task (the accumulator
# stays in L2).
PACK_PER_TASK_BYTES = 2**20
PACK_PER_TASK_PIXELS = 1024
# A 1×1 forward over planes of at least STREAM_PLANE pixels with at most
# STREAM_CHANNELS input channels per group runs on the Q-lane tiles: they read
# each input row as one stream, where the pixel tiles read the group's rows,
# a plane apart, all at once, which the prefetchers follow worse once x is
# out of cache (benchmarks/results).  grad_x of such a layer likewise, from
# STREAM_GRAD_X_CHANNELS output channels (docs/pixel-tiles.md, "Stop 25").
STREAM_PLANE = 3136
STREAM_CHANNELS = 128
STREAM_GRAD_X_CHANNELS = 96
# grad_weight on the pixel tiles: output pixels per chunk (summed in float64
# after each) and (input channel, tap) pairs per task.
PIXEL_GW_CHUNK = 512
PIXEL_GW_PAIRS = 48
# grad_x by taps (grad_output's pixels x (tap, input channel) on the pixel
# tiles, added into a tile of grad_x): taken at stride 1 where grad_x has at
# least TAPS_MIN_EXTRA times grad_output's pixels (a full correlation would
# sum that many more products, the zeros around a small grad_output), its
# lanes are at least TAPS_MIN_FILL real (tap, channel) pairs, its sums (output
# channels per group) at least TAPS_MIN_DEPTH deep (shallower ones measured
# slower than the correlation), and an image's grad_output has at most
# TAPS_MAX_PIXELS pixels (a task's accumulator and grad_x tile stay in L2).
TAPS_MIN_EXTRA = 1.25
TAPS_MIN_FILL = 0.75
TAPS_MIN_DEPTH = 64
TAPS_MAX_PIXELS = 4096
# A float64 grad_weight at least this large is computed by blocks of output
# channels (each thread owns its rows) instead of per-thread partial results.
PARTIALS_MAX_BYTES = 256 * 1024
# Output channels per grad_weight task in that case (fewer when the threads
# would otherwise be left without a block).
GRAD_WEIGHT_CHANNEL_BLOCK = 64
# Column-matrix bytes a GEMM task's block of Q may span: the tiles of a task
# re-read its block once per output-channel block, so it should stay in L2.
COLUMN_BLOCK_BYTES = 256 * 1024
# im2col: column matrix + channel-major grad_output per chunk of images.
COLUMN_WORKSPACE_BYTES = 64 * 2**20
# im2col: output pixels per image from which grad_weight reads grad_output in
# place (one dot product per image row of OH*OW); shorter rows are slower
# than the channel-major copy.
IN_PLACE_MIN = 256


@dataclass(frozen=True)
class CpuConvPlan:
    """The CPU backend's part of a plan.

    ``forward``: the forward correlation's tiling.  ``grad_input``: the tiling
    of grad_x as a correlation (stride-1 direct, used when the weights are
    finite; im2col's column gradient), None where grad_x is a scatter (strided
    direct) or not wanted.  ``grad_weight``: how its dot products walk Q.
    ``forward_layout`` / ``backward_layout``: x's prepared buffer in each pass
    (im2col: one chunk's column matrix).  ``images_per_chunk``: im2col's
    chunks (N for direct).  ``grad_output_in_place``: im2col's grad_weight
    reads grad_output in place instead of a channel-major copy.
    ``reuse_prepared_input``: the backward can reuse the forward's prepared x
    (same x object, see ``fastconv.Conv2dOp``)."""

    forward: CorrTiling | PixelTiling
    grad_input: CorrTiling | PixelTiling | TapTiling | None
    grad_weight: GradWeightTiling
    forward_layout: Layout
    backward_layout: Layout
    images_per_chunk: int
    grad_output_in_place: bool
    reuse_prepared_input: bool
    forward_workspace_bytes: int
    backward_workspace_bytes: int
    # strided direct grad_x as stride-1 correlations on the sub-pixel grids
    # (used when the weights are finite; scatter otherwise); None: not planned
    grad_input_phases: tuple[SubPixelPhase, ...] | None = None
    winograd: WinogradPlan | None = None

    def grad_input_corr(self) -> CorrTiling | PixelTiling | None:
        """grad_x's tiling where grad_x runs as a correlation; None where it
        runs by taps, as a scatter or sub-pixel grids, or is not wanted."""
        return None if isinstance(self.grad_input, TapTiling) else self.grad_input

    def forward_corr(self) -> CorrTiling:
        """The forward's tiling where it can only be a Q-lane correlation
        (im2col's GEMM, Winograd's products): pixel tiles are direct's only."""
        if not isinstance(self.forward, CorrTiling):
            raise TypeError(f"expected a Q-lane correlation tiling, got {self.forward}")
        return self.forward


@dataclass(frozen=True)
class WinogradPlan:
    """Winograd F(m×m, 3×3) (``cpu/conv_winograd.py``): output tile ``m``,
    tiles per chunk (the transformed input and the GEMM output of a chunk
    bound the workspace), the direct plan (need_input_grad=False) that
    computes grad_weight and grad_bias, and for a dilated layer the plan of
    its sub-sampled grids."""

    m: int
    tiles_per_chunk: int
    grad_weight_plan: ConvPlan
    # a dilated layer: the plan of its undilated sub-problem (the dh·dw
    # sub-sampled grids as N·dh·dw images, ``space_to_batch_params``), which
    # runs in its place; None for an undilated layer
    space_to_batch: ConvPlan | None = None


@dataclass(frozen=True)
class SubPixelPhase:
    """One sub-pixel grid of a strided grad_x: grad_x rows ``row0::sh`` and
    columns ``col0::sw`` (``rows`` x ``cols`` of them) are a stride-1
    correlation of grad_output rows ``gy_row0 : gy_row0 + plan.params.h`` and
    columns ``gy_col0 : ...`` with the taps ``tap_r0::sh``, ``tap_s0::sw``
    mirrored (``plan``: that correlation's forward; None when no tap or no
    grad_output pixel reaches the grid: zeros)."""

    row0: int
    col0: int
    rows: int
    cols: int
    tap_r0: int
    tap_s0: int
    gy_row0: int
    gy_col0: int
    plan: ConvPlan | None


@dataclass(frozen=True)
class ConvPlan:
    """How one convolution runs: forward and backward algorithm and layout,
    and the backend's details (``cpu``; None on other backends).

    ``reasons``: (choice, why) pairs, read with ``reason(choice)``.  Built by
    ``fastconv.plan_conv2d``; printed, it reads like "direct · batch-inner
    layout · 8×3 register tile · workspace 1.2 MiB · because ..."."""

    params: Conv2dParams
    dtype: str
    backend: str
    threads: int
    need_input_grad: bool
    algorithm: str
    layout: str
    backward_algorithm: str
    backward_layout: str
    reasons: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    cpu: CpuConvPlan | None = field(default=None, repr=False)
    # the algorithms are the winners of a timing run (fastconv.set_benchmark)
    measured: bool = field(default=False, repr=False)

    def reason(self, choice: str) -> str:
        """Why ``choice`` ("algorithm", "layout", "tile", ...) was made."""
        for name, why in self.reasons:
            if name == choice:
                return why
        raise KeyError(f"no reason recorded for {choice!r}; recorded: {[n for n, _ in self.reasons]}")

    def cpu_part(self) -> CpuConvPlan:
        """The CPU section (a CPU backend's entry point asks for it)."""
        if self.cpu is None:
            raise ValueError(f"a {self.backend} plan has no CPU section")
        return self.cpu

    @property
    def workspace_bytes(self) -> int:
        """Scratch bytes of the larger pass (0 where the backend does not say)."""
        if self.cpu is None:
            return 0
        return max(self.cpu.forward_workspace_bytes, self.cpu.backward_workspace_bytes)

    def __repr__(self) -> str:
        if self.cpu is None:
            parts = [f"{self.backend}", self.algorithm, f"because {self.reason('algorithm')}"]
            if self.backward_algorithm != self.algorithm:
                parts.append(f"backward {self.backward_algorithm}")
            return "ConvPlan(" + " · ".join(parts) + ")"
        c = self.cpu
        fwd = [
            "measured: " * self.measured + self.algorithm,
            f"{self.layout} layout",
            c.forward.describe(),
            f"workspace {_mib(c.forward_workspace_bytes)}",
            f"because {self.reason('layout')}",
        ]
        bwd = [
            self.backward_algorithm,
            f"{self.backward_layout} layout",
            c.grad_weight.describe() + " for grad_weight",
            "grad_x "
            + (
                "skipped"
                if not self.need_input_grad
                else c.grad_input.describe()
                if c.grad_input
                else f"{len(c.grad_input_phases)} sub-pixel correlations"
                if c.grad_input_phases
                else "by scatter"
            ),
            f"workspace {_mib(c.backward_workspace_bytes)}",
        ]
        if c.reuse_prepared_input:
            bwd.append("reuses the forward's prepared x")
        return "ConvPlan(" + " · ".join(fwd) + "; backward: " + " · ".join(bwd) + ")"


def _mib(n: int) -> str:
    """Bytes as "1.2 MiB" / "36 KiB"."""
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{-(-n // 1024)} KiB"


LAYOUTS = {"direct": ("standard", "batch-inner"), "im2col": ("column",), "winograd": ("transformed",)}


def check_layout(layout: str | None, algorithm: str, p: Conv2dParams) -> None:
    """A requested CPU layout must belong to an explicitly requested algorithm."""
    if layout is None:
        return
    if algorithm not in LAYOUTS or layout not in LAYOUTS[algorithm]:
        raise ValueError(
            f"layout {layout!r} needs an explicit algorithm it belongs to "
            f"({', '.join(f'{a}: {ls}' for a, ls in LAYOUTS.items())}), got algorithm={algorithm!r}"
        )
    if layout == "batch-inner" and (p.sh, p.sw) != (1, 1):
        raise ValueError(f"the batch-inner layout needs stride 1, got stride {(p.sh, p.sw)}")


@functools.lru_cache(maxsize=1024)
def build_plan(
    p: Conv2dParams,
    dtype: np.dtype,
    backend: str,
    threads: int,
    need_input_grad: bool,
    algorithm: str,
    layout: str | None = None,
) -> ConvPlan:
    """The plan for validated parameters; ``algorithm`` is "auto" or a name of
    ``_params.CONV_ALGORITHMS``; ``layout`` (CPU) overrides the layout rule of
    an explicit algorithm (for comparing layouts; ``check_layout`` first).

    A pure function of its arguments, cached: planning costs tens of
    microseconds, as much as a whole small convolution."""
    if algorithm == "winograd":
        check_winograd(p, backend)
    if backend == "cuda":
        return _cuda_plan(p, np.dtype(dtype), need_input_grad, algorithm)
    return _cpu_plan(p, np.dtype(dtype), threads, need_input_grad, algorithm, layout)


# --------------------------------------------------------------------------- CUDA


def _cuda_plan(p: Conv2dParams, dtype: np.dtype, need_input_grad: bool, algorithm: str) -> ConvPlan:
    """CUDA rule: im2col (implicit GEMM) whenever the per-group GEMM has some
    depth (C/groups*R*S >= 16 and K/groups >= 8), else direct."""
    if algorithm != "auto":
        alg, why = algorithm, "requested"
    elif p.cg * p.kh * p.kw >= 16 and p.kg >= 8:
        alg = "im2col"
        why = f"auto: the per-group GEMM is deep enough (C/g*R*S = {p.cg * p.kh * p.kw} >= 16, K/g = {p.kg} >= 8)"
    else:
        alg, why = "direct", f"auto: a shallow per-group GEMM (C/g*R*S = {p.cg * p.kh * p.kw}, K/g = {p.kg})"
    return ConvPlan(p, dtype.name, "cuda", 0, need_input_grad, alg, "nchw", alg, "nchw", (("algorithm", why),))


# --------------------------------------------------------------------------- CPU: algorithm


def _cpu_algorithms(p: Conv2dParams, need_input_grad: bool, algorithm: str, itemsize: int) -> tuple[str, str, str]:
    """(forward algorithm, backward algorithm, reason).

    auto: the direct kernels (the direct forward reads x once; im2col's runs on
    the same register tiles but writes and reads a KH*KW times larger buffer),
    except for a backward that needs no grad_x when the column matrix is no
    larger than grad_output (C/groups*R*S <= K/groups, e.g. a first layer on
    1-channel images): im2col then reads grad_output in place, while direct
    copies it into its padded layout; and except for a strided backward, which
    im2col runs (benchmarks in docs/architecture.md and docs/winograd.md)
    unless direct's grad_weight runs on the pixel tiles and every sub-pixel
    grid of its grad_x has taps (kernel >= stride)."""
    if algorithm != "auto":
        return algorithm, algorithm, "requested"
    dilated = (
        dilated_winograd_geometry(p)
        and min(p.cg, p.kg) >= WINOGRAD_DILATED_CHANNELS
        and winograd_pays(space_to_batch_params(p), itemsize)
    )
    if winograd_pays(p, itemsize) or dilated:
        deep = not dilated and min(p.cg, p.kg) >= WINOGRAD_AUTO_BACKWARD_CHANNELS
        return (
            "winograd",
            "winograd" if deep else "direct",
            (
                f"auto: Winograd F(4×4, 3×3): a 3×3 stride-1 layer with at least {WINOGRAD_AUTO_CHANNELS} "
                f"input and output channels per group and {WINOGRAD_AUTO_TILES} tiles ({WINOGRAD_AUTO_FEW_TILES} "
                f"from {WINOGRAD_AUTO_FEW_TILES_CHANNELS} channels, transformed weights up to "
                f"{_mib(WINOGRAD_AUTO_FEW_TILES_BYTES)}) covering at most "
                f"{WINOGRAD_AUTO_COVER}× the output planes, where its 4× fewer products measured faster "
                f"than direct; its float32 error within 1e-5 (docs/winograd.md); "
                + (
                    f"dilated: on its sub-sampled grids (space to batch), where that rule holds, from "
                    f"{WINOGRAD_DILATED_CHANNELS} channels per group; "
                    if dilated
                    else ""
                )
                + (
                    "backward Winograd too (grad_x by Winograd, grad_weight direct)"
                    if deep
                    else "backward direct: on the sub-sampled grids Winograd's backward measured no faster "
                    "(its extra passes over x, grad_output and grad_x)"
                    if dilated
                    else f"backward direct: below {WINOGRAD_AUTO_BACKWARD_CHANNELS} channels per group "
                    "Winograd's grad_x measured no faster"
                )
            ),
        )
    crs = p.cg * p.kh * p.kw
    if not need_input_grad and crs <= p.kg:
        return (
            "direct",
            "im2col",
            (
                f"auto: direct forward; no grad_x and the column matrix ({crs} rows per "
                f"image pixel) is no larger than grad_output ({p.kg}), so im2col's backward "
                f"reads grad_output in place"
            ),
        )
    strided = (p.sh, p.sw) != (1, 1)
    if strided and p.kh >= p.sh and p.kw >= p.sw and _forward_pixels(p, itemsize, 1) is not None:
        return (
            "direct",
            "direct",
            (
                "auto: direct; a strided backward whose grad_weight runs on the pixel tiles and whose "
                "sub-pixel grids all have taps measured faster than im2col's (benchmarks/results)"
            ),
        )
    if strided:  # with or without grad_x, so grad_weight is the same either way
        return (
            "direct",
            "im2col",
            (
                "auto: direct forward; strided backward by im2col: with 2 threads its column "
                "gradient measured faster than direct's sub-pixel correlations (and direct's "
                "strided and dilated grad_x is a scatter), docs/winograd.md"
            ),
        )
    return "direct", "direct", "auto: direct reads x once; im2col would write and read a KH*KW times larger buffer"


def use_batch_inner(p: Conv2dParams) -> bool:
    """The direct algorithm's batch-inner layout: stride 1, a batch of >= 8
    and at most 3/4 of the standard layout's (H + max pad) x (W + max pad) Q
    per image (the transposing copies cost more than fewer saved Q)."""
    if p.sh != 1 or p.sw != 1 or p.n < 8:
        return False
    return _bi_q(p) <= 0.75 * _std_q(p)


def _bi_q(p: Conv2dParams) -> int:
    return (p.oh - 1) * (p.w + p.pw + p.pw_end) + p.ow


def _std_q(p: Conv2dParams) -> int:
    return (p.h + max(p.ph, p.ph_end)) * (p.w + max(p.pw, p.pw_end))


def _cpu_plan(
    p: Conv2dParams, dtype: np.dtype, threads: int, need_input_grad: bool, algorithm: str, layout: str | None
) -> ConvPlan:
    return cpu_plan_for(
        p, dtype, threads, need_input_grad, _cpu_algorithms(p, need_input_grad, algorithm, dtype.itemsize), layout
    )


def cpu_plan_for(
    p: Conv2dParams,
    dtype: np.dtype,
    threads: int,
    need_input_grad: bool,
    algorithms: tuple[str, str, str],
    layout: str | None = None,
) -> ConvPlan:
    """The CPU plan for given (forward algorithm, backward algorithm, reason)
    (``_cpu_algorithms``' rule, or the winners of ``fastconv.set_benchmark``)."""
    fwd_alg, bwd_alg, why_alg = algorithms
    fwd = _cpu_pass(fwd_alg, p, dtype, threads, need_input_grad, layout)
    bwd = fwd if bwd_alg == fwd_alg else _cpu_pass(bwd_alg, p, dtype, threads, need_input_grad, layout)
    if fwd_alg == "direct" and layout is None and fwd.layout_kind == "batch-inner" and _reads_in_place(p, dtype):
        # the pixel tiles compute no padding Q in either layout, and an unpadded
        # x needs no copy in the standard one: forward standard; the backward too
        # where grad_x (if wanted) runs by taps, which reads grad_output in place
        std = _cpu_standard(p, dtype, threads, need_input_grad, False)
        in_place = std.grad_weight.mode == "pixels" and (not need_input_grad or isinstance(std.grad_input, TapTiling))
        if bwd_alg == "direct" and in_place:
            fwd = bwd = replace(
                std,
                why_layout="standard: on the pixel tiles an unpadded x is read in place (NCHW) by the forward and "
                "by grad_weight, and grad_x "
                + ("by taps reads grad_output in place" if need_input_grad else "is not wanted")
                + ": no transposing copy",
            )
        else:
            fwd = replace(
                std,
                why_layout="standard for the forward: on the pixel tiles an unpadded x is read in place (NCHW), "
                "no transposing copy; the backward keeps the batch-inner layout",
            )
    reuse = (
        fwd_alg == bwd_alg == "direct"
        and (p.sh == p.sw == 1 or bwd.grad_weight.mode == "pixels")
        and same_buffer(fwd.forward_layout, bwd.backward_layout)
    )
    cpu = CpuConvPlan(
        fwd.forward,
        bwd.grad_input,
        bwd.grad_weight,
        fwd.forward_layout,
        bwd.backward_layout,
        bwd.images_per_chunk,
        bwd.grad_output_in_place,
        reuse,
        fwd.forward_workspace_bytes,
        bwd.backward_workspace_bytes,
        bwd.grad_input_phases,
        fwd.winograd or bwd.winograd,
    )
    why_reuse = (
        "the forward's prepared x is the backward's layout"
        if reuse
        else "the backward prepares x in another layout"
        if fwd_alg == bwd_alg == "direct"
        else "forward and backward run different algorithms"
    )
    reasons = (
        ("algorithm", why_alg),
        ("layout", fwd.why_layout),
        ("backward_layout", bwd.why_layout),
        ("tile", fwd.why_tile),
        ("grad_weight", bwd.why_grad_weight),
        ("grad_input", bwd.why_grad_input),
        ("reuse_prepared_input", why_reuse),
    )
    return ConvPlan(
        p, dtype.name, "cpu", threads, need_input_grad, fwd_alg, fwd.layout_kind, bwd_alg, bwd.layout_kind, reasons, cpu
    )


@dataclass(frozen=True)
class _Pass:
    """One algorithm's choices for both passes (the plan takes the forward's
    from the forward algorithm and the backward's from the backward one)."""

    layout_kind: str
    forward: CorrTiling | PixelTiling
    grad_input: CorrTiling | PixelTiling | TapTiling | None
    grad_weight: GradWeightTiling
    forward_layout: Layout
    backward_layout: Layout
    images_per_chunk: int
    grad_output_in_place: bool
    forward_workspace_bytes: int
    backward_workspace_bytes: int
    why_layout: str
    why_tile: str
    why_grad_weight: str
    why_grad_input: str
    grad_input_phases: tuple[SubPixelPhase, ...] | None = None
    winograd: WinogradPlan | None = None


def _cpu_pass(
    algorithm: str, p: Conv2dParams, dtype: np.dtype, threads: int, need_input_grad: bool, layout: str | None
) -> _Pass:
    if algorithm == "im2col":
        return _cpu_im2col(p, dtype, threads, need_input_grad)
    if algorithm == "winograd":
        return _cpu_winograd(p, dtype, threads, need_input_grad)
    if layout == "batch-inner" or (layout is None and use_batch_inner(p)):
        return _cpu_batch_inner(p, dtype, threads, need_input_grad, layout is not None)
    return _cpu_standard(p, dtype, threads, need_input_grad, layout is not None)


# --------------------------------------------------------------------------- CPU: tilings


def _tile(kout_g: int) -> tuple[int, int, str]:
    """(output channels per tile, 512-bit vectors per tile row, reason)."""
    if kout_g >= 8:
        return 8, TILE_SHAPES[8][1], f"{kout_g} output channels per group >= 8: the 8×3 tile (24 accumulators)"
    if kout_g >= 4:
        return 4, TILE_SHAPES[4][1], f"{kout_g} output channels per group: the 4×4 tile"
    return 1, 0, f"{kout_g} output channels per group < 4: a 1-channel vector loop wastes no lanes"


def _block(qn: int, tasks_per_block: int, threads: int) -> int:
    """Q per correlation task: BLOCK, smaller if that leaves threads idle."""
    blk = BLOCK
    want = 4 * threads
    while blk > 64 and tasks_per_block * -(-qn // blk) < want:
        blk //= 2
    return blk


def _even(total: int, most: int, unit: int) -> int:
    """At most ``most`` per block, ``total`` spread evenly over as few blocks
    as that allows, rounded up to a multiple of ``unit``.  The tasks are split
    between the threads in equal counts, so a short last block would leave one
    thread with most of the work (e.g. 1,276 Q as 1,024 + 252)."""
    per_block = -(-total // -(-total // most))
    return min(most, -(-per_block // unit) * unit)


def _corr_standard(
    kout_g: int, groups: int, out_shape: tuple[int, int, int], lay: Layout, itemsize: int, threads: int
) -> CorrTiling:
    """Tiling of a correlation over a standard layout into out (N, OH, OW):
    per-image tiles (skipping the padding rows between images) when that
    makes fewer tiles than covering the images' Q contiguously."""
    n, oh, ow = out_shape
    kt, nv, _ = _tile(kout_g)
    pack = max(4, kt)
    qn = (n - 1) * lay.plane + (oh - 1) * lay.pitch + ow
    blk = _block(qn, groups * -(-kout_g // pack), threads)
    tw = TILE_SHAPES[pack][1] * 64 // itemsize
    span = (oh - 1) * lay.pitch + ow  # an image's Q from its first output pixel to its last
    if kout_g >= 4 and n > 1 and lay.plane <= blk:
        per_img = -(-span // tw)
        nimg = blk // lay.plane
        if nimg * per_img < -(-(nimg * lay.plane) // tw):
            return CorrTiling(kt, nv, _even(n, nimg, 1) * lay.plane, CHANNEL_BLOCK, per_img)
    return CorrTiling(kt, nv, _even(qn, blk, 16), CHANNEL_BLOCK)


def _corr_batch_inner(
    kout_g: int, groups: int, out_shape: tuple[int, int, int], lay: Layout, threads: int
) -> CorrTiling:
    n, oh, ow = out_shape
    kt, nv, _ = _tile(kout_g)
    qn = (oh - 1) * lay.pitch + ow * n
    blk = _block(qn, groups * -(-kout_g // max(4, kt)), threads)
    return CorrTiling(kt, nv, _even(qn, blk, 16), CHANNEL_BLOCK_BATCH_INNER)


def _corr_column(kout_g: int, rows_read: int, itemsize: int) -> CorrTiling:
    """Tiling of a GEMM over a column matrix, ``rows_read`` rows per task:
    blocks whose column bytes stay in L2, a multiple of 48 in [96, 1024]."""
    kt, nv, _ = _tile(kout_g)
    blk = max(96, min(1024, COLUMN_BLOCK_BYTES // (rows_read * itemsize) // 48 * 48))
    return CorrTiling(kt, nv, blk, CHANNEL_BLOCK)


def _pixel_tiling(
    kout_g: int,
    depth: int,
    pixels: int,
    groups: int,
    itemsize: int,
    threads: int,
    narrow: bool = False,
    taps: int = 1,
) -> PixelTiling | None:
    """The pixel tiles for a correlation of ``depth`` products per output into
    ``pixels`` output pixels of ``kout_g`` channels per group, or None.  They
    waste no lanes on padding Q and need no polyphase copy at a stride, but
    pad a group's output channels to whole tiles and broadcast one input
    element per pixel and tap, so they are taken only when at least 3/4 of
    their lanes hold real channels and the reduction is deep enough to hide
    the accumulator traffic.  The tile is 4 vectors of output channels wide,
    or (``narrow``) 2 or 1 where a group has at most that many: measured
    faster than the Q-lane tiles only on an unpadded x read in place.
    ``taps``: the kernel's, which size the passes over input channels
    (``_pixel_blocks``); a 1×1 kernel's tasks take ``PIXEL_BLOCK_POINTWISE``
    pixels."""
    vectors = _tile_vectors(kout_g, itemsize) if narrow else PIXEL_TILE[1]
    channels = vectors * 64 // itemsize
    if kout_g / (-(-kout_g // channels) * channels) < 0.75 or depth < PIXEL_MIN_DEPTH:
        return None
    if kout_g * taps >= pixels and groups * kout_g * depth * itemsize >= PACK_PER_TASK_BYTES:
        return _packing_blocks(kout_g, pixels, groups, itemsize, threads, vectors, taps)
    block = PIXEL_BLOCK_POINTWISE if taps == 1 else PIXEL_BLOCK
    return _pixel_blocks(kout_g, pixels, groups, itemsize, threads, vectors, block, taps)


def _packing_blocks(
    kout_g: int, pixels: int, groups: int, itemsize: int, threads: int, vectors: int, taps: int
) -> PixelTiling:
    """Pixel tiles whose tasks pack their own weights: as few pixel blocks
    as give two tasks per thread (each block's tasks pack the weights once
    more) and keep each within ``PACK_PER_TASK_PIXELS``."""
    t = _pixel_blocks(kout_g, pixels, groups, itemsize, threads, vectors, PIXEL_BLOCK, taps)
    tasks_per_block = groups * -(-kout_g // t.channels)
    nblk = max(-(-2 * threads // tasks_per_block), -(-pixels // PACK_PER_TASK_PIXELS))
    npix = PIXEL_TILE[0]
    block = _even(pixels, -(-pixels // (nblk * npix)) * npix, npix)
    return replace(t, block=block, packs_per_task=True)


def _tile_vectors(kout_g: int, itemsize: int) -> int:
    """The narrowest pixel tile (4, 2 or 1 vectors) that holds ``kout_g`` output channels."""
    vw = 64 // itemsize
    return PIXEL_TILE[1] if kout_g > 2 * vw else 2 if kout_g > vw else 1


def _pixel_blocks(
    kout_g: int,
    pixels: int,
    groups: int,
    itemsize: int,
    threads: int,
    vectors: int = PIXEL_TILE[1],
    block: int = PIXEL_BLOCK,
    taps: int = 1,
) -> PixelTiling:
    """The pixel tiles' blocks: ``block`` pixels per 4 vectors of output
    channels (narrower tiles take proportionally more), halved until there are
    four tasks per thread, evened out over the threads; and as many input
    channels per pass, up to ``PIXEL_CHANNEL_BLOCK``, as keep the pass's
    packed weights for ``taps`` taps within ``PIXEL_WEIGHT_BYTES``."""
    npix = PIXEL_TILE[0]
    channels = vectors * 64 // itemsize
    tasks_per_block = groups * -(-kout_g // channels)
    blk = block * PIXEL_TILE[1] // vectors
    while blk > 4 * npix and tasks_per_block * -(-pixels // blk) < 4 * threads:
        blk //= 2
    cblk = max(1, min(PIXEL_CHANNEL_BLOCK, PIXEL_WEIGHT_BYTES // (taps * channels * itemsize)))
    return PixelTiling(npix, vectors, channels, _even(pixels, blk, npix), cblk)


def _reads_in_place(p: Conv2dParams, dtype: np.dtype) -> bool:
    """The direct forward on the pixel tiles reads x in place (no padding)."""
    return _unpadded(p) and _forward_pixels(p, dtype.itemsize, 1) is not None


def _unpadded(p: Conv2dParams) -> bool:
    return (p.ph, p.pw, p.ph_end, p.pw_end) == (0, 0, 0, 0)


def _forward_pixels(p: Conv2dParams, itemsize: int, threads: int) -> PixelTiling | None:
    """The forward's pixel tiles; narrow ones (few output channels) only where x is read in place."""
    return _pixel_tiling(
        p.kg, p.cg * p.kh * p.kw, p.n * p.oh * p.ow, p.groups, itemsize, threads, _unpadded(p), p.kh * p.kw
    )


def _grad_x_pixels(p: Conv2dParams, itemsize: int, threads: int) -> PixelTiling | None:
    """grad_x's correlation: C/groups output channels over N x H x W pixels."""
    return _pixel_tiling(p.cg, p.kg * p.kh * p.kw, p.n * p.h * p.w, p.groups, itemsize, threads, taps=p.kh * p.kw)


def _grad_x_taps(p: Conv2dParams, itemsize: int, threads: int) -> TapTiling | None:
    """grad_x by taps (``engine.pixels.grad_x_taps``) where it sums fewer
    products than a full correlation and fills its lanes: channels per tap
    the least of one, two or four vectors that holds a group's input
    channels (blocks of four vectors past that)."""
    vw = 64 // itemsize
    lanes = PIXEL_TILE[1] * vw
    if (p.sh, p.sw) != (1, 1) or p.h * p.w < TAPS_MIN_EXTRA * p.oh * p.ow or p.oh * p.ow > TAPS_MAX_PIXELS:
        return None
    cw = vw
    while cw < min(p.cg, lanes):
        cw *= 2
    nb = -(-p.cg // cw)
    ntap = p.kh * p.kw
    fill = p.cg / (nb * cw) * ntap * cw / (-(-(ntap * cw) // lanes) * lanes)
    if fill < TAPS_MIN_FILL or p.kg < TAPS_MIN_DEPTH or p.n * p.groups * nb < 2 * threads:
        return None
    return TapTiling(cw, lanes, _taps_images(p.oh * p.ow, p.n * p.groups * nb, threads))


def _taps_images(pixels: int, tasks: int, threads: int) -> int:
    """Images per grad_x-by-taps task: the fewest whose pixels fill whole
    pixel tiles, where one image rounds up by more than an eighth and four
    tasks per thread remain."""
    npix = PIXEL_TILE[0]
    if -(-pixels // npix) * npix <= pixels * 9 / 8:
        return 1
    m = npix // math.gcd(pixels, npix)
    return m if tasks // m >= 4 * threads else 1


def _taps_bytes(p: Conv2dParams, t: TapTiling, itemsize: int, threads: int) -> int:
    """Each running task's accumulator (pixels x lanes) and grad_x tile."""
    hp, wp = taps_tile_extent((p.h, p.w), (p.oh, p.ow), (p.kh, p.kw), (p.sh, p.sw), (p.ph, p.pw), (p.dh, p.dw))
    tile = hp * wp * t.channels
    pixels = -(-(t.images * p.oh * p.ow) // PIXEL_TILE[0]) * PIXEL_TILE[0]
    return threads * (pixels * t.lanes + t.images * tile) * itemsize


def _grad_weight_pixels(p: Conv2dParams, itemsize: int, threads: int) -> GradWeightTiling | None:
    """grad_weight on the pixel tiles (output channels in the lanes, exact
    output pixels, no per-thread partials) where a group's output channels
    fill the (4-vector) tiles as the forward's rule asks; x in the forward's
    stride-1 layout."""
    fwd = _forward_pixels(p, itemsize, 1)
    if fwd is None or fwd.vectors != PIXEL_TILE[1]:
        return None
    return GradWeightTiling("pixels", PIXEL_GW_CHUNK, threads, 0, PIXEL_GW_PAIRS)


def _grad_weight_tiling(mode: str, p: Conv2dParams, threads: int, span: int = 0) -> GradWeightTiling:
    """Parallel over blocks of output channels when a private partial
    grad_weight per thread would be large (zeroing, faulting in and summing
    them costs more than re-reading the input once per block), else over
    chunks of Q."""
    kblk = 0
    if p.k * p.cg * p.kh * p.kw * 8 >= PARTIALS_MAX_BYTES:
        kblk = max(4, min(GRAD_WEIGHT_CHANNEL_BLOCK, p.kg // (4 * threads) * 4))
    return GradWeightTiling(mode, SEGMENT, threads, span, kblk)


def _partials_bytes(
    p: Conv2dParams, work: int, threads: int, gw: GradWeightTiling | None = None, itemsize: int = 4
) -> int:
    if gw is not None and gw.mode == "pixels":  # grad_output transposed, float64 sums by whole tiles
        kb = PIXEL_TILE[1] * 64 // itemsize
        k_pad = p.groups * -(-p.kg // kb) * kb
        return k_pad * (p.n * p.oh * p.ow * itemsize + (p.cg * p.kh * p.kw + PIXEL_TILE[0]) * 8)
    if gw is not None and gw.channel_block:
        return p.k * p.cg * p.kh * p.kw * 8
    return max(1, min(work, threads)) * p.k * p.cg * p.kh * p.kw * 8


# --------------------------------------------------------------------------- CPU: algorithms


def _grad_x_lead(p: Conv2dParams, lay: Layout) -> int:
    return mirrored_lead(p.kh, p.kw, p.dh, p.dw, p.ph, p.pw, lay.pitch, lay.step)


def _cpu_standard(p: Conv2dParams, dtype: np.dtype, threads: int, need_input_grad: bool, requested: bool) -> _Pass:
    isz = dtype.itemsize
    pads = (p.ph, p.pw, p.ph_end, p.pw_end)
    bwd_lay = standard_layout(p.x_shape, pads, isz, strides=(p.sh, p.sw))
    fwd: CorrTiling | PixelTiling | None = None if _streams_rows(p) else _forward_pixels(p, isz, threads)
    if fwd is not None:  # a stride-1 layout at any stride: the tiles read pixels sh, sw apart
        fwd_lay = (
            nchw_layout(p.x_shape) if pads == (0, 0, 0, 0) else standard_layout(p.x_shape, pads, isz, compact=True)
        )
    else:
        fwd_lay = standard_layout(
            p.x_shape, pads, isz, strides=(p.sh, p.sw), rows_min=p.oh, pitch_min=p.ow, compact=True
        )
        fwd = _corr_standard(p.kg, p.groups, (p.n, p.oh, p.ow), fwd_lay, isz, threads)
    # grad_weight: per-image segments (skip the padding rows between images)
    # when they cover fewer Q and several images fit one SEGMENT; a multiple
    # of 16, so no scalar tails
    span = -(-((p.oh - 1) * bwd_lay.pitch + p.ow) // 16) * 16
    per_image = p.n > 1 and span <= bwd_lay.plane - 16 and 2 * span <= SEGMENT
    gw = _grad_weight_pixels(p, isz, threads) or _grad_weight_tiling(
        "per-image" if per_image else "contiguous", p, threads, span if per_image else 0
    )
    if gw.mode == "pixels" and (p.sh * p.sw > 1 or fwd_lay.kind == "nchw"):
        # x is wanted only by grad_weight's pixel tiles (a strided grad_x runs on
        # the sub-pixel grids; a stride-1 one reads grad_output in x's row
        # geometry, the same in place): the forward's stride-1 buffer serves
        bwd_lay = fwd_lay
    elif gw.mode == "pixels" and _streams_rows(p):  # ... and x itself, whatever the forward read
        bwd_lay = nchw_layout(p.x_shape)
    qn = (p.n - 1) * bwd_lay.plane + (p.oh - 1) * bwd_lay.pitch + p.ow
    gx: CorrTiling | PixelTiling | TapTiling | None = None
    lead = 0
    if need_input_grad and p.sh == p.sw == 1:
        gx = _grad_x_taps(p, isz, threads)
        if gx is None:
            gx = (None if _grad_x_streams_rows(p) else _grad_x_pixels(p, isz, threads)) or _corr_standard(
                p.cg, p.groups, (p.n, p.h, p.w), bwd_lay, isz, threads
            )
            lead = _grad_x_lead(p, bwd_lay)
    phases = _subpixel_phases(p, dtype, threads) if need_input_grad and gx is None and p.dh == p.dw == 1 else None
    gy_lay = grad_output_layout(bwd_lay, p.y_shape, isz, lead)
    # grad_output's copy: for the Q-lane grad_weight and a correlation's grad_x
    gx_in_place = isinstance(gx, PixelTiling) and pointwise_in_place(p.kh, p.kw, p.sh, p.sw, pads)
    gy_copied = gw.mode != "pixels" or (gx is not None and not isinstance(gx, TapTiling) and not gx_in_place)
    bwd_bytes = (
        ((0 if bwd_lay.kind == "nchw" else bwd_lay.size) + gy_copied * gy_lay.size) * isz
        + _partials_bytes(p, p.n if per_image else qn, threads, gw, isz)
        + _phases_bytes(phases)
        + (_taps_bytes(p, gx, isz, threads) if isinstance(gx, TapTiling) else 0)
    )
    why_gw = (
        "exact output pixels on the pixel tiles: the output channels fill them (as the forward's rule)"
        if gw.mode == "pixels"
        else f"per-image segments: {span} Q of each {bwd_lay.plane}-Q image plane"
        if per_image
        else "contiguous segments: "
        + ("one image" if p.n == 1 else "images' padding rows are few or an image exceeds half a segment")
    )
    why_gx = (
        "skipped (need_input_grad=False)"
        if not need_input_grad
        else _taps_note(p, gx)
        if isinstance(gx, TapTiling)
        else "a 1×1 stride-1 unpadded layer: the forward's correlation of grad_output, read in place, with the "
        "transposed weights"
        if gx_in_place
        else "correlation of grad_output with the mirrored taps (weights finite; scatter otherwise)"
        if gx
        else f"{len(phases)} stride-1 correlations of grad_output with the mirrored sub-kernels, one per "
        f"sub-pixel grid of grad_x (weights finite; scatter otherwise)"
        if phases
        else "scatter: a strided and dilated transposed convolution"
    )
    why_layout = "standard: " + (
        "requested"
        if requested
        else "stride > 1"
        if p.sh * p.sw > 1
        else f"batch {p.n} < 8"
        if p.n < 8
        else f"the batch-inner layout saves too few Q ({_bi_q(p)} vs {_std_q(p)} per image)"
    )
    return _Pass(
        "standard",
        fwd,
        gx,
        gw,
        fwd_lay,
        bwd_lay,
        p.n,
        False,
        0 if fwd_lay.kind == "nchw" else fwd_lay.size * isz,
        bwd_bytes,
        why_layout,
        _forward_tile_note(p, fwd, fwd_lay),
        why_gw,
        why_gx,
        phases,
    )


def _streams_rows(p: Conv2dParams) -> bool:
    """A 1×1 stride-1 unpadded forward whose rows stream better on the Q-lane
    tiles (``STREAM_PLANE``); unpadded, so its backward's pixel tiles can read
    x itself."""
    return _pointwise_streams(p, p.cg, p.kg, 8)  # at least the 8-channel tile


def _grad_x_streams_rows(p: Conv2dParams) -> bool:
    """``_streams_rows`` for grad_x, the correlation of grad_output (K/groups
    input channels) into C/groups output channels: on the Q-lane tiles over
    a copy of grad_output, for the same reason as the forward, where it has
    at least ``STREAM_GRAD_X_CHANNELS`` output channels per group (with 64 it
    measured no faster than the pixel tiles in place)."""
    return _pointwise_streams(p, p.kg, p.cg, STREAM_GRAD_X_CHANNELS)


def _pointwise_streams(p: Conv2dParams, depth: int, lanes: int, least_lanes: int) -> bool:
    """A 1×1 stride-1 unpadded correlation over planes of at least
    ``STREAM_PLANE`` pixels (x's and the output's are the same) with at most
    ``STREAM_CHANNELS`` input channels (``depth``) and at least
    ``least_lanes`` output channels (``lanes``) per group."""
    return (
        (p.kh, p.kw, p.sh, p.sw) == (1, 1, 1, 1)
        and _unpadded(p)
        and p.h * p.w >= STREAM_PLANE
        and depth <= STREAM_CHANNELS
        and lanes >= least_lanes
    )


def _taps_note(p: Conv2dParams, t: TapTiling) -> str:
    return (
        f"by taps: grad_x's {p.h}x{p.w} pixels are >= {TAPS_MIN_EXTRA}x grad_output's {p.oh}x{p.ow}, so a full "
        f"correlation would sum the zeros around grad_output; {p.cg} input channels per group in "
        f"{t.channels}-channel slots of {t.lanes}-lane tiles, {p.kg} >= {TAPS_MIN_DEPTH} output channels"
    )


def _image_tiles_note(t: CorrTiling) -> str:
    return f"; per-image tiles ({t.image_tiles} per image) need fewer tiles" if t.image_tiles else ""


def _forward_tile_note(p: Conv2dParams, t: CorrTiling | PixelTiling, lay: Layout) -> str:
    if isinstance(t, PixelTiling):
        return (
            f"{p.kg} output channels per group fill >= 3/4 of {t.channels}-channel pixel tiles and "
            f"{p.cg * p.kh * p.kw} >= {PIXEL_MIN_DEPTH} products per output: no lane spent on padding Q"
            + ("; no padding, so x is read in place (NCHW)" if lay.kind == "nchw" else "")
        )
    stream = (
        f"; a 1×1 kernel over {p.oh}x{p.ow} planes with {p.cg} <= {STREAM_CHANNELS} input channels: each "
        "input row streams whole on the Q-lane tiles"
        if _streams_rows(p)
        else ""
    )
    return _tile(p.kg)[2] + _image_tiles_note(t) + stream


def _cpu_batch_inner(p: Conv2dParams, dtype: np.dtype, threads: int, need_input_grad: bool, requested: bool) -> _Pass:
    isz = dtype.itemsize
    hp, wp = p.h + p.ph + p.ph_end, p.w + p.pw + p.pw_end
    lay = batch_inner_layout(p.x_shape, hp, wp, isz, top=p.ph, left=p.pw)
    fwd = _forward_pixels(p, isz, threads) or _corr_batch_inner(p.kg, p.groups, (p.n, p.oh, p.ow), lay, threads)
    gw = _grad_weight_tiling("contiguous", p, threads)
    gx: CorrTiling | PixelTiling | TapTiling | None = None
    if need_input_grad:
        gx = (
            _grad_x_taps(p, isz, threads)
            or _grad_x_pixels(p, isz, threads)
            or _corr_batch_inner(p.cg, p.groups, (p.n, p.h, p.w), lay, threads)
        )
    correlated = gx is not None and not isinstance(gx, TapTiling)
    gy_lay = grad_output_layout(lay, p.y_shape, isz, _grad_x_lead(p, lay) if correlated else 0)
    qn = (p.oh - 1) * lay.pitch + p.ow * p.n
    bwd_bytes = (
        (lay.size + gy_lay.size) * isz
        + _partials_bytes(p, qn, threads, gw)
        + (_taps_bytes(p, gx, isz, threads) if isinstance(gx, TapTiling) else 0)
    )
    why_layout = (
        "batch-inner: requested"
        if requested
        else f"batch-inner: stride 1, batch {p.n} >= 8 and {_bi_q(p)} Q per image instead of {_std_q(p)} "
        f"(<= 3/4): no padding rows computed"
    )
    why_gx = (
        "skipped (need_input_grad=False)"
        if gx is None
        else _taps_note(p, gx)
        if isinstance(gx, TapTiling)
        else "correlation of grad_output with the mirrored taps (weights finite; scatter otherwise)"
    )
    return _Pass(
        "batch-inner",
        fwd,
        gx,
        gw,
        lay,
        lay,
        p.n,
        False,
        lay.size * isz,
        bwd_bytes,
        why_layout,
        _forward_tile_note(p, fwd, lay),
        "contiguous segments over the batch-inner Q",
        why_gx,
    )


def chunk_images(p: Conv2dParams, itemsize: int) -> int:
    """im2col: images per chunk so that the column matrix and the channel-major
    grad_output stay within COLUMN_WORKSPACE_BYTES (at least 1)."""
    per_image = (p.c * p.kh * p.kw + p.k) * p.oh * p.ow * itemsize
    return max(1, min(p.n, COLUMN_WORKSPACE_BYTES // per_image))


def _cpu_im2col(p: Conv2dParams, dtype: np.dtype, threads: int, need_input_grad: bool) -> _Pass:
    isz = dtype.itemsize
    ntap, plane = p.kh * p.kw, p.oh * p.ow
    nb = chunk_images(p, isz)
    ld = column_ld(nb * plane, isz)
    lay = column_layout(nb, p.c * ntap, ntap, ld, p.oh, p.ow)
    fwd = _corr_column(p.kg, p.cg * ntap, isz)
    # decided by the shape alone, so grad_weight is the same with or without grad_x
    in_place = plane >= IN_PLACE_MIN
    if in_place:
        gw = GradWeightTiling("rows", 0, threads)
        why_gw = f"grad_output read in place, image by image ({plane} >= {IN_PLACE_MIN} pixels per image)"
    else:
        gw = _grad_weight_tiling("contiguous", p, threads)
        why_gw = f"over a channel-major copy of grad_output ({plane} < {IN_PLACE_MIN} pixels per image)"
    gx = _corr_column(p.cg * ntap, p.kg, isz) if need_input_grad else None
    gyc = p.k * ld if need_input_grad or not in_place else 0
    bwd_bytes = (lay.size + gyc) * isz + _partials_bytes(p, nb if in_place else nb * plane, threads, gw)
    why_layout = f"column: {nb} image(s) per chunk within {COLUMN_WORKSPACE_BYTES // 2**20} MiB"
    why_gx = "skipped (need_input_grad=False)" if gx is None else "column gradient GEMM, then col2im"
    return _Pass(
        "column",
        fwd,
        gx,
        gw,
        lay,
        lay,
        nb,
        in_place,
        lay.size * isz,
        bwd_bytes,
        why_layout,
        _tile(p.kg)[2],
        why_gw,
        why_gx,
    )


# --------------------------------------------------------------------------- CPU: strided grad_x


def _phase_axis(a: int, stride: int, k: int, pad: int, size: int, out: int) -> tuple[int, ...] | None:
    """Phase ``a`` of one axis of a stride-``stride`` grad_x (dilation 1):
    (first grad_x index, count, taps, first grad_output index, grad_output
    length, zeros before, zeros after) of the stride-1 correlation that makes
    it, or None when no grad_x index lies in this phase.

    grad_x index i = stride*u + a - pad receives grad_output[u - j] * tap
    a + stride*j; with the taps mirrored that is a correlation over
    grad_output shifted by taps - 1 - u_first (cropped where negative)."""
    u_lo = -(-(pad - a) // stride)
    u_hi = (size - 1 + pad - a) // stride
    count = u_hi - u_lo + 1
    if count <= 0:
        return None
    taps = -(-(k - a) // stride) if a < k else 0
    before = taps - 1 - u_lo
    g0 = max(0, -before)
    before = max(0, before)
    need = count + taps - 1 - before
    length = min(need, out - g0)
    return stride * u_lo + a - pad, count, taps, g0, length, before, need - length


def _subpixel_phases(p: Conv2dParams, dtype: np.dtype, threads: int) -> tuple[SubPixelPhase, ...]:
    """The sh*sw sub-pixel grids of a strided grad_x (dilation 1), each with
    the plan of its stride-1 correlation (the direct forward)."""
    phases = []
    for a in range(p.sh):
        rows = _phase_axis(a, p.sh, p.kh, p.ph, p.h, p.oh)
        for b in range(p.sw):
            cols = _phase_axis(b, p.sw, p.kw, p.pw, p.w, p.ow)
            if rows is None or cols is None:
                continue
            (r0, nr, jr, g0, lr, br, ar), (c0, nc, js, g1, lc, bc, ac) = rows, cols
            plan = None
            if min(jr, js, lr, lc) > 0:
                sp = Conv2dParams(p.n, p.k, lr, lc, p.c, jr, js, p.groups, 1, 1, br, bc, ar, ac, 1, 1, nr, nc)
                plan = _cpu_plan(sp, dtype, threads, False, "direct", None)
                assert plan.cpu is not None
                # a grid's forward is never followed by its backward: nothing to keep
                why = "no: a sub-pixel grid's forward is never followed by its backward"
                reasons = tuple((k, why if k == "reuse_prepared_input" else v) for k, v in plan.reasons)
                plan = replace(plan, reasons=reasons, cpu=replace(plan.cpu, reuse_prepared_input=False))
            phases.append(SubPixelPhase(r0, c0, nr, nc, a, b, g0, g1, plan))
    return tuple(phases)


def _phases_bytes(phases: tuple[SubPixelPhase, ...] | None) -> int:
    """Scratch of the largest phase: its cropped grad_output, mirrored
    sub-kernel and output, and its correlation's prepared buffer."""
    most = 0
    for ph in phases or ():
        if ph.plan is not None and ph.plan.cpu is not None:
            sp, isz = ph.plan.params, np.dtype(ph.plan.dtype).itemsize
            extra = (sp.n * sp.c * sp.h * sp.w + sp.k * sp.cg * sp.kh * sp.kw + sp.n * sp.k * sp.oh * sp.ow) * isz
            most = max(most, extra + ph.plan.cpu.forward_workspace_bytes)
    return most


# --------------------------------------------------------------------------- CPU: Winograd

# Winograd: workspace of one chunk (transformed input + GEMM output); smaller
# than im2col's bound so a chunk's V stays closer to the caches.
WINOGRAD_CHUNK_BYTES = 16 * 2**20
# Winograd: longest sum (C/g*9) up to which F(4×4, 3×3)'s float32 error was
# measured within 1e-5 of the float64 reference (docs/winograd.md).
WINOGRAD_F4_MAX_DEPTH = 4608


# Winograd under auto: channels per group (in and out), F(4×4) tiles, and the
# most output area the tiles may cover per output pixel (planes not a multiple
# of 4 compute the rest and drop it), within which its transforms and the
# weights' transform are paid for by the GEMMs' 4× fewer products
# (benchmarks in docs/winograd.md).
WINOGRAD_AUTO_CHANNELS = 64
WINOGRAD_AUTO_TILES = 64
WINOGRAD_AUTO_COVER = 1.35
# ... and from WINOGRAD_AUTO_FEW_TILES tiles where the groups are at least
# WINOGRAD_AUTO_FEW_TILES_CHANNELS deep and wide (the input and output
# transforms are paid for) and the transformed weights (α² = 36 points per
# kernel) take at most WINOGRAD_AUTO_FEW_TILES_BYTES: with few tiles per
# point the GEMMs are bound by reading those weights, which the transform
# also writes, once per call.
WINOGRAD_AUTO_FEW_TILES = 32
WINOGRAD_AUTO_FEW_TILES_CHANNELS = 128
WINOGRAD_AUTO_FEW_TILES_BYTES = 16 * 2**20
# A dilated 3×3 layer's forward runs Winograd on its sub-sampled grids (space
# to batch) from WINOGRAD_DILATED_CHANNELS channels per group, where its
# sub-problem passes the rule above; below that the passes that gather and
# scatter the grids cost what Winograd saves (docs/winograd.md, "Stop 25").
WINOGRAD_DILATED_CHANNELS = 128
# ... and for its backward (grad_x by Winograd), channels per group: every
# layer whose forward it runs (docs/winograd.md, "Stop 25")
WINOGRAD_AUTO_BACKWARD_CHANNELS = 64


def winograd_pays(p: Conv2dParams, itemsize: int) -> bool:
    """auto takes Winograd F(4×4, 3×3): a 3×3 kernel at stride 1 and
    dilation 1, deep and wide enough groups, enough tiles that cover little
    more than the output planes (fewer for deeper groups whose transformed
    weights, in ``itemsize``-byte elements, are not too large), and F(4×4)
    within its measured float32 error bound (``winograd_tile``)."""
    if not winograd_geometry(p):
        return False
    if min(p.cg, p.kg) < WINOGRAD_AUTO_CHANNELS or winograd_tile(p)[0] != 4:
        return False
    th, tw = -(-p.oh // 4), -(-p.ow // 4)
    tiles = p.n * th * tw
    few_tiles = (
        tiles >= WINOGRAD_AUTO_FEW_TILES
        and min(p.cg, p.kg) >= WINOGRAD_AUTO_FEW_TILES_CHANNELS
        and 36 * p.groups * p.cg * p.kg * itemsize <= WINOGRAD_AUTO_FEW_TILES_BYTES
    )
    return (tiles >= WINOGRAD_AUTO_TILES or few_tiles) and 16 * th * tw <= WINOGRAD_AUTO_COVER * p.oh * p.ow


def winograd_geometry(p: Conv2dParams) -> bool:
    """The geometry Winograd F(m×m, 3×3) computes: a 3×3 kernel at stride 1 and dilation 1."""
    return (p.kh, p.kw, p.sh, p.sw, p.dh, p.dw) == (3, 3, 1, 1, 1, 1)


def dilated_winograd_geometry(p: Conv2dParams) -> bool:
    """A dilated 3×3 stride-1 layer: Winograd runs its sub-sampled grids (``space_to_batch_params``)."""
    return (p.kh, p.kw, p.sh, p.sw) == (3, 3, 1, 1) and (p.dh, p.dw) != (1, 1)


def space_to_batch_params(p: Conv2dParams) -> Conv2dParams:
    """The undilated sub-problem of a dilated stride-1 layer (as TensorFlow
    computes atrous convolution): output pixel (a + dh·i, b + dw·j) reads x
    at rows a - ph + dh·(i + r) and columns b - pw + dw·(j + s), so each of
    the dh·dw phases (a, b) is an undilated convolution of x's sub-sampled
    grid; with ceil(OH/dh) × ceil(OW/dw) outputs per phase (a phase with
    fewer drops the rest) the phases are N·dh·dw images of one unpadded
    problem."""
    ohs, ows = -(-p.oh // p.dh), -(-p.ow // p.dw)
    return replace(
        p,
        n=p.n * p.dh * p.dw,
        h=ohs + p.kh - 1,
        w=ows + p.kw - 1,
        ph=0,
        pw=0,
        ph_end=0,
        pw_end=0,
        dh=1,
        dw=1,
        oh=ohs,
        ow=ows,
    )


def check_winograd(p: Conv2dParams, backend: str) -> None:
    """algorithm="winograd" needs a 3×3 kernel at stride 1 (any dilation), on the CPU."""
    if not (winograd_geometry(p) or dilated_winograd_geometry(p)):
        raise ValueError(
            f"algorithm='winograd' needs a 3×3 kernel at stride 1, got kernel {(p.kh, p.kw)}, stride {(p.sh, p.sw)}"
        )
    if backend != "cpu":
        raise ValueError(f"algorithm='winograd' runs on the CPU only, got {backend} arrays")


def winograd_tile(p: Conv2dParams) -> tuple[int, str]:
    """(m, reason): F(4×4, 3×3) unless F(2×2, 3×3) needs no more transformed
    points for these output planes (small planes waste F(4)'s tile edges;
    F(2) is also the more accurate one, so it wins ties)."""
    cost4 = 36 * -(-p.oh // 4) * -(-p.ow // 4)
    cost2 = 16 * -(-p.oh // 2) * -(-p.ow // 2)
    depth = 9 * max(p.cg, p.kg)  # the longest sum (forward: C/g*9, grad_x: K/g*9)
    if depth > WINOGRAD_F4_MAX_DEPTH:
        return 2, (
            f"F(2×2, 3×3): F(4×4)'s float32 error was measured <= 1e-5 only up to "
            f"{WINOGRAD_F4_MAX_DEPTH} products per output, here {depth}"
        )
    if cost2 <= cost4:
        return 2, f"F(2×2, 3×3): {cost2} transformed points per plane vs {cost4} for F(4×4)"
    return 4, f"F(4×4, 3×3): {cost4} transformed points per plane vs {cost2} for F(2×2)"


def _winograd_bytes(p: Conv2dParams, m: int, tiles: int, isz: int) -> int:
    """Workspace of a Winograd chunk of ``tiles`` tiles: transformed input
    and GEMM output (a row per tile, slack for whole vectors), the chunk's
    images channels innermost, and the transformed weights."""
    a2, lanes = (m + 2) ** 2, 64 // isz
    th_n, tw_n = -(-max(p.oh, p.h) // m), -(-max(p.ow, p.w) // m)
    images = min(p.n, -(-tiles // (th_n * tw_n)) + 1)
    cp = -(-max(p.c, p.k) // lanes) * lanes
    kt = PIXEL_TILE[1] * lanes
    weights = a2 * p.groups * -(-max(p.kg, p.cg) // kt) * kt * max(p.cg, p.kg)
    return (tiles * (a2 * (p.c + p.k) + 2 * lanes) + images * (th_n * m + 2) * (tw_n * m + 2) * cp + weights) * isz


def _cpu_winograd(p: Conv2dParams, dtype: np.dtype, threads: int, need_input_grad: bool) -> _Pass:
    if dilated_winograd_geometry(p):
        return _cpu_winograd_dilated(p, dtype, threads, need_input_grad)
    isz = dtype.itemsize
    m, why_m = winograd_tile(p)
    a2 = (m + 2) ** 2
    total = p.n * -(-p.oh // m) * -(-p.ow // m)
    if need_input_grad:  # grad_x's tiles cover x's planes
        total = max(total, p.n * -(-p.h // m) * -(-p.w // m))
    per_tile = a2 * (p.c + p.k) * isz
    tc = max(16, min(total, WINOGRAD_CHUNK_BYTES // per_tile))
    ld = column_ld(tc, isz)
    wplan = _cpu_plan(p, dtype, threads, False, "direct", None)
    assert wplan.cpu is not None
    wino = WinogradPlan(m, tc, wplan)
    fwd_lay = column_layout(1, a2 * p.c, 1, ld, 1, tc)
    bwd_lay = column_layout(1, a2 * p.k, 1, ld, 1, tc)
    # the GEMMs always run on the pixel tiles (their transforms want channels innermost)
    fwd = _pixel_blocks(p.kg, tc, a2 * p.groups, isz, threads)
    gx = _pixel_blocks(p.cg, tc, a2 * p.groups, isz, threads) if need_input_grad else None
    ws = _winograd_bytes(p, m, tc, isz)
    bwd_bytes = max(wplan.cpu.backward_workspace_bytes, ws if need_input_grad else 0)
    why_layout = (
        f"transformed: {why_m}; {tc} tiles per chunk ({_mib(ws)} of transformed input and GEMM "
        f"output); the {a2} transformed points' GEMMs run as one engine call"
    )
    why_gx = (
        "skipped (need_input_grad=False)"
        if gx is None
        else f"Winograd F({m}×{m}, 3×3) of grad_output with the rotated kernel (a full correlation)"
    )
    return _Pass(
        "transformed",
        fwd,
        gx,
        wplan.cpu.grad_weight,
        fwd_lay,
        bwd_lay,
        p.n,
        False,
        ws,
        bwd_bytes,
        why_layout,
        _tile(p.kg)[2],
        "the direct path's: " + wplan.reason("grad_weight"),
        why_gx,
        winograd=wino,
    )


def _cpu_winograd_dilated(p: Conv2dParams, dtype: np.dtype, threads: int, need_input_grad: bool) -> _Pass:
    """A dilated layer's Winograd: the plan of its sub-sampled grids, run in
    its place, plus the grids of x (and, in the backward, of grad_output and
    grad_x) as workspace."""
    sp = space_to_batch_params(p)
    why = f"Winograd on the {p.dh * p.dw} sub-sampled grids (space to batch)"
    sub = cpu_plan_for(sp, dtype, threads, need_input_grad, ("winograd", "winograd", why))
    inner = _cpu_winograd(sp, dtype, threads, need_input_grad)
    assert inner.winograd is not None
    grids = (sp.n * sp.c * sp.h * sp.w + sp.n * sp.k * sp.oh * sp.ow) * dtype.itemsize
    return replace(
        inner,
        forward_workspace_bytes=inner.forward_workspace_bytes + grids,
        backward_workspace_bytes=inner.backward_workspace_bytes + 2 * grids,
        why_layout=f"transformed, space to batch: the dilation-{(p.dh, p.dw)} layer's {p.dh * p.dw} sub-sampled "
        f"grids as {sp.n} undilated {sp.h}×{sp.w} images; " + inner.why_layout,
        winograd=replace(inner.winograd, space_to_batch=sub),
    )


# --------------------------------------------------------------------------- conv + max pooling, fused

# At most this many products per conv output (C/groups * KH * KW) for a first layer whose
# grad_weight is taken from the window codes: with few products the conv is bound by writing its
# output and the pooling by reading it back (docs/pixel-tiles.md, "Stop 24").
FUSED_POOL_FAN_IN = 32
# A fused task's accumulator (pooled rows x windows x channels) is kept within this size.
FUSED_POOL_ACC_BYTES = 32 * 2**10


@dataclass(frozen=True)
class ConvPoolPlan:
    """How ``fastconv.nn``'s ConvReLUPool step runs a conv and the max pooling after it on the
    CPU: fused into one forward kernel (``fastconv/cpu/conv_pool.py``) or as the two ops.

    ``params`` the conv's, ``pool`` the pooling window (= its stride), ``pooled`` the pooled
    (PH, PW); the pixel tiles' ``channels`` (output channels per tile), ``channel_block`` (input
    channels per pass) and ``rows`` (pooled rows per task); ``grad_x``: the backward scatters the
    pooled gradient by the window codes and runs the conv's own backward, else grad_weight is
    summed from the codes directly (a first layer); ``reason`` why."""

    fused: bool
    reason: str
    params: Conv2dParams | None = None
    pool: tuple[int, int] = (0, 0)
    pooled: tuple[int, int] = (0, 0)
    channels: int = 0
    channel_block: int = 0
    rows: int = 0
    grad_x: bool = False

    def __repr__(self) -> str:
        if not self.fused:
            return f"ConvPoolPlan(not fused · because {self.reason})"
        back = "codes scattered, then the conv's backward" if self.grad_x else "grad_weight from the codes"
        tile = f"{PIXEL_TILE[0]}×{self.channels} pixel tile, {self.channel_block} input channels per pass"
        return f"ConvPoolPlan(fused forward · {tile} · backward: {back} · because {self.reason})"


def plan_conv_pool(
    p: Conv2dParams,
    dtype: np.dtype,
    pool: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
    need_input_grad: bool,
    threads: int = 1,
) -> ConvPoolPlan:
    """The plan of a conv (``p``) followed by a max pooling with (window, stride, padding) =
    ``pool`` (dilation 1, floor mode) in ``dtype``, in a network where the conv's backward
    needs grad_x or not."""
    (pkh, pkw), (psh, psw), pads = pool
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64) or p.groups != 1:
        return ConvPoolPlan(False, f"{p.groups} groups in {dtype}: the fused kernel takes one group in float32/64")
    if (pkh, pkw) != (psh, psw) or any(pads) or pkh * pkw > 255:
        return ConvPoolPlan(False, "the pooling windows overlap, leave gaps or are padded")
    ph, pw = p.oh // pkh, p.ow // pkw
    if ph == 0 or pw == 0 or p.n == 0 or p.k == 0:
        return ConvPoolPlan(False, "the pooled output is empty")
    fan_in = p.c * p.kh * p.kw
    grad_x = need_input_grad or fan_in > FUSED_POOL_FAN_IN  # else grad_weight comes from the codes
    if not grad_x:
        tiling = _pixel_blocks(p.k, p.n * p.oh * p.ow, 1, dtype.itemsize, threads, _tile_vectors(p.k, dtype.itemsize))
        why = f"{fan_in} products per output: unfused, the conv output is written and read back"
    else:
        own = build_plan(p, dtype, "cpu", threads, need_input_grad, "auto")
        forward = own.cpu.forward if own.cpu is not None else None
        if own.algorithm != "direct" or not isinstance(forward, PixelTiling):
            return ConvPoolPlan(
                False,
                f"{fan_in} products per output{' and a grad_x' if need_input_grad else ''}, and the conv's own "
                f"forward runs {own.algorithm} on Q-lane tiles or transforms, not on the pixel tiles",
            )
        tiling, why = forward, "the conv's own forward runs on the pixel tiles: fused, its output is not written"
    channels, cblk = tiling.channels, tiling.channel_block
    rows = max(1, min(ph, FUSED_POOL_ACC_BYTES // (pw * pkh * pkw * channels * dtype.itemsize)))
    return ConvPoolPlan(True, why, p, (pkh, pkw), (ph, pw), channels, cblk, rows, grad_x)
