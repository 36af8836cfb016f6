"""Tile sizes of every CUDA kernel and the launch decisions that depend on a layer's shape.

Pure functions of integers (no device, no arrays): ``fastconv._plan`` can call them to
say what a CUDA launch will be.  Decisions use a fixed reference GPU (132 SMs, an
H100/H200 SXM) rather than the GPU at hand, so the split-K count, hence the summation
order and every result bit, is the same on every GPU.

Resident blocks per SM come from ``ptxas -v`` for sm_90 (registers per thread x
threads per block against the 64 K-register file); ``benchmarks/cuda_static.py``
re-derives them and writes the evidence to ``benchmarks/results/cuda-static-sm90.md``.
"""

from __future__ import annotations

from typing import NamedTuple

from ._config import MAX_GRID_YZ, SIM, cdiv
from ._geometry import ConvGeom

# Implicit-GEMM forward / grad_x tile (BM x BN outputs, BK-deep slabs, TM x TN per thread).
if SIM:
    BM, BN, BK, TM, TN = 4, 8, 4, 2, 2
else:
    BM, BN, BK, TM, TN = 64, 128, 8, 8, 8
# grad_weight split-K GEMM tile.
if SIM:
    WBM, WBN, WBK, WTM, WTN = 4, 8, 4, 2, 2
else:
    WBM, WBN, WBK, WTM, WTN = 64, 128, 16, 8, 8

# Direct kernel: KT x PT threads, KPT x PPT outputs each, XS / WS staged input / weight elements.
if SIM:
    KT, KPT, PT, PPT, XS, WS = 2, 2, 4, 2, 96, 128
else:
    KT, KPT, PT, PPT, XS, WS = 4, 8, 32, 8, 3072, 2560
TK = KT * KPT  # output channels per block
TP = PT * PPT  # output pixels per block (at most)
THIN_MAX = TK // 4  # groups with at most this many output channels use the one-thread-per-output kernel

# Elementwise grid-stride launches: threads per block, and at most 16 blocks per SM of the
# reference GPU (the loops cover the rest).
ELEMWISE_TPB = 8 if SIM else 256
ELEMWISE_MAX_BLOCKS = 2 if SIM else 132 * 16

# The reference GPU and the occupancy of each kernel on it (see the module doc).
SMS = 1 if SIM else 132
IGEMM_BLOCKS_PER_SM = 2 if SIM else 3
WGRAD_BLOCKS_PER_SM = 2 if SIM else 2
DIRECT_BLOCKS_PER_SM = 2 if SIM else 3

MIN_WAVES = 2  # below this a layer leaves SMs idle in its last wave: split the reduction
SPLIT_BELOW = 0.9 * MIN_WAVES  # ... but a layer this close to MIN_WAVES is not worth a workspace
MIN_SLABS_PER_SPLIT = 2 if SIM else 4  # each split keeps enough slabs to amortise its prologue
WGRAD_MIN_SLABS_PER_SPLIT = 2 if SIM else 4
SPLIT_WORKSPACE_BYTES = 64 << 20  # bound on the partial-sum buffer of one launch


class LaunchPlan(NamedTuple):
    """One kernel launch: grid, split-K and why."""

    kernel: str
    tile: tuple[int, int, int]  # (rows, columns, reduction depth) of a block's tile
    grid: tuple[int, int, int]
    split_k: int
    slabs: int  # BK-deep slabs of the whole reduction
    slabs_per_split: int
    waves: float  # blocks / (SMS x resident blocks per SM)
    reason: str

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


def elemwise_blocks(size: int) -> int:
    """Blocks of ELEMWISE_TPB threads for a grid-stride loop over ``size`` elements."""
    return max(1, min(ELEMWISE_MAX_BLOCKS, cdiv(size, ELEMWISE_TPB)))


def check_grid_rows(groups: int, rows: int, tile_rows: int) -> int:
    """Blocks along grid y (groups x row tiles), which CUDA limits to 65535."""
    gy = groups * cdiv(rows, tile_rows)
    if gy > MAX_GRID_YZ:
        raise ValueError(
            f"groups ({groups}) x output-channel tiles is {gy} > {MAX_GRID_YZ} thread-block rows, "
            "beyond what the CUDA backend launches; use fewer groups or the CPU backend"
        )
    return gy


