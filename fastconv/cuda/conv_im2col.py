"""Convolution as implicit GEMM on the GPU (numba.cuda): the "im2col" algorithm.

The columns are never materialised: the GEMM kernels gather im2col entries
straight from x (or grad_output) while filling their shared-memory tiles, so
the algorithm needs no workspace besides the split-K partials of grad_weight.

Forward, per group g:  y[n, g*Kg + m, oh, ow] = sum_r W[m, r] * col[r, (n, oh, ow)]
  with r = (c, i, j) over Cg*R*S and the column index running over N*OH*OW (the
  batch is folded into the GEMM's N dimension, so small images still fill tiles).
grad_x is the same kernel on the transposed convolution: grad_output dilated by
  the stride ("lhs dilation", holes read as 0), weights transposed and flipped,
  padding (R-1)*dh - ph: a gather, never a scatter.
grad_weight, per group: gw[m, (c, i, j)] = sum over (n, oh, ow) of gy * col^T, a GEMM
  whose reduction (N*OH*OW) is long and whose output is small: split-K over the
  reduction into S chunks (S depends on the shapes only), partials in a
  workspace, then a fixed-order sum over the chunks: deterministic, no atomics.
grad_bias: per-(channel, batch-chunk) tree reductions in shared memory, then
  the same fixed-order chunk sum.

GEMM kernel (both variants): a block computes a BM x BN tile of C with NT
threads; each thread owns a TM x TN register tile (rows ty + i*TY, columns
tx + j*TX, strided so shared-memory reads are broadcasts for A and
conflict-free for B).  The reduction walks BK-deep slabs: the next slab's
global loads are issued into registers before the current slab's FMAs and
stored to shared memory after them (register prefetch).  The decomposition of
the slab's reduction indices (c, i, j) or (n, oh, ow) is done once per slab by
BK threads into a small double-buffered shared table, so the gather costs a
few adds and compares per element instead of integer divisions.

Index arithmetic is int64 (numba's default integer width) for every offset
into a tensor, so tensors beyond 2^31 elements are addressed correctly.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._params import Conv2dParams
from . import _arrays
from ._arrays import MAX_GRID_YZ, SIM, cdiv, flat

# Forward / grad_x implicit GEMM tile (GPU: 64x128x8, 128 threads, 8x8 outputs each).
if SIM:
    BM, BN, BK, TM, TN = 4, 8, 4, 2, 2
else:
    BM, BN, BK, TM, TN = 64, 128, 8, 8, 8
TY, TX = BM // TM, BN // TN
NT = TY * TX
A_PER = BM * BK // NT  # A elements each thread loads per slab
B_PER = BK * BN // NT
B_ROWS = NT // BN  # B tile rows covered by one pass of the block
assert BM * BK % NT == 0 and BK * BN % NT == 0 and NT % BN == 0 and BK <= NT
# Shared/local array sizes must be literal module constants for numba.cuda.
A_TILE, B_TILE, TAB2, ACC = BM * BK, BK * BN, 2 * BK, TM * TN

# grad_weight split-K GEMM tile (GPU: 64x128x16, 128 threads, 8x8 outputs each).
if SIM:
    WBM, WBN, WBK, WTM, WTN = 4, 8, 4, 2, 2
else:
    WBM, WBN, WBK, WTM, WTN = 64, 128, 16, 8, 8
WTY, WTX = WBM // WTM, WBN // WTN
WNT = WTY * WTX
WA_PER = WBM * WBK // WNT
WB_PER = WBK * WBN // WNT
WBNP = WBN + max(1, 32 // WBK)  # padded B row: the j-major stores hit distinct banks
assert WBM * WBK % WNT == 0 and WBK * WBN % WNT == 0 and WNT % WBK == 0
WA_TILE, WB_TILE, WTAB2, WACC = WBM * WBK, WBK * WBNP, 2 * WBK, WTM * WTN

# Split-K target: about this many blocks in the grad_weight grid (shape-only rule,
# so the summation order, hence the result, is the same on every GPU).
SPLIT_TARGET_BLOCKS = 4 if SIM else 1024
MIN_SLABS_PER_SPLIT = 2 if SIM else 16

# grad_bias reduction block.
GB_THREADS = 8 if SIM else 256

_INVALID = -(1 << 40)  # an offset that fails every bounds check

# Hot-loop indices are provably >= 0; indexing with an unsigned value skips numba's
# negative-index wraparound (3-5 integer instructions per access otherwise).
U = np.uint64


@cuda.jit(cache=True)
def conv_igemm_kernel(x, w, b, y, has_bias, transposed, cin, hin, win, cout, oh, ow,
                      cin_g, cout_g, kh, kw, sh, sw, pt, pl, dh, dw, lh, lw, ncols):
    """y (N, cout, oh, ow) = conv of x (N, cin, hin, win) by w, as an implicit GEMM.

    Forward: w is (cout, cin_g, kh, kw), lh = lw = 1.  transposed: w is the forward
    weight (cin, cout_g, kh, kw) read transposed and flipped, and x is read with
    lhs dilation (lh, lw) (element u of a dilated row is x[u / lh] if lh divides u).
    Grid: (column tiles, groups * row tiles); ncols = N * oh * ow.
    """
    As = cuda.shared.array(A_TILE, dtype=y.dtype)
    Bs = cuda.shared.array(B_TILE, dtype=y.dtype)
    tab_a = cuda.shared.array(TAB2, dtype=np.int64)
    tab_c = cuda.shared.array(TAB2, dtype=np.int64)
    tab_r = cuda.shared.array(TAB2, dtype=np.int64)
    tab_s = cuda.shared.array(TAB2, dtype=np.int64)
    acc = cuda.local.array(ACC, dtype=y.dtype)
    af = cuda.local.array(TM, dtype=y.dtype)
    bf = cuda.local.array(TN, dtype=y.dtype)
    a_reg = cuda.local.array(A_PER, dtype=y.dtype)
    b_reg = cuda.local.array(B_PER, dtype=y.dtype)

    t = cuda.threadIdx.x
    tx = t % TX
    ty = t // TX
    m_tiles = (cout_g + BM - 1) // BM
    g = cuda.blockIdx.y // m_tiles
    m0 = (cuda.blockIdx.y - g * m_tiles) * BM
    col0 = cuda.blockIdx.x * BN
    khkw = kh * kw
    red = cin_g * khkw  # GEMM reduction length
    hw_in = hin * win
    ohw = oh * ow
    nslabs = (red + BK - 1) // BK

    # A (weights): offset = a_g + m * a_m + tab_a[r]
    a_g = g * cin_g * cout_g * khkw
    a_m = khkw if transposed else red

    # This thread's B column (fixed for the whole kernel): output pixel (n, oh, ow).
    bcol = col0 + t % BN
    col_ok = bcol < ncols
    nn = bcol // ohw
    q = bcol - nn * ohw
    ohq = q // ow
    owq = q - ohq * ow
    x_base = (nn * cin + g * cin_g) * hw_in
    h_base = ohq * sh - pt
    w_base = owq * sw - pl
    unit = lh == 1 and lw == 1

    for i in range(TM * TN):
        acc[i] = 0

    # Slab tables: reduction index r = (ci, i, j) -> A offset, x channel offset, row/col shifts.
    if t < BK:
        for sl in range(2):
            r = sl * BK + t
            if r < red:
                ci = r // khkw
                rs = r - ci * khkw
                ri = rs // kw
                si = rs - ri * kw
                tab_a[sl * BK + t] = ci * cout_g * khkw + khkw - 1 - rs if transposed else r
                tab_c[sl * BK + t] = ci * hw_in
                tab_r[sl * BK + t] = ri * dh
                tab_s[sl * BK + t] = si * dw
            else:
                tab_a[sl * BK + t] = -1
                tab_c[sl * BK + t] = 0
                tab_r[sl * BK + t] = _INVALID
                tab_s[sl * BK + t] = _INVALID
    cuda.syncthreads()

    for slab in range(nslabs + 1):
        buf = (slab % 2) * BK
        if slab < nslabs:  # global -> registers for this slab (in flight during the FMAs below)
            for p in range(A_PER):
                e = t + p * NT
                m = e // BK
                kk = e - m * BK
                ao = tab_a[buf + kk]
                if m0 + m < cout_g and ao >= 0:
                    a_reg[p] = w[U(a_g + (m0 + m) * a_m + ao)]
                else:
                    a_reg[p] = 0
            for p in range(B_PER):
                kk = t // BN + p * B_ROWS
                b_reg[p] = 0
                if col_ok:
                    u = h_base + tab_r[buf + kk]
                    v = w_base + tab_s[buf + kk]
                    if unit:
                        if u >= 0 and u < hin and v >= 0 and v < win:
                            b_reg[p] = x[U(x_base + tab_c[buf + kk] + u * win + v)]
                    elif u >= 0 and v >= 0:
                        uq = u // lh
                        vq = v // lw
                        if uq * lh == u and vq * lw == v and uq < hin and vq < win:
                            b_reg[p] = x[U(x_base + tab_c[buf + kk] + uq * win + vq)]
        if slab > 0:  # FMAs on the previous slab, already in shared memory
            for kk in range(BK):
                for i in range(TM):
                    af[i] = As[U((ty + i * TY) * BK + kk)]
                for j in range(TN):
                    bf[j] = Bs[U(kk * BN + tx + j * TX)]
                for i in range(TM):
                    for j in range(TN):
                        acc[i * TN + j] += af[i] * bf[j]
        cuda.syncthreads()
        if slab < nslabs:
            for p in range(A_PER):
                As[U(t + p * NT)] = a_reg[p]
            for p in range(B_PER):
                Bs[U(t + p * NT)] = b_reg[p]
            if t < BK:  # table for slab + 2 into the buffer this slab just used
                r = (slab + 2) * BK + t
                if r < red:
                    ci = r // khkw
                    rs = r - ci * khkw
                    ri = rs // kw
                    si = rs - ri * kw
                    tab_a[buf + t] = ci * cout_g * khkw + khkw - 1 - rs if transposed else r
                    tab_c[buf + t] = ci * hw_in
                    tab_r[buf + t] = ri * dh
                    tab_s[buf + t] = si * dw
                else:
                    tab_a[buf + t] = -1
                    tab_c[buf + t] = 0
                    tab_r[buf + t] = _INVALID
                    tab_s[buf + t] = _INVALID
        cuda.syncthreads()

    for j in range(TN):
        c = col0 + tx + j * TX
        if c < ncols:
            cn = c // ohw
            cq = c - cn * ohw
            for i in range(TM):
                m = m0 + ty + i * TY
                if m < cout_g:
                    k = g * cout_g + m
                    v = acc[i * TN + j]
                    if has_bias:
                        v += b[k]
                    y[U((cn * cout + k) * ohw + cq)] = v


@cuda.jit(cache=True)
def conv_wgrad_kernel(gy, x, out, k, c, h, w, oh, ow, kg, cg, kh, kw, sh, sw, ph, pw, dh, dw,
                      red, split_len):
    """Split-K implicit GEMM for grad_weight.

    out[z, g*kg + m, (ci, i, j)] = sum over reduction indices jr = (n, oh, ow) in
    split z of gy[n, g*kg + m, oh, ow] * x[n, g*cg + ci, oh*sh - ph + i*dh, ow*sw - pw + j*dw].
    Grid: (column tiles over cg*kh*kw, groups * row tiles over kg, splits).
    """
    As = cuda.shared.array(WA_TILE, dtype=out.dtype)
    Bs = cuda.shared.array(WB_TILE, dtype=out.dtype)
    tab_y = cuda.shared.array(WTAB2, dtype=np.int64)
    tab_x = cuda.shared.array(WTAB2, dtype=np.int64)
    tab_p = cuda.shared.array(WTAB2, dtype=np.int64)
    tab_q = cuda.shared.array(WTAB2, dtype=np.int64)
    col_c = cuda.shared.array(WBN, dtype=np.int64)
    col_r = cuda.shared.array(WBN, dtype=np.int64)
    col_s = cuda.shared.array(WBN, dtype=np.int64)
    acc = cuda.local.array(WACC, dtype=out.dtype)
    af = cuda.local.array(WTM, dtype=out.dtype)
    bf = cuda.local.array(WTN, dtype=out.dtype)
    a_reg = cuda.local.array(WA_PER, dtype=out.dtype)
    b_reg = cuda.local.array(WB_PER, dtype=out.dtype)

    t = cuda.threadIdx.x
    tx = t % WTX
    ty = t // WTX
    m_tiles = (kg + WBM - 1) // WBM
    g = cuda.blockIdx.y // m_tiles
    m0 = (cuda.blockIdx.y - g * m_tiles) * WBM
    col0 = cuda.blockIdx.x * WBN
    khkw = kh * kw
    ncols = cg * khkw
    hw = h * w
    ohw = oh * ow
    j0 = cuda.blockIdx.z * split_len
    j1 = min(j0 + split_len, red)
    nslabs = (j1 - j0 + WBK - 1) // WBK
    y_g = g * kg * ohw  # gy channel offset of the group
    x_g = g * cg * hw

    for i in range(WTM * WTN):
        acc[i] = 0

    # Column table (once per block): column (ci, i, j) -> x channel offset and row/col shifts.
    cc = t
    while cc < WBN:
        col = col0 + cc
        if col < ncols:
            ci = col // khkw
            rs = col - ci * khkw
            ri = rs // kw
            col_c[cc] = ci * hw
            col_r[cc] = ri * dh
            col_s[cc] = (rs - ri * kw) * dw
        else:
            col_c[cc] = 0
            col_r[cc] = _INVALID
            col_s[cc] = _INVALID
        cc += WNT
    # Slab tables: reduction index (n, p, q) -> gy offset, x batch offset, input row/col origin.
    if t < WBK:
        for sl in range(2):
            jr = j0 + sl * WBK + t
            if jr < j1:
                n_ = jr // ohw
                pq = jr - n_ * ohw
                p_ = pq // ow
                tab_y[sl * WBK + t] = n_ * k * ohw + pq
                tab_x[sl * WBK + t] = n_ * c * hw
                tab_p[sl * WBK + t] = p_ * sh - ph
                tab_q[sl * WBK + t] = (pq - p_ * ow) * sw - pw
            else:
                tab_y[sl * WBK + t] = -1
                tab_x[sl * WBK + t] = 0
                tab_p[sl * WBK + t] = _INVALID
                tab_q[sl * WBK + t] = _INVALID
    cuda.syncthreads()

    for slab in range(nslabs + 1):
        buf = (slab % 2) * WBK
        if slab < nslabs:
            for p in range(WA_PER):  # gy: consecutive threads -> consecutive (n, oh, ow)
                e = t + p * WNT
                m = e // WBK
                kk = e - m * WBK
                yo = tab_y[buf + kk]
                if m0 + m < kg and yo >= 0:
                    a_reg[p] = gy[U(yo + y_g + (m0 + m) * ohw)]
                else:
                    a_reg[p] = 0
            for p in range(WB_PER):  # x: consecutive threads -> consecutive (n, oh, ow)
                e = t + p * WNT
                cc = e // WBK
                kk = e - cc * WBK
                u = tab_p[buf + kk] + col_r[cc]
                v = tab_q[buf + kk] + col_s[cc]
                if u >= 0 and u < h and v >= 0 and v < w:
                    b_reg[p] = x[U(tab_x[buf + kk] + x_g + col_c[cc] + u * w + v)]
                else:
                    b_reg[p] = 0
        if slab > 0:
            for kk in range(WBK):
                for i in range(WTM):
                    af[i] = As[U((ty + i * WTY) * WBK + kk)]
                for j in range(WTN):
                    bf[j] = Bs[U(kk * WBNP + tx + j * WTX)]
                for i in range(WTM):
                    for j in range(WTN):
                        acc[i * WTN + j] += af[i] * bf[j]
        cuda.syncthreads()
        if slab < nslabs:
            for p in range(WA_PER):
                As[U(t + p * WNT)] = a_reg[p]
            for p in range(WB_PER):
                e = t + p * WNT
                cc = e // WBK
                Bs[U((e - cc * WBK) * WBNP + cc)] = b_reg[p]
            if t < WBK:
                jr = j0 + (slab + 2) * WBK + t
                if jr < j1:
                    n_ = jr // ohw
                    pq = jr - n_ * ohw
                    p_ = pq // ow
                    tab_y[buf + t] = n_ * k * ohw + pq
                    tab_x[buf + t] = n_ * c * hw
                    tab_p[buf + t] = p_ * sh - ph
                    tab_q[buf + t] = (pq - p_ * ow) * sw - pw
                else:
                    tab_y[buf + t] = -1
                    tab_x[buf + t] = 0
                    tab_p[buf + t] = _INVALID
                    tab_q[buf + t] = _INVALID
        cuda.syncthreads()

    zoff = cuda.blockIdx.z * k * ncols
    for i in range(WTM):
        m = m0 + ty + i * WTY
        if m < kg:
            row = zoff + (g * kg + m) * ncols
            for j in range(WTN):
                col = col0 + tx + j * WTX
                if col < ncols:
                    out[U(row + col)] = acc[i * WTN + j]


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


@cuda.jit(cache=True)
def bias_grad_kernel(gy, out, k, ohw, n_per_split, n):
    """out[z * k + ch] = sum of gy[n, ch, :, :] over samples n in split z (grid (k, splits)).

    Each thread sums a fixed strided subset, then a fixed tree in shared memory:
    the order depends only on the shapes (deterministic)."""
    part = cuda.shared.array(GB_THREADS, dtype=out.dtype)
    t = cuda.threadIdx.x
    ch = cuda.blockIdx.x
    z = cuda.blockIdx.y
    acc = 0.0  # float64 per-thread partial: cheap here (memory-bound) and more accurate
    n0 = z * n_per_split
    n1 = min(n0 + n_per_split, n)
    for nn in range(n0, n1):
        base = (nn * k + ch) * ohw
        e = t
        while e < ohw:
            acc += gy[base + e]
            e += GB_THREADS
    part[t] = acc
    cuda.syncthreads()
    half = GB_THREADS // 2
    while half > 0:
        if t < half:
            part[t] += part[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        out[z * k + ch] = part[0]


# --------------------------------------------------------------------------- host side


def _grid_y(groups: int, m: int, bm: int) -> int:
    gy = groups * cdiv(m, bm)
    if gy > MAX_GRID_YZ:
        raise ValueError(
            f"groups ({groups}) x output-channel tiles is {gy} > {MAX_GRID_YZ} thread-block rows, "
            "beyond what the CUDA backend launches; use fewer groups or the CPU backend"
        )
    return gy


def launch_conv_igemm(x, w, b, y, transposed, cin, hin, win, cout, oh, ow, cin_g, cout_g,
                      kh, kw, sh, sw, pt, pl, dh, dw, lh, lw) -> None:
    """Launch ``conv_igemm_kernel`` writing every element of y (N, cout, oh, ow)."""
    n = y.shape[0]
    ncols = n * oh * ow
    grid = (cdiv(ncols, BN), _grid_y(cout // cout_g, cout_g, BM))
    has_bias = b is not None
    bb = flat(b) if has_bias else flat(y)[:1]
    conv_igemm_kernel[grid, NT](
        flat(x), flat(w), bb, flat(y), has_bias, bool(transposed), cin, hin, win, cout, oh, ow,
        cin_g, cout_g, kh, kw, sh, sw, pt, pl, dh, dw, lh, lw, ncols)


def split_count(blocks: int, red: int, slab: int) -> int:
    """Number of reduction chunks for a split-K launch of ``blocks`` output tiles."""
    want = cdiv(SPLIT_TARGET_BLOCKS, max(blocks, 1))
    most = max(1, red // (slab * MIN_SLABS_PER_SPLIT))
    return int(max(1, min(want, most, MAX_GRID_YZ)))


def weight_grad(gy, x, p: Conv2dParams):
    """grad_weight (K, C/groups, R, S) by the split-K implicit GEMM (deterministic)."""
    gw = _arrays.empty(p.weight_shape, gy.dtype)
    red = p.n * p.oh * p.ow
    ncols = p.cg * p.kh * p.kw
    col_tiles = cdiv(ncols, WBN)
    rows = _grid_y(p.groups, p.kg, WBM)
    nsplit = split_count(col_tiles * rows, red, WBK)
    split_len = cdiv(cdiv(red, nsplit), WBK) * WBK
    nsplit = cdiv(red, split_len)
    out = gw if nsplit == 1 else _arrays.empty((nsplit,) + p.weight_shape, gy.dtype)
    conv_wgrad_kernel[(col_tiles, rows, nsplit), WNT](
        flat(gy), flat(x), flat(out), p.k, p.c, p.h, p.w, p.oh, p.ow, p.kg, p.cg, p.kh, p.kw,
        p.sh, p.sw, p.ph, p.pw, p.dh, p.dw, red, split_len)
    if nsplit > 1:
        blocks, tpb = _arrays.elemwise_grid(gw.size)
        sum_splits_kernel[blocks, tpb](flat(out), flat(gw), nsplit)
    return gw


def bias_grad(gy, p: Conv2dParams):
    """grad_bias (K,) = gy summed over N, OH, OW (deterministic two-level reduction)."""
    gb = _arrays.empty((p.k,), gy.dtype)
    ohw = p.oh * p.ow
    nsplit = max(1, min(p.n, cdiv(SPLIT_TARGET_BLOCKS, p.k), MAX_GRID_YZ))
    n_per = cdiv(p.n, nsplit)
    nsplit = cdiv(p.n, n_per)
    out = gb if nsplit == 1 else _arrays.empty((nsplit, p.k), gy.dtype)
    bias_grad_kernel[(p.k, nsplit), GB_THREADS](flat(gy), flat(out), p.k, ohw, n_per, p.n)
    if nsplit > 1:
        blocks, tpb = _arrays.elemwise_grid(p.k)
        sum_splits_kernel[blocks, tpb](flat(out), gb, nsplit)
    return gb


def input_grad_args(p: Conv2dParams):
    """Geometry of grad_x as a forward convolution of grad_output (see module doc)."""
    return dict(cin=p.k, hin=p.oh, win=p.ow, cout=p.c, oh=p.h, ow=p.w, cin_g=p.kg, cout_g=p.cg,
                kh=p.kh, kw=p.kw, sh=1, sw=1, pt=(p.kh - 1) * p.dh - p.ph, pl=(p.kw - 1) * p.dw - p.pw,
                dh=p.dh, dw=p.dw, lh=p.sh, lw=p.sw)


def forward_args(p: Conv2dParams):
    return dict(cin=p.c, hin=p.h, win=p.w, cout=p.k, oh=p.oh, ow=p.ow, cin_g=p.cg, cout_g=p.kg,
                kh=p.kh, kw=p.kw, sh=p.sh, sw=p.sw, pt=p.ph, pl=p.pw, dh=p.dh, dw=p.dw, lh=1, lw=1)


def conv2d_forward_im2col(x, weight, bias, p: Conv2dParams):
    """x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or None -> y (N, K, OH, OW)."""
    y = _arrays.empty(p.y_shape, x.dtype)
    launch_conv_igemm(x, weight, bias, y, False, **forward_args(p))
    return y


def conv2d_backward_im2col(gy, x, weight, p: Conv2dParams, need_input_grad: bool = True):
    """(grad_x, grad_weight, grad_bias) for grad_output gy (N, K, OH, OW); grad_x is
    None (no allocation, no launch) when ``need_input_grad`` is False."""
    gx = None
    if need_input_grad:
        gx = _arrays.empty(p.x_shape, gy.dtype)
        launch_conv_igemm(gy, weight, None, gx, True, **input_grad_args(p))
    return gx, weight_grad(gy, x, p), bias_grad(gy, p)
