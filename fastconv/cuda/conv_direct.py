"""Direct convolution on the GPU (numba.cuda): the "direct" algorithm.

Output-stationary.  A block owns one sample n, a TH x TW tile of output pixels
(TH*TW <= TP = 256, shape chosen per call so wide and narrow images both fill
it) and TK = 32 consecutive output channels of one group.  Its 128 threads form
KT x PT = 4 x 32: a warp shares its output channels (weight reads from shared
memory are broadcasts) and spreads over pixels (input reads hit consecutive
banks).  Each thread accumulates KPT x PPT = 8 channels x 8 pixels in registers
(pixels pt + j*PT, channels kt + i*KT), so 16 shared-memory loads feed 64
FMAs per kernel tap.  The reduction over the group's input channels runs in
chunks of CC channels: the chunk's input patch ((TH-1)*sh + (R-1)*dh + 1 rows x
(TW-1)*sw + (S-1)*dw + 1 columns per channel, zero-filled padding) and its
TK x CC x R x S weights are staged in shared memory (XS and WS elements:
12 + 10 KiB in float32), then every thread walks (c, i, j).

When the tiles would fill fewer than two waves, grid z splits the input
channels into chunks (``_launch_plan.direct``): each writes a partial output,
summed in a fixed order afterwards.

grad_x uses the same kernel on the transposed convolution
(``_geometry.input_grad``): a gather over the output positions each input pixel
feeds, no scatter, no atomics.  grad_weight and grad_bias are the deterministic
split-K reduction of ``conv_im2col`` (grad_bias fused into it).

Groups with at most TK/4 output channels (depthwise and similar) use a
simpler kernel instead: one thread per output element reading its taps from
global memory, as most of a 32-channel tile would idle there.

When even one input channel's patch or the TK x R x S weights of one channel
do not fit the shared buffers (kernels larger than 8x8 on a GPU, very large
dilations), the call falls back to the implicit-GEMM kernel, which has no such
limit; ``_launch_plan.direct`` decides among the three.

Kernels are made of inlined device functions, one per phase.  Offsets into
tensors are int64, so tensors beyond 2^31 elements are addressed correctly.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._params import Conv2dParams
from . import _arrays, conv_im2col
from . import _geometry as geo
from . import _launch_plan as lp
from ._arrays import flat, launch
from ._config import device_fn
from ._geometry import ConvGeom, nchw, split2, split3
from ._launch_plan import KPT, KT, PPT, PT, TK, WS, XS

NT = KT * PT  # threads per block
ACC = KPT * PPT

U = np.uint64  # unsigned indices skip numba's negative-index wraparound


@device_fn
def pixel_offsets(off, pix, g, tile):
    """This thread's output pixels as offsets into a channel's staged patch."""
    for j in range(PPT):
        q = pix + j * PT
        if q < tile.th * tile.tw:
            qr, qc = split2(q, tile.tw)
            off[j] = qr * g.sh * tile.pwp + qc * g.sw
        else:
            off[j] = 0


@device_fn
def stage_patch(xs, x, t, cb, ccn, x_base, ih0, iw0, g, tile, zero):
    """xs[(c, row, col)] = the chunk's input patch, zero in the padding and lhs-dilation
    holes.  The loader walks e = t, t + NT, ... with (channel, row, col) counters (no divisions)."""
    c, pr, pc = split3(t, tile.php, tile.pwp)
    dpr, dpc = split2(NT, tile.pwp)
    e = t
    nel = ccn * tile.php * tile.pwp
    while e < nel:
        val = zero
        u, v, ok = geo.dilated_tap(ih0 + pr, iw0 + pc, g)
        if ok:
            val = x[U(x_base + (cb + c) * g.hin * g.win + u * g.win + v)]
        xs[U(e)] = val
        e += NT
        pc += dpc
        pr += dpr
        if pc >= tile.pwp:
            pc -= tile.pwp
            pr += 1
        while pr >= tile.php:
            pr -= tile.php
            c += 1


@device_fn
def stage_weights(ws, w, t, cb, ccn, grp, k0, g, zero):
    """ws[(c, i, j), kk] = the chunk's weights: a thread's KPT weights sit at fixed strides."""
    khkw = g.kh * g.kw
    e = t
    while e < TK * ccn * khkw:
        rest, kk = split2(e, TK)
        ci, rs = split2(rest, khkw)
        co = k0 + kk
        val = zero
        if co < g.cout_g:
            if g.transposed:
                val = w[U(((grp * g.cin_g + cb + ci) * g.cout_g + co) * khkw + khkw - 1 - rs)]
            else:
                val = w[U(((grp * g.cout_g + co) * g.cin_g + cb + ci) * khkw + rs)]
        ws[U(e)] = val
        e += NT


@device_fn
def direct_mma(xs, ws, acc, wf, xf, off, kt, ccn, g, tile):
    """acc += every tap of the staged chunk (KPT x PPT outer products per tap)."""
    patch = tile.php * tile.pwp
    for c in range(ccn):
        for r in range(g.kh):
            for s in range(g.kw):
                wo = ((c * g.kh + r) * g.kw + s) * TK + kt
                xo = c * patch + r * g.dh * tile.pwp + s * g.dw
                for i in range(KPT):
                    wf[i] = ws[U(wo + i * KT)]
                for j in range(PPT):
                    xf[j] = xs[U(xo + off[j])]
                for i in range(KPT):
                    for j in range(PPT):
                        acc[i * PPT + j] += wf[i] * xf[j]


@device_fn
def direct_write(y, b, acc, g, tile, nn, grp, k0, oh0, ow0, kt, pix):
    """y (or split z's partial, with the bias in split 0 only) = acc."""
    zoff = cuda.blockIdx.z * g.n * g.cout * g.oh * g.ow
    for j in range(PPT):
        q = pix + j * PT
        if q < tile.th * tile.tw:
            qr, qc = split2(q, tile.tw)
            ohq = oh0 + qr
            owq = ow0 + qc
            if ohq < g.oh and owq < g.ow:
                for i in range(KPT):
                    co = k0 + kt + i * KT
                    if co < g.cout_g:
                        k = grp * g.cout_g + co
                        v = acc[i * PPT + j]
                        if g.has_bias and cuda.blockIdx.z == 0:
                            v += b[k]
                        y[U(zoff + nchw(nn, k, ohq, owq, g.cout, g.oh, g.ow))] = v


@cuda.jit(cache=True)
def conv_direct_kernel(x, w, b, y, g, tile):
    """y (N, cout, oh, ow) = conv of x (``ConvGeom`` g), output-stationary tiles (``DirectTile``).
    Grid: (N * tiles, groups * channel tiles, splits); split z sums input channels
    [z * cps, (z + 1) * cps) and writes y[z] of a (splits,) + y workspace."""
    xs = cuda.shared.array(XS, dtype=y.dtype)
    ws = cuda.shared.array(WS, dtype=y.dtype)
    acc = cuda.local.array(ACC, dtype=y.dtype)
    wf = cuda.local.array(KPT, dtype=y.dtype)
    xf = cuda.local.array(PPT, dtype=y.dtype)
    off = cuda.local.array(PPT, dtype=np.int64)

    t = cuda.threadIdx.x
    kt, pix = split2(t, PT)
    nn, tr, tc = split3(cuda.blockIdx.x, tile.tiles // tile.tiles_w, tile.tiles_w)
    oh0 = tr * tile.th
    ow0 = tc * tile.tw
    grp, kb = split2(cuda.blockIdx.y, (g.cout_g + TK - 1) // TK)
    k0 = kb * TK
    pixel_offsets(off, pix, g, tile)
    for i in range(ACC):
        acc[i] = 0
    zero = acc[0]  # a 0 of y's dtype (a literal 0 would promote loads to float64)
    ih0 = oh0 * g.sh - g.pt  # patch origin in (lhs-dilated) input coordinates
    iw0 = ow0 * g.sw - g.pl
    x_base = (nn * g.cin + grp * g.cin_g) * g.hin * g.win

    c_end = min(cuda.blockIdx.z * tile.cps + tile.cps, g.cin_g)  # split z: channels [z*cps, c_end)
    for cb in range(cuda.blockIdx.z * tile.cps, c_end, tile.cc):
        ccn = min(tile.cc, c_end - cb)
        stage_patch(xs, x, t, cb, ccn, x_base, ih0, iw0, g, tile, zero)
        stage_weights(ws, w, t, cb, ccn, grp, k0, g, zero)
        cuda.syncthreads()
        direct_mma(xs, ws, acc, wf, xf, off, kt, ccn, g, tile)
        cuda.syncthreads()

    direct_write(y, b, acc, g, tile, nn, grp, k0, oh0, ow0, kt, pix)


@device_fn
def thin_output(x, w, g, i, zero):
    """One output element (flat index i of y) of ``conv_thin_kernel``, without the bias."""
    nk, ohq, owq = split3(i, g.oh, g.ow)
    nn, k = split2(nk, g.cout)
    grp, co = split2(k, g.cout_g)
    khkw = g.kh * g.kw
    acc = zero
    for ci in range(g.cin_g):
        xb = (nn * g.cin + grp * g.cin_g + ci) * g.hin * g.win
        if g.transposed:
            wb = ((grp * g.cin_g + ci) * g.cout_g + co) * khkw + khkw - 1
        else:
            wb = ((grp * g.cout_g + co) * g.cin_g + ci) * khkw
        for r in range(g.kh):
            for s in range(g.kw):
                u, v, ok = geo.dilated_tap(ohq * g.sh - g.pt + r * g.dh, owq * g.sw - g.pl + s * g.dw, g)
                if ok:
                    rs = r * g.kw + s
                    wv = w[U(wb - rs)] if g.transposed else w[U(wb + rs)]
                    acc += x[U(xb + u * g.win + v)] * wv
    return acc


@cuda.jit(cache=True)
def conv_thin_kernel(x, w, b, y, g):
    """Same contract as ``conv_direct_kernel`` for groups with few output channels
    (depthwise): one thread per output element, grid-stride over the flat (N, cout,
    oh, ow) output, taps read straight from global memory (neighbouring threads
    share them through L1).  A 32-channel tile would leave most threads idle there."""
    zero_ = cuda.local.array(1, dtype=y.dtype)
    zero_[0] = 0
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < y.size:
        acc = thin_output(x, w, g, i, zero_[0])
        if g.has_bias:
            acc += b[(i // (g.oh * g.ow)) % g.cout]
        y[U(i)] = acc
        i += step


# --------------------------------------------------------------------------- host side


def launch_conv_direct(
    x, w, b, y, g: ConvGeom, chosen: tuple[lp.LaunchPlan, lp.DirectTile | None] | None = None
) -> None:
    """Launch what ``_launch_plan.direct`` chose (or ``chosen``), writing all of y: the thin-group
    kernel, the tiled kernel (split over input channels when it fills too few waves), or the
    implicit GEMM when the tile does not fit shared memory."""
    if y.size == 0:
        return
    bb = flat(b) if b is not None else flat(y)[:1]
    plan, tile = chosen or lp.direct(g, y.dtype.itemsize)
    if plan.kernel == "thin":
        blocks, tpb = _arrays.elemwise_grid(y.size)
        launch(conv_thin_kernel, blocks, tpb, flat(x), flat(w), bb, flat(y), g)
    elif plan.kernel == "igemm":
        conv_im2col.launch_conv_igemm(x, w, b, y, g, plan)
    else:
        out = y if plan.split_k == 1 else _arrays.device_array((plan.split_k,) + tuple(y.shape), y.dtype)
        launch(conv_direct_kernel, plan.grid, NT, flat(x), flat(w), bb, flat(out), g, tile)
        if plan.split_k > 1:
            conv_im2col.sum_splits(out, y, plan.split_k)


def conv2d_forward_direct(x, weight, bias, p: Conv2dParams):
    """x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or None -> y (N, K, OH, OW)."""
    y = _arrays.empty(p.y_shape, x.dtype)
    launch_conv_direct(x, weight, bias, y, geo.forward(p, bias is not None))
    return y


def conv2d_backward_direct(gy, x, weight, p: Conv2dParams, need_input_grad: bool = True):
    """(grad_x, grad_weight, grad_bias); grad_x by the direct kernel on the transposed conv,
    or None (no allocation, no launch) when ``need_input_grad`` is False."""
    gx = None
    if need_input_grad:
        gx = _arrays.empty(p.x_shape, gy.dtype)
        launch_conv_direct(gy, weight, None, gx, geo.input_grad(p))
    return (gx, *conv_im2col.weight_and_bias_grad(gy, x, p))