def split_k(
    base_blocks: int, slabs: int, per_sm: int, min_slabs: int, max_split: int, unit: str = "slabs"
) -> tuple[int, int, str]:
    """(splits, slabs per split, reason) so that ``base_blocks`` output tiles fill MIN_WAVES waves."""
    wave = SMS * per_sm
    if slabs == 0:  # an empty reduction (zero batch): one launch writes the zeros
        return 1, 0, "empty reduction"
    if base_blocks >= SPLIT_BELOW * wave:
        return 1, slabs, f"{base_blocks} tiles fill {base_blocks / wave:.1f} waves"
    want = cdiv(MIN_WAVES * wave, max(base_blocks, 1))
    per = max(min_slabs, slabs // want)  # the largest chunk that still reaches MIN_WAVES
    split = min(cdiv(slabs, per), max_split, MAX_GRID_YZ)
    per = cdiv(slabs, split)
    split = cdiv(slabs, per)
    if split == 1:
        return (
            1,
            slabs,
            (
                f"{base_blocks} tiles = {base_blocks / wave:.2f} waves, but the reduction "
                f"({slabs} {unit}) is too short to split"
            ),
        )
    return (
        split,
        per,
        (
            f"{base_blocks} tiles = {base_blocks / wave:.2f} waves < {MIN_WAVES}: "
            f"split-K x{split} ({per} {unit} each), fixed-order sum"
        ),
    )


def igemm(rows: int, groups: int, ncols: int, red: int, out_bytes: int) -> LaunchPlan:
    """Forward or grad_x implicit GEMM: ``rows`` output channels per group, ``ncols`` =
    N*OH*OW columns, reduction ``red`` = C/groups*R*S, output of ``out_bytes``."""
    grid_y = check_grid_rows(groups, rows, BM)
    grid_x = cdiv(ncols, BN)
    slabs = cdiv(red, BK)
    room = max(1, SPLIT_WORKSPACE_BYTES // max(out_bytes, 1))
    split, per, why = split_k(grid_x * grid_y, slabs, IGEMM_BLOCKS_PER_SM, MIN_SLABS_PER_SPLIT, room)
    waves = grid_x * grid_y * split / (SMS * IGEMM_BLOCKS_PER_SM)
    return LaunchPlan("igemm", (BM, BN, BK), (grid_x, grid_y, split), split, slabs, per, waves, why)


def wgrad(rows: int, groups: int, ncols: int, red: int, out_bytes: int) -> LaunchPlan:
    """grad_weight split-K GEMM: ``rows`` = K/groups, ``ncols`` = C/groups*R*S, reduction
    ``red`` = N*OH*OW."""
    grid_y = check_grid_rows(groups, rows, WBM)
    grid_x = cdiv(ncols, WBN)
    slabs = cdiv(red, WBK)
    room = max(1, SPLIT_WORKSPACE_BYTES // max(out_bytes, 1))
    split, per, why = split_k(grid_x * grid_y, slabs, WGRAD_BLOCKS_PER_SM, WGRAD_MIN_SLABS_PER_SPLIT, room)
    waves = grid_x * grid_y * split / (SMS * WGRAD_BLOCKS_PER_SM)
    return LaunchPlan("wgrad", (WBM, WBN, WBK), (grid_x, grid_y, split), split, slabs, per, waves, why)


class DirectTile(NamedTuple):
    """A direct block's output tile (th x tw pixels, tiles_w across, tiles per image), the
    channels staged per chunk (cc), the input patch of one channel (php x pwp) and the input
    channels of one split-K chunk (cps, a multiple of cc)."""

    th: int
    tw: int
    tiles_w: int
    tiles: int
    cc: int
    php: int
    pwp: int
    cps: int


def direct_tile(g: ConvGeom) -> DirectTile | None:
    """The direct kernel's block tile, or None if one channel does not fit shared memory."""
    if TK * g.kh * g.kw > WS:
        return None
    tw = min(g.ow, TP)
    th = min(g.oh, max(1, TP // tw))
    while True:
        php = (th - 1) * g.sh + (g.kh - 1) * g.dh + 1
        pwp = (tw - 1) * g.sw + (g.kw - 1) * g.dw + 1
        if php * pwp <= XS:
            break
        if th > 1:
            th = (th + 1) // 2
        elif tw > 1:
            tw = (tw + 1) // 2
        else:
            return None
    cc = min(g.cin_g, XS // (php * pwp), WS // (TK * g.kh * g.kw))
    tiles_w = cdiv(g.ow, tw)
    return DirectTile(th, tw, tiles_w, cdiv(g.oh, th) * tiles_w, cc, php, pwp, g.cin_g)


def direct(g: ConvGeom, itemsize: int) -> tuple[LaunchPlan, DirectTile | None]:
    """The "direct" algorithm's launch for geometry g: the one-thread-per-output kernel for
    thin groups, the tiled kernel, or the implicit GEMM when its tile does not fit."""
    groups = g.cout // g.cout_g
    if g.cout_g <= THIN_MAX:
        blocks = elemwise_blocks(g.n * g.cout * g.oh * g.ow)
        return LaunchPlan(
            "thin",
            (1, 1, g.cin_g * g.kh * g.kw),
            (blocks, 1, 1),
            1,
            0,
            0,
            blocks * ELEMWISE_TPB / (SMS * 2048),
            f"{g.cout_g} output channels per group <= {THIN_MAX}: one thread per output",
        ), None
    tile = direct_tile(g)
    if tile is None:
        plan = igemm_for(g, itemsize)
        return plan._replace(reason="direct tile does not fit shared memory: implicit GEMM; " + plan.reason), None
    base = (g.n * tile.tiles, check_grid_rows(groups, g.cout_g, TK))
    chunks = cdiv(g.cin_g, tile.cc)
    room = max(1, SPLIT_WORKSPACE_BYTES // max(g.n * g.cout * g.oh * g.ow * itemsize, 1))
    split, per, why = split_k(base[0] * base[1], chunks, DIRECT_BLOCKS_PER_SM, 1, room, "channel chunks")
    plan = LaunchPlan(
        "direct",
        (TK, tile.th * tile.tw, tile.cc),
        base + (split,),
        split,
        chunks,
        per,
        base[0] * base[1] * split / (SMS * DIRECT_BLOCKS_PER_SM),
        f"{tile.th}x{tile.tw}-pixel tiles, {tile.cc} channels staged per chunk; {why}",
    )
    return plan, tile._replace(cps=per * tile.cc)


def forced_direct(plan: LaunchPlan, tile: DirectTile, splits: int) -> tuple[LaunchPlan, DirectTile]:
    """A direct launch with ``splits`` input-channel chunks (tests force split-K on tiny shapes)."""
    plan = forced(plan, splits)
    return plan, tile._replace(cps=plan.slabs_per_split * tile.cc)


def igemm_for(g: ConvGeom, itemsize: int) -> LaunchPlan:
    """``igemm`` for a geometry (forward or grad_x)."""
    return igemm(
        g.cout_g, g.cout // g.cout_g, g.n * g.oh * g.ow, g.cin_g * g.kh * g.kw, g.n * g.cout * g.oh * g.ow * itemsize
    )


def conv_launches(p, algorithm: str, itemsize: int, need_input_grad: bool = True) -> dict[str, LaunchPlan]:
    """Every launch one conv2d forward and backward makes on the GPU (``p``: Conv2dParams),
    by name: "forward", "grad_x" (when asked), "grad_weight" (grad_bias is fused into it)."""
    from . import _geometry as geo

    def pick(g: ConvGeom) -> LaunchPlan:
        return direct(g, itemsize)[0] if algorithm == "direct" else igemm_for(g, itemsize)

    out = {"forward": pick(geo.forward(p, True))}
    if need_input_grad:
        out["grad_x"] = pick(geo.input_grad(p))
    out["grad_weight"] = wgrad(
        p.kg, p.groups, p.cg * p.kh * p.kw, p.n * p.oh * p.ow, (p.k * p.cg * p.kh * p.kw + p.k) * itemsize
    )
    return out


def forced(plan: LaunchPlan, splits: int) -> LaunchPlan:
    """``plan`` with ``splits`` reduction chunks (tests force split-K on tiny shapes)."""
    per = cdiv(plan.slabs, max(1, splits))
    split = cdiv(plan.slabs, per)
    blocks_per_split = plan.grid[0] * plan.grid[1]
    waves = plan.waves * blocks_per_split * split / max(plan.blocks, 1)
    return plan._replace(
        grid=(plan.grid[0], plan.grid[1], split),
        split_k=split,
        slabs_per_split=per,
        waves=waves,
        reason=f"forced split-K x{split} ({per} slabs of {plan.tile[2]})",
    )
