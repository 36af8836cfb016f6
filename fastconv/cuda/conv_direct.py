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

grad_x uses the same kernel on the transposed convolution (grad_output with
lhs dilation = stride, weights transposed and flipped, padding (R-1)*dh - ph):
a gather over the output positions each input pixel feeds, no scatter, no
atomics.  grad_weight and grad_bias are the deterministic split-K reductions of
``conv_im2col`` (a weight-stationary direct kernel would compute the same sums).

Groups with at most TK/4 output channels (depthwise and similar) use a
simpler kernel instead: one thread per output element reading its taps from
global memory, as most of a 32-channel tile would idle there.

When even one input channel's patch or the TK x R x S weights of one channel
do not fit the shared buffers (kernels larger than 8x8 on a GPU, very large
dilations), the call falls back to the implicit-GEMM kernel, which has no such
limit; ``plan`` returning None says so.

Offsets into tensors are int64 (numba's default), so tensors beyond 2^31
elements are addressed correctly.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .._params import Conv2dParams
from . import _arrays, conv_im2col
from ._arrays import MAX_GRID_YZ, SIM, cdiv, flat

if SIM:
    KT, KPT, PT, PPT, XS, WS = 2, 2, 4, 2, 96, 128
else:
    KT, KPT, PT, PPT, XS, WS = 4, 8, 32, 8, 3072, 2560
TK = KT * KPT  # output channels per block
TP = PT * PPT  # output pixels per block (at most)
NT = KT * PT  # threads per block
ACC = KPT * PPT
# Groups with at most this many output channels use the one-thread-per-output kernel.
THIN_MAX = TK // 4

U = np.uint64  # unsigned indices skip numba's negative-index wraparound


@cuda.jit(cache=True)
def conv_direct_kernel(x, w, b, y, has_bias, transposed, cin, hin, win, cout, oh, ow, cin_g, cout_g,
                       kh, kw, sh, sw, pt, pl, dh, dw, lh, lw, th, tw, tiles_w, tiles, cc, php, pwp):
    """y (N, cout, oh, ow) = conv of x (N, cin, hin, win), output-stationary tiles.

    Forward: w (cout, cin_g, kh, kw), lh = lw = 1.  transposed: w is the forward weight
    (cin, cout_g, kh, kw) read transposed and flipped, x read with lhs dilation (lh, lw).
    Grid: (N * tiles, groups * channel tiles); a tile is th x tw output pixels; the
    input patch of one channel is php x pwp; cc channels are staged per chunk.
    """
    xs = cuda.shared.array(XS, dtype=y.dtype)
    ws = cuda.shared.array(WS, dtype=y.dtype)
    acc = cuda.local.array(ACC, dtype=y.dtype)
    wf = cuda.local.array(KPT, dtype=y.dtype)
    xf = cuda.local.array(PPT, dtype=y.dtype)
    off = cuda.local.array(PPT, dtype=np.int64)

    t = cuda.threadIdx.x
    kt = t // PT
    pix = t - kt * PT
    nn = cuda.blockIdx.x // tiles
    tile = cuda.blockIdx.x - nn * tiles
    tr = tile // tiles_w
    oh0 = tr * th
    ow0 = (tile - tr * tiles_w) * tw
    k_tiles = (cout_g + TK - 1) // TK
    g = cuda.blockIdx.y // k_tiles
    k0 = (cuda.blockIdx.y - g * k_tiles) * TK
    khkw = kh * kw
    hw_in = hin * win
    patch = php * pwp
    npix = th * tw
    unit = lh == 1 and lw == 1

    for j in range(PPT):  # this thread's pixels as offsets into a channel's patch
        q = pix + j * PT
        if q < npix:
            qr = q // tw
            off[j] = qr * sh * pwp + (q - qr * tw) * sw
        else:
            off[j] = 0
    for i in range(ACC):
        acc[i] = 0
    zero = acc[0]  # a 0 of y's dtype (a literal 0 would promote loads to float64)

    ih0 = oh0 * sh - pt  # patch origin in (lhs-dilated) input coordinates
    iw0 = ow0 * sw - pl
    x_base = (nn * cin + g * cin_g) * hw_in
    # Patch loader walks e = t, t + NT, ... as (channel, row, col) counters (no divisions).
    pc0 = t % pwp
    rows0 = t // pwp
    c0 = rows0 // php
    pr0 = rows0 - c0 * php
    dpc = NT % pwp
    dpr = NT // pwp

    for cb in range(0, cin_g, cc):
        ccn = min(cc, cin_g - cb)
        nel = ccn * patch
        e = t
        c = c0
        pr = pr0
        pc = pc0
        while e < nel:
            u = ih0 + pr
            v = iw0 + pc
            val = zero
            if unit:
                if u >= 0 and u < hin and v >= 0 and v < win:
                    val = x[U(x_base + (cb + c) * hw_in + u * win + v)]
            elif u >= 0 and v >= 0:
                uq = u // lh
                vq = v // lw
                if uq * lh == u and vq * lw == v and uq < hin and vq < win:
                    val = x[U(x_base + (cb + c) * hw_in + uq * win + vq)]
            xs[U(e)] = val
            e += NT
            pc += dpc
            pr += dpr
            if pc >= pwp:
                pc -= pwp
                pr += 1
            while pr >= php:
                pr -= php
                c += 1
        seg = ccn * khkw
        e = t
        while e < TK * seg:  # ws[(c, i, j), kk]: a thread's KPT weights sit at fixed strides
            rest = e // TK
            co = k0 + e - rest * TK
            ci = rest // khkw
            rs = rest - ci * khkw
            val = zero
            if co < cout_g:
                if transposed:
                    val = w[U(((g * cin_g + cb + ci) * cout_g + co) * khkw + khkw - 1 - rs)]
                else:
                    val = w[U(((g * cout_g + co) * cin_g + cb + ci) * khkw + rs)]
            ws[U(e)] = val
            e += NT
        cuda.syncthreads()
        for c in range(ccn):
            for r in range(kh):
                for s in range(kw):
                    wo = ((c * kh + r) * kw + s) * TK + kt
                    xo = c * patch + r * dh * pwp + s * dw
                    for i in range(KPT):
                        wf[i] = ws[U(wo + i * KT)]
                    for j in range(PPT):
                        xf[j] = xs[U(xo + off[j])]
                    for i in range(KPT):
                        for j in range(PPT):
                            acc[i * PPT + j] += wf[i] * xf[j]
        cuda.syncthreads()

    for j in range(PPT):
        q = pix + j * PT
        if q < npix:
            qr = q // tw
            ohq = oh0 + qr
            owq = ow0 + q - qr * tw
            if ohq < oh and owq < ow:
                for i in range(KPT):
                    co = k0 + kt + i * KT
                    if co < cout_g:
                        k = g * cout_g + co
                        v = acc[i * PPT + j]
                        if has_bias:
                            v += b[k]
                        y[U(((nn * cout + k) * oh + ohq) * ow + owq)] = v


@cuda.jit(cache=True)
def conv_thin_kernel(x, w, b, y, has_bias, transposed, cin, hin, win, cout, oh, ow, cin_g, cout_g,
                     kh, kw, sh, sw, pt, pl, dh, dw, lh, lw):
    """Same contract as ``conv_direct_kernel`` for groups with few output channels
    (depthwise): one thread per output element, grid-stride over the flat (N, cout,
    oh, ow) output, taps read straight from global memory (neighbouring threads
    share them through L1).  A 32-channel tile would leave most threads idle there."""
    zero_ = cuda.local.array(1, dtype=y.dtype)
    zero_[0] = 0
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    ohw = oh * ow
    khkw = kh * kw
    hw_in = hin * win
    unit = lh == 1 and lw == 1
    while i < y.size:
        nk = i // ohw
        q = i - nk * ohw
        nn = nk // cout
        k = nk - nn * cout
        g = k // cout_g
        co = k - g * cout_g
        ohq = q // ow
        h0 = ohq * sh - pt
        w0 = (q - ohq * ow) * sw - pl
        acc = zero_[0]
        for ci in range(cin_g):
            xb = (nn * cin + g * cin_g + ci) * hw_in
            if transposed:
                wb = ((g * cin_g + ci) * cout_g + co) * khkw + khkw - 1
            else:
                wb = ((g * cout_g + co) * cin_g + ci) * khkw
            for r in range(kh):
                u = h0 + r * dh
                if not unit:
                    if u < 0 or u % lh != 0:
                        continue
                    u = u // lh
                if u < 0 or u >= hin:
                    continue
                for s in range(kw):
                    v = w0 + s * dw
                    if not unit:
                        if v < 0 or v % lw != 0:
                            continue
                        v = v // lw
                    if v >= 0 and v < win:
                        rs = r * kw + s
                        wv = w[U(wb - rs)] if transposed else w[U(wb + rs)]
                        acc += x[U(xb + u * win + v)] * wv
        if has_bias:
            acc += b[k]
        y[U(i)] = acc
        i += step


def plan(cout_g: int, cin_g: int, oh: int, ow: int, kh: int, kw: int, sh: int, sw: int,
         dh: int, dw: int) -> tuple[int, int, int, int, int] | None:
    """(th, tw, cc, php, pwp) for a launch, or None if one channel does not fit shared memory."""
    if TK * kh * kw > WS:
        return None
    tw = min(ow, TP)
    th = min(oh, max(1, TP // tw))
    while True:
        php = (th - 1) * sh + (kh - 1) * dh + 1
        pwp = (tw - 1) * sw + (kw - 1) * dw + 1
        if php * pwp <= XS:
            break
        if th > 1:
            th = (th + 1) // 2
        elif tw > 1:
            tw = (tw + 1) // 2
        else:
            return None
    cc = min(cin_g, XS // (php * pwp), WS // (TK * kh * kw))
    return th, tw, cc, php, pwp


def launch_conv_direct(x, w, b, y, transposed, cin, hin, win, cout, oh, ow, cin_g, cout_g,
                       kh, kw, sh, sw, pt, pl, dh, dw, lh, lw) -> None:
    """Launch the direct kernel writing all of y: the thin-group kernel when a group has at
    most THIN_MAX output channels, else the tiled kernel, or the implicit GEMM if its tile
    does not fit shared memory."""
    has_bias = b is not None
    bb = flat(b) if has_bias else flat(y)[:1]
    if cout_g <= THIN_MAX:
        blocks, tpb = _arrays.elemwise_grid(y.size)
        conv_thin_kernel[blocks, tpb](
            flat(x), flat(w), bb, flat(y), has_bias, bool(transposed), cin, hin, win, cout, oh, ow,
            cin_g, cout_g, kh, kw, sh, sw, pt, pl, dh, dw, lh, lw)
        return
    pl_ = plan(cout_g, cin_g, oh, ow, kh, kw, sh, sw, dh, dw)
    if pl_ is None:
        conv_im2col.launch_conv_igemm(x, w, b, y, transposed, cin, hin, win, cout, oh, ow, cin_g,
                                      cout_g, kh, kw, sh, sw, pt, pl, dh, dw, lh, lw)
        return
    th, tw, cc, php, pwp = pl_
    tiles_w = cdiv(ow, tw)
    tiles = cdiv(oh, th) * tiles_w
    n = y.shape[0]
    rows = (cout // cout_g) * cdiv(cout_g, TK)
    if rows > MAX_GRID_YZ:
        raise ValueError(
            f"groups x output-channel tiles is {rows} > {MAX_GRID_YZ} thread-block rows, beyond what "
            "the CUDA backend launches; use fewer groups or the CPU backend"
        )
    conv_direct_kernel[(n * tiles, rows), NT](
        flat(x), flat(w), bb, flat(y), has_bias, bool(transposed), cin, hin, win, cout, oh, ow,
        cin_g, cout_g, kh, kw, sh, sw, pt, pl, dh, dw, lh, lw, th, tw, tiles_w, tiles, cc, php, pwp)


def conv2d_forward_direct(x, weight, bias, p: Conv2dParams):
    """x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or None -> y (N, K, OH, OW)."""
    y = _arrays.empty(p.y_shape, x.dtype)
    launch_conv_direct(x, weight, bias, y, False, **conv_im2col.forward_args(p))
    return y


def conv2d_backward_direct(gy, x, weight, p: Conv2dParams, need_input_grad: bool = True):
    """(grad_x, grad_weight, grad_bias); grad_x by the direct kernel on the transposed conv,
    or None (no allocation, no launch) when ``need_input_grad`` is False."""
    gx = None
    if need_input_grad:
        gx = _arrays.empty(p.x_shape, gy.dtype)
        launch_conv_direct(gy, weight, None, gx, True, **conv_im2col.input_grad_args(p))
    return gx, conv_im2col.weight_grad(gy, x, p), conv_im2col.bias_grad(gy, p)
