"""Max pooling on the GPU (numba.cuda), PyTorch semantics.

Forward: one thread per output element, grid-stride loop over the flat
(N*C*OH*OW) output with int64 indices; consecutive threads take consecutive
output columns, so loads of a window row and the stores are coalesced and
overlapping windows are served from L1/L2.  Scan order is row-major within the
window; a value replaces the running maximum if it is strictly greater or NaN
(the first maximum wins a tie, the last NaN wins), exactly as the reference.
Pooling is memory-bound: the kernel reads x about once and writes y (and the
int64 indices when asked), nothing else.

Backward scatters grad_output to the argmax indices.  The window geometry is
not known there (indices may come from anywhere), so the kernel cannot gather;
instead it is deterministic per plane without atomics: a group of LANES threads
owns one (n, c) plane, zeroes it, then walks the plane's outputs in rounds of
LANES consecutive outputs.  In a round each lane posts its (index, gradient) in
shared memory; the lowest lane of every distinct index adds the round's
gradients for that index in output order.  The sum for every input element is
therefore taken in exactly the sequential order (bit-identical run to run, and
to a sequential loop).  An index outside its plane is skipped on the device,
so the kernel never writes out of bounds even when the host-side range check
(``index_range``, which synchronises) is left out for indices the forward made.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .._params import Pool2dParams
from . import _arrays, _streams
from . import _geometry as geo
from ._arrays import elemwise_grid, flat, launch
from ._config import SIM, cdiv, device_fn
from ._geometry import split3

# Backward: LANES threads per plane, PLANES planes per block.
LANES = 4 if SIM else 32
PLANES = 2 if SIM else 8
BWD_THREADS = LANES * PLANES
BWD_MAX_BLOCKS = 2 if SIM else 132 * 8

U = np.uint64  # unsigned indices skip numba's negative-index wraparound


@device_fn
def window_max(x, base, oi, oj, g):
    """(max, flat offset in the plane, found) over one window; NaN wins, first max wins ties."""
    h0 = oi * g.sh - g.ph
    w0 = oj * g.sw - g.pw
    best = x[U(base)]  # typed placeholder; replaced by the first in-bounds element
    where = 0
    found = False
    for a in range(g.kh):
        hh = h0 + a * g.dh
        if hh >= 0 and hh < g.h:
            for b in range(g.kw):
                ww = w0 + b * g.dw
                if ww >= 0 and ww < g.w:
                    v = x[U(base + hh * g.w + ww)]
                    if (not found) or v > best or v != v:
                        best = v
                        where = hh * g.w + ww
                        found = True
    return best, where, found


@cuda.jit(cache=True)
def max_pool2d_forward_kernel(x, y, idx, g):
    """y, idx (flat N*C*OH*OW) = max and argmax (flat offset in the H*W plane) of x's
    windows (``PoolGeom`` g; idx is written only when g.with_idx)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < y.size:
        pl, oi, oj = split3(i, g.oh, g.ow)
        best, where, found = window_max(x, pl * g.h * g.w, oi, oj, g)
        if found and not (g.relu and best < 0):  # NaN stays NaN, as nn's ReLU
            y[U(i)] = best
        elif g.relu:
            y[U(i)] = 0
        else:  # a window entirely in the padding (possible with dilation)
            y[U(i)] = -math.inf
        if g.with_idx:
            idx[U(i)] = where
        i += step


@device_fn
def add_round(gx, tgt, val, t, first, gbase, plane_in):
    """The lowest lane of each distinct target adds the round's gradients for it, in lane order."""
    mine = tgt[t]
    leader = mine >= 0 and mine < plane_in
    for j in range(first, t):
        if tgt[j] == mine:
            leader = False
    if leader:
        acc = gx[U(gbase + mine)]
        for j in range(t, first + LANES):
            if tgt[j] == mine:
                acc += val[j]
        gx[U(gbase + mine)] = acc


@cuda.jit(cache=True)
def max_pool2d_backward_kernel(gy, y, idx, gx, nplanes, plane_in, plane_out, relu):
    """gx (flat N*C*H*W) = sum of gy (flat N*C*OH*OW) at idx, per plane, in output order;
    with ``relu`` each gy is first taken back through the ReLU of the forward output y."""
    tgt = cuda.shared.array(BWD_THREADS, dtype=np.int64)
    val = cuda.shared.array(BWD_THREADS, dtype=gy.dtype)
    t = cuda.threadIdx.x
    lane = t % LANES
    first = t - lane  # slot of lane 0 of this plane group
    ngroups = (nplanes + PLANES - 1) // PLANES
    nrounds = (plane_out + LANES - 1) // LANES
    group = cuda.blockIdx.x
    while group < ngroups:  # uniform across the block: every thread reaches the barriers
        plane = group * PLANES + t // LANES
        live = plane < nplanes
        gbase = plane * plane_in
        obase = plane * plane_out
        if live:
            e = lane
            while e < plane_in:
                gx[U(gbase + e)] = 0
                e += LANES
        cuda.syncthreads()
        for rnd in range(nrounds):
            o = rnd * LANES + lane
            active = live and o < plane_out
            if active:
                tgt[t] = idx[U(obase + o)]
                gv = gy[U(obase + o)]
                if relu and not y[U(obase + o)] > 0:
                    gv = gv * 0  # keeps NaN/Inf, as nn's relu_grad
                val[t] = gv
            else:
                tgt[t] = -1 - lane  # distinct from real targets and from each other
            cuda.syncthreads()
            if active:
                add_round(gx, tgt, val, t, first, gbase, plane_in)
            cuda.syncthreads()
        group += cuda.gridDim.x


_no_indices_cache: dict[int, object] = {}


def _no_indices():
    """A 1-element int64 array on the current device, passed when indices are not wanted
    (one per device: a launch may not read another device's memory)."""
    device = _streams.current_device()
    arr = _no_indices_cache.get(device)
    if arr is None:
        arr = _no_indices_cache[device] = _arrays.device_array((1,), np.int64)
    return arr


def max_pool2d_forward(x, p: Pool2dParams, return_indices: bool, relu: bool = False):
    """x (N, C, H, W) device array -> y (N, C, OH, OW), and int64 indices if asked;
    ``relu``: y = max(pool(x), 0) in the same launch."""
    y = _arrays.empty(p.y_shape, x.dtype)
    idx = _arrays.empty(p.y_shape, np.int64) if return_indices else _no_indices()
    if y.size:
        blocks, tpb = elemwise_grid(y.size)
        g = geo.pool(p, return_indices, relu)
        launch(max_pool2d_forward_kernel, blocks, tpb, flat(x), flat(y), flat(idx), g)
    return (y, idx) if return_indices else y


def max_pool2d_backward(gy, indices, p: Pool2dParams, y=None):
    """gy (N, C, OH, OW), int64 indices -> gx (N, C, H, W), deterministic (no atomics);
    with the forward's output ``y`` of a ``relu`` forward, gy goes back through the ReLU first."""
    gx = _arrays.empty(p.x_shape, gy.dtype)
    nplanes = p.n * p.c
    blocks = max(1, min(BWD_MAX_BLOCKS, cdiv(nplanes, PLANES)))
    launch(
        max_pool2d_backward_kernel,
        blocks,
        BWD_THREADS,
        flat(gy),
        flat(gy if y is None else y),
        flat(indices),
        flat(gx),
        nplanes,
        p.h * p.w,
        p.oh * p.ow,
        y is not None,
    )
    return gx
