"""Winograd convolution F(m×m, 3×3) on the CPU (m = 4 or 2; stride 1, dilation 1).

Lavin & Gray (2016): an m×m output tile of a 3×3 correlation is
``A^T [(G g G^T) ⊙ (B^T d B)] A`` for the (m+2)×(m+2) input patch d, so the
α² = (m+2)² transformed points are independent: per point ξ a GEMM
``M[ξ] (K×T) = U[ξ] (K×C) · V[ξ] (C×T)`` over the T tiles.  All α² GEMMs (and
all groups) run as ONE call of the engine's register-tile correlation over a
column buffer: each (ξ, group) is a "group" of the correlation, its C/groups
rows of V are the input channels, one tap at offset 0 and Q = the tile index.

Tiles are processed in chunks of ``plan.cpu.winograd.tiles_per_chunk``
(V and M of a chunk within the plan's workspace bound).  The input transform
reads x with implicit zero padding (any top/left padding, negative = a crop),
so grad_x -- a full correlation of grad_output with the rotated kernel read
as (C, K) -- is the same code with padding 2 - ph.  grad_weight and grad_bias
come from the direct path (its plan in ``plan.cpu.winograd.grad_weight_plan``).

NaN/Inf: the transforms multiply every element of a patch by every
coefficient (zeros included), so a non-finite value in a tile's input patch
makes every output of that tile (all channels) NaN, and a non-finite weight
makes its output channel NaN.  Where PyTorch has a NaN or Inf this path has
NaN (never a finite value); it may also have NaN where PyTorch has ±Inf or a
finite value next to the non-finite input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit, prange

from .. import _alloc
from .common import FASTMATH, empty_bias
from .engine import correlate, pack_weights
from .layout import column_layout, column_ld

if TYPE_CHECKING:
    from .._params import Conv2dParams
    from .._plan import ConvPlan

__all__ = ["backward", "forward", "transform_matrices", "winograd_correlate"]

_ZERO_TAP = np.zeros(1, np.int64)


def transform_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T (α×α), G (α×3), A^T (m×α)) of F(m×m, 3×3), points 0, ±1, (±2,) ∞."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ]
        g = [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"Winograd tile m must be 2 or 4, got {m}")
    return np.array(bt, np.float64), np.array(g, np.float64), np.array(at, np.float64)


@njit(fastmath=FASTMATH, inline="always")
def _bt(m, v, o, st, nb):
    """Rows o + i*st (i < α) of v (α² rows of tiles) <- B^T of them, lane
    by lane (loops LLVM vectorises), written out sparsely: every output that
    depends on an input still gets it, so non-finite values reach every
    output whose window holds them."""
    r0, r1, r2, r3 = v[o, :nb], v[o + st, :nb], v[o + 2 * st, :nb], v[o + 3 * st, :nb]
    if m == 2:
        for q in range(nb):
            d0, d1, d2, d3 = r0[q], r1[q], r2[q], r3[q]
            r0[q], r1[q], r2[q], r3[q] = d0 - d2, d1 + d2, d2 - d1, d1 - d3
        return
    r4, r5 = v[o + 4 * st, :nb], v[o + 5 * st, :nb]
    for q in range(nb):
        d0, d1, d2, d3, d4, d5 = r0[q], r1[q], r2[q], r3[q], r4[q], r5[q]
        r0[q] = 4 * d0 - 5 * d2 + d4
        r1[q] = d3 + d4 - 4 * (d1 + d2)
        r2[q] = 4 * (d1 - d2) + d4 - d3
        r3[q] = 2 * (d3 - d1) + d4 - d2
        r4[q] = 2 * (d1 - d3) + d4 - d2
        r5[q] = 4 * d1 - 5 * d3 + d5


@njit(fastmath=FASTMATH, inline="always")
def _at(m, v, o, st, nb):
    """Rows o + i*st (i < m) of v <- A^T of rows o + ξ*st (ξ < α), lane by lane."""
    r0, r1, r2, r3 = v[o, :nb], v[o + st, :nb], v[o + 2 * st, :nb], v[o + 3 * st, :nb]
    if m == 2:
        for q in range(nb):
            m0, m1, m2, m3 = r0[q], r1[q], r2[q], r3[q]
            r0[q], r1[q] = m0 + m1 + m2, m1 - m2 - m3
        return
    r4, r5 = v[o + 4 * st, :nb], v[o + 5 * st, :nb]
    for q in range(nb):
        m0, m1, m2, m3, m4, m5 = r0[q], r1[q], r2[q], r3[q], r4[q], r5[q]
        r0[q] = m0 + m1 + m2 + m3 + m4
        r1[q] = m1 - m2 + 2 * (m3 - m4)
        r2[q] = m1 + m2 + 4 * (m3 + m4)
        r3[q] = m1 - m2 + 8 * (m3 - m4) + m5


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _input_transform(x, t0, nt, th_n, tw_n, m, top, left, v, ld):
    """v[(ξ*C + c), j] = (B^T d B)[ξ] of tile t0 + j of x (N, C, H, W), d its
    α×α patch from (th*m - top, tw*m - left), zeros outside x; row tails
    past nt zeroed.  t0 and nt are whole rows of tiles.  Parallel over
    (channel, row of tiles): the row's α input rows are copied once into a
    zero-padded strip, its tiles transformed side by side (tile innermost)."""
    c_n, h, w = x.shape[1], x.shape[2], x.shape[3]
    a = m + 2
    rows = nt // tw_n
    width = tw_n * m + 2
    for task in prange(c_n * rows):
        c = task // rows
        tr = task - c * rows
        t = t0 + tr * tw_n
        n = t // (th_n * tw_n)
        h0 = (t // tw_n - n * th_n) * m - top
        strip = np.zeros((a, width), x.dtype)
        lo, hi = max(0, left), min(w + left, width)  # strip columns inside x
        for r in range(a):
            if 0 <= h0 + r < h and hi > lo:
                strip[r, lo:hi] = x[n, c, h0 + r, lo - left : hi - left]
        d = np.empty((a * a, tw_n), x.dtype)
        for r in range(a):
            for s_ in range(a):
                dr = d[r * a + s_]
                sr = strip[r]
                for q in range(tw_n):
                    dr[q] = sr[q * m + s_]
        for s_ in range(a):
            _bt(m, d, s_, a, tw_n)
        for r in range(a):
            _bt(m, d, r * a, 1, tw_n)
        j0 = tr * tw_n
        for xi in range(a * a):
            v[xi * c_n + c, j0 : j0 + tw_n] = d[xi]
            if j0 + tw_n == nt:
                v[xi * c_n + c, nt:ld] = 0
    return v


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _output_transform(mm, t0, nt, th_n, tw_n, m, bias, y):
    """y tile t0 + j <- A^T M A (+ bias), M[ξ] = mm[ξ*K + k, j]; only the
    pixels inside y (N, K, OH, OW).  Parallel over (channel, row of tiles)."""
    k_n, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    a = m + 2
    rows = nt // tw_n
    for task in prange(k_n * rows):
        k = task // rows
        tr = task - k * rows
        t = t0 + tr * tw_n
        n = t // (th_n * tw_n)
        h0 = (t // tw_n - n * th_n) * m
        j0 = tr * tw_n
        mt = np.empty((a * a, tw_n), y.dtype)
        b = bias[k] if bias.shape[0] else 0
        for xi in range(a * a):
            mt[xi] = mm[xi * k_n + k, j0 : j0 + tw_n]
        for nu in range(a):
            _at(m, mt, nu, a, tw_n)
        for i in range(m):
            _at(m, mt, i * a, 1, tw_n)
        for i in range(min(m, oh - h0)):
            yr = y[n, k, h0 + i]
            for s_ in range(m):
                src = mt[i * a + s_]
                for q in range(tw_n):
                    col = q * m + s_
                    if col < ow:
                        yr[col] = src[q] + b
    return y


def _packed_transformed_weights(w: np.ndarray, groups: int, g_mat: np.ndarray, tiling) -> np.ndarray:
    """U = G g G^T of w (Kout, Cin/groups, 3, 3) as the engine's packed weights
    of α²*groups correlation groups: (α²*G, Kout/G, Cin/G, 1 tap)."""
    ko, ci = w.shape[0], w.shape[1]
    u = np.einsum("ar,kcrs,bs->abkc", g_mat, w.astype(np.float64), g_mat)  # (α, α, Kout, Cin/G)
    a = g_mat.shape[0]
    u = u.reshape(a * a * groups, ko // groups, ci, 1).astype(w.dtype)
    return pack_weights(u, tiling)


def winograd_correlate(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    groups: int,
    top: int,
    left: int,
    out: np.ndarray,
    plan: ConvPlan,
    grad: bool = False,
) -> np.ndarray:
    """out (N, Kout, OH, OW) <- bias + 3×3 correlation of x (N, Cin, H, W) with
    w (Kout, Cin/groups, 3, 3), x read from (-top, -left) with zeros outside."""
    c = plan.cpu
    assert c is not None and c.winograd is not None, "a Winograd CPU plan"
    wp = c.winograd
    m = wp.m
    g_mat = transform_matrices(m)[1]
    a2 = (m + 2) ** 2
    n, cin = x.shape[0], x.shape[1]
    kout, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    th_n, tw_n = -(-oh // m), -(-ow // m)
    total = n * th_n * tw_n
    tiling = c.grad_input if grad else c.forward_corr()
    assert tiling is not None
    wpk = _packed_transformed_weights(w, groups, g_mat, tiling)
    b = empty_bias(x.dtype) if bias is None else bias
    tc = min(max(1, wp.tiles_per_chunk // tw_n) * tw_n, total)  # whole rows of tiles
    ld = column_ld(tc, x.dtype.itemsize)
    v = _alloc.empty((a2 * cin, ld), x.dtype)
    mm = _alloc.empty((a2 * kout, ld), x.dtype)
    for t0 in range(0, total, tc):
        nt = min(tc, total - t0)
        _input_transform(x, t0, nt, th_n, tw_n, m, top, left, v, ld)
        lay = column_layout(1, a2 * cin, 1, ld, 1, nt)
        correlate(v.reshape(-1), lay, _ZERO_TAP, wpk, empty_bias(x.dtype), _gemm_out(mm, nt), tiling)
        _output_transform(mm, t0, nt, th_n, tw_n, m, b, out)
    return out


def _gemm_out(mm: np.ndarray, nt: int) -> np.ndarray:
    """mm's first nt columns as the (1, rows, 1, nt) view the engine writes."""
    return mm[:, :nt].reshape(1, mm.shape[0], 1, nt)


def forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, plan: ConvPlan) -> tuple[np.ndarray, None]:
    """(y (N, K, OH, OW), None: nothing kept for the backward)."""
    p = plan.params
    y = _alloc.empty(p.y_shape, x.dtype)
    return winograd_correlate(x, weight, bias, p.groups, p.ph, p.pw, y, plan), None


def _rotated(weight: np.ndarray, p: Conv2dParams) -> np.ndarray:
    """(C, K/groups, 3, 3): the kernel rotated by 180°, in/out channels swapped per group."""
    w5 = weight.reshape(p.groups, p.kg, p.cg, 3, 3)[..., ::-1, ::-1]
    return np.ascontiguousarray(w5.transpose(0, 2, 1, 3, 4)).reshape(p.c, p.kg, 3, 3)


def backward(
    gy: np.ndarray, x: np.ndarray, weight: np.ndarray, plan: ConvPlan, kept: None = None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gx, gw, gb): grad_x by Winograd (a full correlation with the rotated
    kernel), grad_weight and grad_bias by the direct path's plan."""
    from .registry import algorithm_module

    p, c = plan.params, plan.cpu
    assert c is not None and c.winograd is not None, "a Winograd CPU plan"
    wplan = c.winograd.grad_weight_plan
    _, gw, gb = algorithm_module(wplan.backward_algorithm, wplan.backward_layout).backward(gy, x, weight, wplan)
    if not plan.need_input_grad:
        return None, gw, gb
    gx = _alloc.empty(p.x_shape, x.dtype)
    winograd_correlate(gy, _rotated(weight, p), None, p.groups, 2 - p.ph, 2 - p.pw, gx, plan, grad=True)
    return gx, gw, gb
