"""Convolution as implicit GEMM on the GPU (numba.cuda): the "im2col" algorithm.

The columns are never materialised: the GEMM kernels gather im2col entries
straight from x (or grad_output) while filling their shared-memory tiles, so
the algorithm needs no workspace besides split-K partial sums.

Forward, per group g:  y[n, g*Kg + m, oh, ow] = sum_r W[m, r] * col[r, (n, oh, ow)]
  with r = (c, i, j) over Cg*R*S and the column index running over N*OH*OW (the
  batch is folded into the GEMM's N dimension, so small images still fill tiles).
grad_x is the same kernel on the transposed convolution (``_geometry.input_grad``).
grad_weight, per group: gw[m, (c, i, j)] = sum over (n, oh, ow) of gy * col^T, a GEMM
  whose reduction (N*OH*OW) is long and whose output is small.
Split-K (both kernels, chosen by ``_launch_plan`` when the output tiles would
fill fewer than two waves): grid z runs over chunks of the reduction, each
writing a partial result into a workspace, then ``sum_splits_kernel`` adds the
chunks in a fixed order: deterministic, no atomics.
grad_bias is fused into the grad_weight kernel: the blocks of the first column
  tile also sum the gy tile they stage (its rows are output channels) in a fixed
  order, and write it after their grad_weight partial, so one launch and one
  fixed-order chunk sum give both.

GEMM kernel (both variants): a block computes a BM x BN tile of C with NT
threads; each thread owns a TM x TN register tile (rows ty + i*TY, columns
tx + j*TX, strided so shared-memory reads are broadcasts for A and
conflict-free for B).  The reduction walks BK-deep slabs: the next slab's
global loads are issued into registers before the current slab's FMAs and
stored to shared memory after them (register prefetch).  The decomposition of
the slab's reduction indices (c, i, j) or (n, oh, ow) is done once per slab by
BK threads into a small double-buffered shared table (``*_table``), so the
gather costs a few adds and compares per element instead of integer divisions.

Kernels are made of inlined device functions, one per phase (table, load,
multiply, store, write).  Offsets into tensors are int64 and table reads use
unsigned indices (no negative-index wraparound code), so tensors beyond 2^31
elements are addressed correctly.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._params import Conv2dParams
from . import _arrays
from . import _geometry as geo
from . import _launch_plan as lp
from ._arrays import flat, launch
from ._config import device_fn
from ._geometry import ConvGeom, nchw, split2, split3
from ._launch_plan import BK, BM, BN, TM, TN, WBK, WBM, WBN, WTM, WTN, LaunchPlan

TY, TX = BM // TM, BN // TN
NT = TY * TX
A_PER = BM * BK // NT  # A elements each thread loads per slab
B_PER = BK * BN // NT
B_ROWS = NT // BN  # B tile rows covered by one pass of the block
assert BM * BK % NT == 0 and BK * BN % NT == 0 and NT % BN == 0 and BK <= NT and BK % 2 == 0
# Shared/local array sizes must be literal module constants for numba.cuda.
A_TILE, B_TILE, TAB2, ACC = BM * BK, BK * BN, 2 * BK, TM * TN

WTY, WTX = WBM // WTM, WBN // WTN
WNT = WTY * WTX
WA_PER = WBM * WBK // WNT
WB_PER = WBK * WBN // WNT
WBNP = WBN + max(1, 32 // WBK)  # padded B row: the j-major stores hit distinct banks
assert WBM * WBK % WNT == 0 and WBK * WBN % WNT == 0 and WNT % WBK == 0 and WNT >= WBM and WBK % 2 == 0
WA_TILE, WB_TILE, WTAB2, WACC = WBM * WBK, WBK * WBNP, 2 * WBK, WTM * WTN

_INVALID = -(1 << 40)  # an offset that fails every bounds check

# Hot-loop indices are provably >= 0; indexing with an unsigned value skips numba's
# negative-index wraparound (3-5 integer instructions per access otherwise).
U = np.uint64


# --------------------------------------------------------------------------- forward / grad_x phases


@device_fn
def igemm_table(tab, slot, r, red, g):
    """Slab-table entry for reduction index r = (ci, i, j): weight offset, x channel
    offset, row shift, column shift (an invalid r gets offsets that fail every check)."""
    if r < red:
        khkw = g.kh * g.kw
        ci, rs = split2(r, khkw)
        ri, si = split2(rs, g.kw)
        tab[0, slot] = ci * g.cout_g * khkw + khkw - 1 - rs if g.transposed else r
        tab[1, slot] = ci * g.hin * g.win
        tab[2, slot] = ri * g.dh
        tab[3, slot] = si * g.dw
    else:
        tab[0, slot] = -1
        tab[1, slot] = 0
        tab[2, slot] = _INVALID
        tab[3, slot] = _INVALID


@device_fn
def igemm_load_a(w, tab, buf, a_reg, t, m0, a_g, a_m, rows):
    """This thread's weight elements of the slab in ``buf`` -> registers."""
    for p in range(A_PER):
        m, kk = split2(t + p * NT, BK)
        ao = tab[0, U(buf + kk)]
        if m0 + m < rows and ao >= 0:
            a_reg[p] = w[U(a_g + (m0 + m) * a_m + ao)]
        else:
            a_reg[p] = 0


