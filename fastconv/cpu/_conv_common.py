"""Helpers shared by the CPU convolution kernels (``conv_direct``, ``conv_im2col``).

* ``FASTMATH``: the LLVM fast-math flags every conv kernel compiles with.
* ``tap_cols``: the output columns a kernel tap reads inside the input.
* ``embed``: copy an NCHW array into the channel-major, zero-bordered,
  optionally polyphase, flattened layout of the direct kernels ("prepared
  input").  Parallel over planes.
* ``bias_grad``: grad_bias = sum of grad_output over N, OH, OW.  Parallel over
  output channels; the inner loop is a contiguous vectorised reduction.
* ``corr_tile`` (4 x 4 vectors), ``corr_tile8`` (8 x 3), ``dot_tile``: the
  512-bit register-tile micro-kernels of the
  direct convolution (LLVM vector IR, see the section at the end).

Geometry of a prepared buffer.  For strides (sh, sw) a zero-padded plane is
split into sh*sw phase planes of Hq x Wq (phase (a, b) holds padded pixels
(a + sh*i, b + sw*j)), each stored in ``rows`` >= Hq rows of pitch Wq.  The
buffer is channel-major: for channel c and phase ph, the N images' planes are
consecutive, so ``Q = n*plane + oh*Wq + ow`` (plane = rows*Wq) is one
flattened index over the whole batch.  Kernel tap (r, s) with dilation
(dh, dw) then reads ``c*cstride + tap_offset(r, s) + Q`` for output pixel
(n, oh, ow): every tap is a constant shift of the same index, whatever the
stride, padding and dilation, and the innermost loops run over long contiguous
ranges of Q even for small images.  For stride 1 there is one phase and Wq is
the padded width (the "pitch"), or, in the forward's "compact" layout, W +
max(left, right) with H + max(top, bottom) rows: consecutive rows (images)
share their zero columns (rows), and the last image's taps read on past its
plane into zeros the channel stride reserves.  Indices Q that are not output pixels (columns
OW..Wq-1, rows OH..rows-1) are "garbage": computed over, never stored.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import _alloc

__all__ = ["FASTMATH", "tap_cols", "embed", "bias_grad", "phase_geometry", "tap_offsets", "empty_bias",
           "corr_tile", "corr_tile8", "dot_tile", "TILE_VECTORS"]

# Fast-math flags: only 'contract' (fuse a*b+c into one FMA) and 'reassoc'
# (reorder sums, which the vectoriser needs for reductions and which lets it
# keep several partial sums).  Both change rounding only.  We never enable
# 'nnan'/'ninf' (or the umbrella 'fast'): with them LLVM may assume no NaN/Inf
# exist and fold x*0 -> 0 or drop NaN checks, so a NaN or +-Inf input would no
# longer propagate as it does in PyTorch.  'nsz'/'arcp'/'afn' buy nothing here.
FASTMATH = {"contract", "reassoc"}


def empty_bias(dtype) -> np.ndarray:
    """The zero-length array the kernels receive for "no bias" (keeps one signature)."""
    return np.zeros(0, dtype=dtype)


def phase_geometry(h: int, w: int, top: int, left: int, bottom: int, right: int,
                   sh: int, sw: int) -> tuple[int, int]:
    """(Hq, Wq): the size of each of the sh*sw phase planes of a plane padded by
    (top, bottom) x (left, right)."""
    hp, wp = h + top + bottom, w + left + right
    return -(-hp // sh), -(-wp // sw)


def tap_offsets(kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, wq: int, phase_stride: int) -> np.ndarray:
    """Offset of kernel tap (r, s) (row-major order) from a channel's start in
    a prepared buffer whose phase blocks are ``phase_stride`` = N*plane apart."""
    offs = _alloc.empty((kh * kw,), np.int64)
    for r in range(kh):
        i, a = divmod(r * dh, sh)  # row shift i inside phase row a
        for s in range(kw):
            j, b = divmod(s * dw, sw)
            offs[r * kw + s] = (a * sw + b) * phase_stride + i * wq + j
    return offs


@njit(inline="always", cache=True)
def tap_cols(j, dw, pw, sw, w, ow):
    """(off, lo, hi) for column tap j: output column o reads input column
    o*sw + off (off = j*dw - pw), which lies in [0, w) exactly for o in
    [lo, hi), 0 <= lo <= hi <= ow (an empty range has lo == hi).

    Shared by the conv kernels, ``embed`` (j = phase, dw = 1) and pooling, so
    the rounding lives in one place; inlined (it runs once per row or tap)."""
    off = j * dw - pw
    lo = 0
    if off < 0:
        lo = min(ow, (-off + sw - 1) // sw)
    hi = 0
    if w - off > 0:
        hi = min(ow, (w - off + sw - 1) // sw)
    return off, lo, max(lo, hi)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def embed(src, dst, top, left, sh, sw, hq, wq, rows, cstride, sums):
    """Channel-major prepared copy of src (N, C, H, W) (see module doc).

    dst (flat, >= C*cstride elements, plane = rows*wq, rows >= hq, cstride >=
    sh*sw*N*plane): element i*wq + j of image n's phase plane (a, b) of
    channel c, at c*cstride + ((a*sw + b)*N + n)*plane, holds the pixel
    (a + sh*i - top, b + sw*j - left) of src[n, c], or 0 outside src.  The
    gaps between channels and the elements after the last one are zeroed.
    ``sums`` (C*sh*sw*N float64, or empty to skip): sums[t] = the sum of the
    values copied into plane t = (c*sh*sw + phase)*N + n (grad_bias of a
    grad_output comes out of the copy, no second pass).  Parallel over
    (channel, phase, image) planes; each row is zeroed and then its valid
    columns copied (contiguous for sw == 1)."""
    n_img, c_n, h, w = src.shape
    nph = sh * sw
    plane = rows * wq
    nplane = c_n * nph * n_img
    want_sums = sums.shape[0] > 0
    for t in prange(nplane):
        n = t % n_img
        u = t // n_img
        phase = u % nph
        c = u // nph
        a = phase // sw
        b = phase - a * sw
        p0 = c * cstride + (phase * n_img + n) * plane
        d = dst[p0:p0 + plane]
        if t % (nph * n_img) == 0:  # one task per channel zeroes the gap after it
            gap = dst[c * cstride + nph * n_img * plane:(c + 1) * cstride]
            for i in range(gap.shape[0]):
                gap[i] = 0
        # columns j with 0 <= b + sw*j - left < w
        _, j0, j1 = tap_cols(b, 1, left, sw, w, wq)
        tot = 0.0
        for i in range(rows):
            row = d[i * wq:(i + 1) * wq]
            ih = a + sh * i - top
            if i >= hq or ih < 0 or ih >= h or j1 == j0:
                row[:] = 0
                continue
            for j in range(j0):
                row[j] = 0
            for j in range(j1, wq):
                row[j] = 0
            sr = src[n, c, ih]
            if sw == 1:
                s0 = b + j0 - left
                seg = row[j0:j1]
                sseg = sr[s0:s0 + (j1 - j0)]
                if want_sums:
                    for j in range(j1 - j0):
                        v = sseg[j]
                        seg[j] = v
                        tot += v
                else:
                    for j in range(j1 - j0):
                        seg[j] = sseg[j]
            else:
                for j in range(j0, j1):
                    v = sr[b + sw * j - left]
                    row[j] = v
                    tot += v
        if want_sums:
            sums[t] = tot
    # explicit loops: an array expression here, outside the prange, would be
    # turned into a parallel region of its own (one launch per statement)
    tail = dst[c_n * cstride:]
    for i in range(tail.shape[0]):
        tail[i] = 0
    return dst


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_grad(gy, gb):
    """gb (K,) <- sum of gy (N, K, OH, OW) over N, OH, OW.

    Parallel over K; the sum runs in float64 (the pass is memory-bound, so
    the wider accumulator costs nothing and keeps float32 sums accurate)."""
    n_img, k, oh, ow = gy.shape
    plane = oh * ow
    g2 = gy.reshape(n_img, k, plane)
    for kk in prange(k):
        tot = 0.0
        for n in range(n_img):
            row = g2[n, kk]
            for i in range(plane):
                tot += row[i]
        gb[kk] = tot
    return gb


# --------------------------------------------------------------------------- 512-bit micro-kernels
#
# LLVM's loop vectoriser targets 256-bit vectors on AVX-512 CPUs (the
# "prefer-256-bit" tuning of every recent Intel core), and Numba offers no
# per-function way to change that.  The two innermost micro-kernels are
# therefore written as LLVM IR with explicit 512-bit vector types, through
# ``numba.extending.intrinsic``: the backend legalises <16 x float> /
# <8 x double> to zmm registers on AVX-512 hardware and splits them into
# 2 x ymm (AVX2) or 4 x xmm (SSE) elsewhere, so the IR is portable.  Only
# the llvm.fma intrinsic (a correctly rounded fused multiply-add) is used;
# no fast-math flag is set, so NaN/Inf propagate exactly.

_I32 = ir.IntType(32)

# Vectors per corr_tile row: a tile covers TILE_VECTORS * 64 bytes of Q per output channel.
TILE_VECTORS = 4


def _vec(context, dtype):
    fty = context.get_value_type(dtype)
    size = context.get_abi_sizeof(fty)
    vw = 64 // size
    return fty, size, vw, ir.VectorType(fty, vw)


def _fma(builder, vty, fty):
    suffix = "f32" if fty == ir.FloatType() else "f64"
    name = f"llvm.fma.v{vty.count}{suffix}" if isinstance(vty, ir.VectorType) else f"llvm.fma.{suffix}"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]), name)


def _splat(builder, val, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), val, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count)
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), mask)


def _vload(builder, ptr, vty, size):
    return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=size)


def _hsum(builder, v):
    """Sum of the lanes of a vector (pairwise halving)."""
    n = v.type.count
    while n > 1:
        h = n // 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, h), list(range(h))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, h), list(range(h, n))))
        v = builder.fadd(lo, hi)
        n = h
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _make_corr_tile(kt, nv):
    """A corr_tile intrinsic for kt output channels x nv vectors."""

    @intrinsic
    def corr_tile(typingctx, inp, base, cstride, cgi, wk, offs, acc, q, init):
        """acc[0:4, q:q+4*VW] = (acc[0:4, q:q+4*VW] if init else 0) + sum over c < cgi and taps t of
        wk[c, t, k] * inp[base + c*cstride + offs[t] + (q-relative index)].

        A 4 output channels x 4 vectors (VW = 512 bits / itemsize Q each) register
        tile: 16 vector accumulators live in registers across the whole reduction;
        per (c, t): 4 unaligned vector loads of the input, 4 weight broadcasts,
        16 FMAs.  inp (flat), wk (cgi, T, 4), offs (T,) int64, acc (4, L) C-contiguous."""
        if not (isinstance(inp, types.Array) and isinstance(wk, types.Array) and isinstance(acc, types.Array)):
            return None
        sig = types.void(inp, types.intp, types.intp, types.intp, wk, offs, acc, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            inp_v, base_v, cs_v, cgi_v, wk_v, offs_v, acc_v, q_v, init_v = args
            fty, size, vw, vty = _vec(context, signature.args[0].dtype)
            fma = _fma(builder, vty, fty)
            inp_a = context.make_array(signature.args[0])(context, builder, inp_v)
            wk_a = context.make_array(signature.args[4])(context, builder, wk_v)
            offs_a = context.make_array(signature.args[5])(context, builder, offs_v)
            acc_a = context.make_array(signature.args[6])(context, builder, acc_v)
            i64 = ir.IntType(64)
            ntap = builder.extract_value(offs_a.shape, 0)
            row = builder.extract_value(acc_a.shape, 1)
            zero = ir.Constant(vty, None)
            slots = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(kt)]
            rptrs = [builder.gep(acc_a.data, [builder.add(builder.mul(ir.Constant(i64, k), row), q_v)]) for k in range(kt)]
            with builder.if_then(builder.icmp_signed("!=", init_v, ir.Constant(i64, 0))):
                for k in range(kt):
                    for v in range(nv):
                        builder.store(_vload(builder, builder.gep(rptrs[k], [ir.Constant(i64, v * vw)]), vty, size),
                                      slots[k][v])
            with cgutils.for_range(builder, cgi_v) as lc:
                cb = builder.add(base_v, builder.mul(lc.index, cs_v))
                wrow = builder.mul(builder.mul(lc.index, ntap), ir.Constant(i64, kt))
                with cgutils.for_range(builder, ntap) as lt:
                    off = builder.load(builder.gep(offs_a.data, [lt.index]))
                    xptr = builder.gep(inp_a.data, [builder.add(cb, off)])
                    xs = [_vload(builder, builder.gep(xptr, [ir.Constant(i64, v * vw)]), vty, size) for v in range(nv)]
                    wptr = builder.gep(wk_a.data, [builder.add(wrow, builder.mul(lt.index, ir.Constant(i64, kt)))])
                    for k in range(kt):
                        wb = _splat(builder, builder.load(builder.gep(wptr, [ir.Constant(i64, k)])), vty)
                        for v in range(nv):
                            slot = slots[k][v]
                            builder.store(builder.call(fma, [wb, xs[v], builder.load(slot)]), slot)
            for k in range(kt):
                for v in range(nv):
                    p = builder.bitcast(builder.gep(rptrs[k], [ir.Constant(i64, v * vw)]), vty.as_pointer())
                    builder.store(builder.load(slots[k][v]), p, align=size)
            return context.get_dummy_value()

        return sig, codegen

    return corr_tile


corr_tile = _make_corr_tile(4, TILE_VECTORS)
corr_tile8 = _make_corr_tile(8, 3)


@intrinsic
def dot_tile(typingctx, gys, gq, gkstride, xs, xq, o0, o1, o2, ln, nseg, sstride):
    """The 12 dot products sum over segments s < nseg and q < ln of
    gys[gq + s*sstride + k*gkstride + q] * xs[xq + s*sstride + o_j + q] for
    k < 4, j < 3, as a tuple ordered (k0j0, k0j1, k0j2, k1j0, ...).

    12 vector accumulators in registers across all segments; per vector of Q:
    4 + 3 loads, 12 FMAs; lanes summed pairwise once at the end, the ln % VW
    remainders done scalar.  Several short segments (one image's output rows
    each) thus cost one horizontal sum, not one per segment."""
    if not (isinstance(gys, types.Array) and isinstance(xs, types.Array)):
        return None
    dt = gys.dtype
    ret = types.UniTuple(dt, 12)
    sig = ret(gys, types.intp, types.intp, xs, types.intp, types.intp, types.intp, types.intp, types.intp,
              types.intp, types.intp)

    def codegen(context, builder, signature, args):
        g_v, gq_v, gks_v, x_v, xq_v, o0_v, o1_v, o2_v, ln_v, nseg_v, ss_v = args
        fty, size, vw, vty = _vec(context, dt)
        fma = _fma(builder, vty, fty)
        sfma = _fma(builder, fty, fty)
        i64 = ir.IntType(64)
        g_a = context.make_array(signature.args[0])(context, builder, g_v)
        x_a = context.make_array(signature.args[3])(context, builder, x_v)
        gptrs = [builder.gep(g_a.data, [builder.add(gq_v, builder.mul(gks_v, ir.Constant(i64, k)))])
                 for k in range(4)]
        xptrs = [builder.gep(x_a.data, [builder.add(xq_v, o)]) for o in (o0_v, o1_v, o2_v)]
        slots = [cgutils.alloca_once_value(builder, ir.Constant(vty, None)) for _ in range(12)]
        nvec = builder.sdiv(ln_v, ir.Constant(i64, vw))
        with cgutils.for_range(builder, nseg_v) as ls:
            so = builder.mul(ls.index, ss_v)
            with cgutils.for_range(builder, nvec) as lp:
                qq = builder.add(so, builder.mul(lp.index, ir.Constant(i64, vw)))
                xv = [_vload(builder, builder.gep(p, [qq]), vty, size) for p in xptrs]
                for k in range(4):
                    gv = _vload(builder, builder.gep(gptrs[k], [qq]), vty, size)
                    for j in range(3):
                        s = slots[3 * k + j]
                        builder.store(builder.call(fma, [gv, xv[j], builder.load(s)]), s)
        sums = [cgutils.alloca_once_value(builder, _hsum(builder, builder.load(s))) for s in slots]
        start = builder.mul(nvec, ir.Constant(i64, vw))
        with cgutils.for_range(builder, nseg_v) as ls:
            so = builder.mul(ls.index, ss_v)
            with cgutils.for_range_slice(builder, builder.add(so, start), builder.add(so, ln_v),
                                         ir.Constant(i64, 1)) as (qq, _):
                xv = [builder.load(builder.gep(p, [qq])) for p in xptrs]
                for k in range(4):
                    gv = builder.load(builder.gep(gptrs[k], [qq]))
                    for j in range(3):
                        s = sums[3 * k + j]
                        builder.store(builder.call(sfma, [gv, xv[j], builder.load(s)]), s)
        return context.make_tuple(builder, signature.return_type, [builder.load(s) for s in sums])

    return sig, codegen