@device_fn
def igemm_load_b(x, tab, buf, b_reg, t, col_ok, x_base, h_base, w_base, g):
    """This thread's im2col elements of the slab (one output pixel) -> registers."""
    for p in range(B_PER):
        kk = U(buf + t // BN + p * B_ROWS)
        b_reg[p] = 0
        if col_ok:
            u, v, ok = geo.dilated_tap(h_base + tab[2, kk], w_base + tab[3, kk], g)
            if ok:
                b_reg[p] = x[U(x_base + tab[1, kk] + u * g.win + v)]


@device_fn
def igemm_step(As, Bs, acc, af, bf, ty, tx, kk):
    """acc += column kk of the A tile times row kk of the B tile (TM x TN FMAs)."""
    for i in range(TM):
        af[i] = As[U((ty + i * TY) * BK + kk)]
    for j in range(TN):
        bf[j] = Bs[U(kk * BN + tx + j * TX)]
    for i in range(TM):
        for j in range(TN):
            acc[i * TN + j] += af[i] * bf[j]


@device_fn
def igemm_mma(As, Bs, acc, af, bf, ty, tx):
    """acc += the slab in shared memory; two steps per iteration so that NVVM sees constant
    offsets between them (it does not unroll the slab by itself)."""
    for k2 in range(0, BK, 2):
        igemm_step(As, Bs, acc, af, bf, ty, tx, k2)
        igemm_step(As, Bs, acc, af, bf, ty, tx, k2 + 1)


@device_fn
def store_slab(As, Bs, a_reg, b_reg, t):
    for p in range(A_PER):
        As[U(t + p * NT)] = a_reg[p]
    for p in range(B_PER):
        Bs[U(t + p * NT)] = b_reg[p]


@device_fn
def igemm_write(y, b, acc, g, grp, m0, col0, t, ncols, zoff):
    """y (or split z's partial at offset zoff) = acc, plus the bias in split 0."""
    ty, tx = split2(t, TX)
    ohw = g.oh * g.ow
    for j in range(TN):
        c = col0 + tx + j * TX
        if c < ncols:
            cn, cq = split2(c, ohw)
            for i in range(TM):
                m = m0 + ty + i * TY
                if m < g.cout_g:
                    k = grp * g.cout_g + m
                    v = acc[i * TN + j]
                    if g.has_bias and zoff == 0:
                        v += b[k]
                    y[U(zoff + (cn * g.cout + k) * ohw + cq)] = v


@cuda.jit(cache=True)
def conv_igemm_kernel(x, w, b, y, g, ncols, split_slabs):
    """y (N, cout, oh, ow) = conv of x by w as an implicit GEMM (``ConvGeom`` g).
    Grid: (column tiles, groups * row tiles, splits); split z sums slabs
    [z * split_slabs, (z + 1) * split_slabs) and writes y[z] of a (splits,) + y workspace."""
    As = cuda.shared.array(A_TILE, dtype=y.dtype)
    Bs = cuda.shared.array(B_TILE, dtype=y.dtype)
    tab = cuda.shared.array((4, TAB2), dtype=np.int64)
    acc = cuda.local.array(ACC, dtype=y.dtype)
    af = cuda.local.array(TM, dtype=y.dtype)
    bf = cuda.local.array(TN, dtype=y.dtype)
    a_reg = cuda.local.array(A_PER, dtype=y.dtype)
    b_reg = cuda.local.array(B_PER, dtype=y.dtype)

    t = cuda.threadIdx.x
    ty, tx = split2(t, TX)
    grp, mt = split2(cuda.blockIdx.y, (g.cout_g + BM - 1) // BM)
    m0 = mt * BM
    col0 = cuda.blockIdx.x * BN
    khkw = g.kh * g.kw
    red = g.cin_g * khkw  # GEMM reduction length
    s0 = cuda.blockIdx.z * split_slabs
    nslabs = min(split_slabs, (red + BK - 1) // BK - s0)
    a_g = grp * g.cin_g * g.cout_g * khkw  # A (weights): a_g + m * a_m + tab[0, r]
    a_m = khkw if g.transposed else red
    bcol = col0 + t % BN  # this thread's B column (output pixel), fixed for the kernel
    col_ok = bcol < ncols
    nn, ohq, owq = split3(bcol, g.oh, g.ow)
    x_base = (nn * g.cin + grp * g.cin_g) * g.hin * g.win
    h_base = ohq * g.sh - g.pt
    w_base = owq * g.sw - g.pl
    for i in range(ACC):
        acc[i] = 0
    if t < BK:
        for sl in range(2):
            igemm_table(tab, sl * BK + t, (s0 + sl) * BK + t, red, g)
    cuda.syncthreads()

    for slab in range(nslabs + 1):
        buf = (slab % 2) * BK
        if slab < nslabs:  # global -> registers for this slab (in flight during the FMAs below)
            igemm_load_a(w, tab, buf, a_reg, t, m0, a_g, a_m, g.cout_g)
            igemm_load_b(x, tab, buf, b_reg, t, col_ok, x_base, h_base, w_base, g)
        if slab > 0:  # FMAs on the previous slab, already in shared memory
            igemm_mma(As, Bs, acc, af, bf, ty, tx)
        cuda.syncthreads()
        if slab < nslabs:
            store_slab(As, Bs, a_reg, b_reg, t)
            if t < BK:  # table for slab + 2 into the buffer this slab just used
                igemm_table(tab, buf + t, (s0 + slab + 2) * BK + t, red, g)
        cuda.syncthreads()

    zoff = cuda.blockIdx.z * (g.n * g.cout * g.oh * g.ow)
    igemm_write(y, b, acc, g, grp, m0, col0, t, ncols, zoff)


# --------------------------------------------------------------------------- grad_weight phases


@device_fn
def wgrad_table(tab, slot, jr, j1, g):
    """Slab-table entry for reduction index jr = (n, p, q): gy offset, x batch offset,
    input row and column origin."""
    if jr < j1:
        n_, p_, q_ = split3(jr, g.oh, g.ow)
        tab[0, slot] = nchw(n_, 0, p_, q_, g.cout, g.oh, g.ow)
        tab[1, slot] = n_ * g.cin * g.hin * g.win
        tab[2, slot] = p_ * g.sh - g.pt
        tab[3, slot] = q_ * g.sw - g.pl
    else:
        tab[0, slot] = -1
        tab[1, slot] = 0
        tab[2, slot] = _INVALID
        tab[3, slot] = _INVALID


@device_fn
def wgrad_columns(col, t, col0, ncols, g):
    """Column table (once per block): column (ci, i, j) -> x channel offset, row and column shift."""
    cc = t
    while cc < WBN:
        if col0 + cc < ncols:
            ci, ri, si = split3(col0 + cc, g.kh, g.kw)
            col[0, cc] = ci * g.hin * g.win
            col[1, cc] = ri * g.dh
            col[2, cc] = si * g.dw
        else:
            col[0, cc] = 0
            col[1, cc] = _INVALID
            col[2, cc] = _INVALID
        cc += WNT


@device_fn
def wgrad_load(gy, x, tab, col, buf, a_reg, b_reg, t, m0, y_g, x_g, g):
    """gy and x elements of the slab -> registers (consecutive threads take consecutive
    (n, oh, ow), so both gathers are coalesced along the output row)."""
    for p in range(WA_PER):
        m, kk = split2(t + p * WNT, WBK)
        yo = tab[0, U(buf + kk)]
        if m0 + m < g.cout_g and yo >= 0:
            a_reg[p] = gy[U(yo + y_g + (m0 + m) * g.oh * g.ow)]
        else:
            a_reg[p] = 0
    for p in range(WB_PER):
        cc, kk = split2(t + p * WNT, WBK)
        u = tab[2, U(buf + kk)] + col[1, U(cc)]
        v = tab[3, U(buf + kk)] + col[2, U(cc)]
        if u >= 0 and u < g.hin and v >= 0 and v < g.win:
            b_reg[p] = x[U(tab[1, U(buf + kk)] + x_g + col[0, U(cc)] + u * g.win + v)]
        else:
            b_reg[p] = 0


@device_fn
def wgrad_step(As, Bs, acc, af, bf, ty, tx, kk):
    for i in range(WTM):
        af[i] = As[U((ty + i * WTY) * WBK + kk)]
    for j in range(WTN):
        bf[j] = Bs[U(kk * WBNP + tx + j * WTX)]
    for i in range(WTM):
        for j in range(WTN):
            acc[i * WTN + j] += af[i] * bf[j]


@device_fn
def wgrad_mma(As, Bs, acc, af, bf, ty, tx):
    for k2 in range(0, WBK, 2):  # two steps per iteration, as in igemm_mma
        wgrad_step(As, Bs, acc, af, bf, ty, tx, k2)
        wgrad_step(As, Bs, acc, af, bf, ty, tx, k2 + 1)


@device_fn
def wgrad_store(As, Bs, a_reg, b_reg, t):
    for p in range(WA_PER):
        As[U(t + p * WNT)] = a_reg[p]
    for p in range(WB_PER):
        cc, kk = split2(t + p * WNT, WBK)
        Bs[U(kk * WBNP + cc)] = b_reg[p]


@device_fn
def row_sum(As, bacc, t):
    """bacc + row t of the staged gy tile, in reduction order (the fused grad_bias)."""
    for kk in range(WBK):
        bacc += As[U(t * WBK + kk)]
    return bacc


@device_fn
def wgrad_write(out, acc, bacc, g, grp, m0, col0, t, ncols):
    """Split z's grad_weight partial, then (first column tile only) its grad_bias partial:
    out[z] is a (K * ncols + K) slice."""
    ty, tx = split2(t, WTX)
    zoff = cuda.blockIdx.z * g.cout * (ncols + 1)
    for i in range(WTM):
        m = m0 + ty + i * WTY
        if m < g.cout_g:
            row = zoff + (grp * g.cout_g + m) * ncols
            for j in range(WTN):
                c = col0 + tx + j * WTX
                if c < ncols:
                    out[U(row + c)] = acc[i * WTN + j]
    if cuda.blockIdx.x == 0 and t < WBM and m0 + t < g.cout_g:
        out[U(zoff + g.cout * ncols + grp * g.cout_g + m0 + t)] = bacc


@cuda.jit(cache=True)
def conv_wgrad_kernel(gy, x, out, g, split_len):
    """Split-K implicit GEMM for grad_weight (``ConvGeom`` g of the forward).

    out[z, grp*kg + m, (ci, i, j)] = sum over reduction indices jr = (n, oh, ow) in
    split z of gy[n, grp*kg + m, oh, ow] * x[n, grp*cg + ci, oh*sh - ph + i*dh, ow*sw - pw + j*dw],
    followed by out[z, K*cg*kh*kw + grp*kg + m] = sum over the same jr of gy[n, grp*kg + m, oh, ow].
    Grid: (column tiles over cg*kh*kw, groups * row tiles over kg, splits).
    """
    As = cuda.shared.array(WA_TILE, dtype=out.dtype)
    Bs = cuda.shared.array(WB_TILE, dtype=out.dtype)
    tab = cuda.shared.array((4, WTAB2), dtype=np.int64)
    col = cuda.shared.array((3, WBN), dtype=np.int64)
    acc = cuda.local.array(WACC, dtype=out.dtype)
    af = cuda.local.array(WTM, dtype=out.dtype)
    bf = cuda.local.array(WTN, dtype=out.dtype)
    a_reg = cuda.local.array(WA_PER, dtype=out.dtype)
    b_reg = cuda.local.array(WB_PER, dtype=out.dtype)

    t = cuda.threadIdx.x
    ty, tx = split2(t, WTX)
    grp, mt = split2(cuda.blockIdx.y, (g.cout_g + WBM - 1) // WBM)
    m0 = mt * WBM
    col0 = cuda.blockIdx.x * WBN
    ncols = g.cin_g * g.kh * g.kw
    red = g.n * g.oh * g.ow
    j0 = cuda.blockIdx.z * split_len
    j1 = min(j0 + split_len, red)
    nslabs = (j1 - j0 + WBK - 1) // WBK
    y_g = grp * g.cout_g * g.oh * g.ow  # gy channel offset of the group
    x_g = grp * g.cin_g * g.hin * g.win
    for i in range(WACC):
        acc[i] = 0
    bacc = 0.0  # float64 grad_bias partial of row t (first column tile only)
    bias_rows = cuda.blockIdx.x == 0 and t < WBM
    wgrad_columns(col, t, col0, ncols, g)
    if t < WBK:
        for sl in range(2):
            wgrad_table(tab, sl * WBK + t, j0 + sl * WBK + t, j1, g)
    cuda.syncthreads()

    for slab in range(nslabs + 1):
        buf = (slab % 2) * WBK
        if slab < nslabs:
            wgrad_load(gy, x, tab, col, buf, a_reg, b_reg, t, m0, y_g, x_g, g)
        if slab > 0:
            wgrad_mma(As, Bs, acc, af, bf, ty, tx)
            if bias_rows:
                bacc = row_sum(As, bacc, t)
        cuda.syncthreads()
        if slab < nslabs:
            wgrad_store(As, Bs, a_reg, b_reg, t)
            if t < WBK:
                wgrad_table(tab, buf + t, j0 + (slab + 2) * WBK + t, j1, g)
        cuda.syncthreads()

    wgrad_write(out, acc, bacc, g, grp, m0, col0, t, ncols)


@cuda.jit(cache=True)
def sum_splits_kernel(parts, out, nsplit):
    """out[i] = sum over s = 0..nsplit-1 of parts[s * out.size + i], in that order."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    size = out.size
    while i < size:
        acc = parts[i]
        for s in range(1, nsplit):
            acc += parts[s * size + i]
        out[i] = acc
        i += step


# --------------------------------------------------------------------------- host side


def plan_igemm(g: ConvGeom, itemsize: int) -> LaunchPlan:
    """The launch of ``conv_igemm_kernel`` for geometry g (``_launch_plan.igemm``)."""
    out_bytes = g.n * g.cout * g.oh * g.ow * itemsize
    return lp.igemm(g.cout_g, geo.groups(g), g.n * g.oh * g.ow, g.cin_g * g.kh * g.kw, out_bytes)


def plan_wgrad(p: Conv2dParams, itemsize: int) -> LaunchPlan:
    out_bytes = p.k * p.cg * p.kh * p.kw * itemsize
    return lp.wgrad(p.kg, p.groups, p.cg * p.kh * p.kw, p.n * p.oh * p.ow, out_bytes)


def sum_splits(parts, out, nsplit: int) -> None:
    blocks, tpb = _arrays.elemwise_grid(out.size)
    launch(sum_splits_kernel, blocks, tpb, flat(parts), flat(out), nsplit)


def launch_conv_igemm(x, w, b, y, g: ConvGeom, plan: LaunchPlan | None = None) -> None:
    """Launch ``conv_igemm_kernel`` writing every element of y (N, cout, oh, ow); split-K
    partials go to a workspace summed in a fixed order."""
    plan = plan or plan_igemm(g, y.dtype.itemsize)
    if y.size == 0:
        return
    out = y if plan.split_k == 1 else _arrays.device_array((plan.split_k,) + tuple(y.shape), y.dtype)
    bb = flat(b) if b is not None else flat(y)[:1]
    launch(
        conv_igemm_kernel, plan.grid, NT, flat(x), flat(w), bb, flat(out), g, g.n * g.oh * g.ow, plan.slabs_per_split
    )
    if plan.split_k > 1:
        sum_splits(out, y, plan.split_k)


def weight_and_bias_grad(gy, x, p: Conv2dParams, plan: LaunchPlan | None = None):
    """(grad_weight (K, C/groups, R, S), grad_bias (K,)) by one split-K implicit GEMM and
    one fixed-order sum of its chunks (deterministic); both are views of one allocation."""
    plan = plan or plan_wgrad(p, gy.dtype.itemsize)
    nw = p.k * p.cg * p.kh * p.kw
    res = _arrays.empty((nw + p.k,), gy.dtype)
    out = res if plan.split_k == 1 else _arrays.empty((plan.split_k, nw + p.k), gy.dtype)
    split_len = plan.slabs_per_split * WBK
    launch(conv_wgrad_kernel, plan.grid, WNT, flat(gy), flat(x), flat(out), geo.forward(p, False), split_len)
    if plan.split_k > 1:
        sum_splits(out, res, plan.split_k)
    return _arrays.reshape(res[:nw], p.weight_shape), res[nw:]


def conv2d_forward_im2col(x, weight, bias, p: Conv2dParams, plan: LaunchPlan | None = None):
    """x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or None -> y (N, K, OH, OW)."""
    y = _arrays.empty(p.y_shape, x.dtype)
    launch_conv_igemm(x, weight, bias, y, geo.forward(p, bias is not None), plan)
    return y


def conv2d_backward_im2col(gy, x, weight, p: Conv2dParams, need_input_grad: bool = True):
    """(grad_x, grad_weight, grad_bias) for grad_output gy (N, K, OH, OW); grad_x is
    None (no allocation, no launch) when ``need_input_grad`` is False."""
    gx = None
    if need_input_grad:
        gx = _arrays.empty(p.x_shape, gy.dtype)
        launch_conv_igemm(gy, weight, None, gx, geo.input_grad(p))
    return (gx, *weight_and_bias_grad(gy, x, p))
