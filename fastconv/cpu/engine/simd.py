"""The 512-bit register-tile micro-kernels, written as LLVM IR.

LLVM's loop vectoriser targets 256-bit vectors on AVX-512 CPUs (the
"prefer-256-bit" tuning of every recent Intel core), and Numba offers no
per-function way to change that.  The innermost micro-kernels are therefore
written as LLVM IR with explicit 512-bit vector types, through
``numba.extending.intrinsic``: the backend legalises <16 x float> /
<8 x double> to zmm registers on AVX-512 hardware and splits them into
2 x ymm (AVX2) or 4 x xmm (SSE) elsewhere, so the IR is portable.  Only the
llvm.fma intrinsic (a correctly rounded fused multiply-add) is used; no
fast-math flag is set, so NaN/Inf propagate exactly.

* ``corr_tile8`` (8 output channels x 3 vectors), ``corr_tile`` (4 x 4): a
  correlation over a prepared buffer (``fastconv.cpu.layout``).
* ``pixel_tile`` (6 output pixels x 4 vectors of output channels): the same
  correlation with the output channels in the vector lanes and each pixel a
  broadcast scalar (no padding Q computed); ``pixel_tile2`` and
  ``pixel_tile1`` with 2 and 1 vectors.
* ``dot_tile``: 4 x 3 dot products for grad_weight.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..layout import PIXEL_TILE, TILE_SHAPES

__all__ = ["corr_tile", "corr_tile8", "dot_tile", "pixel_tile", "pixel_tile1", "pixel_tile2"]

_I32 = ir.IntType(32)


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


def _acc_slots(builder, rptrs, nv, vw, vty, size, init_v):
    """Register slots rows x nv vectors for a tile's accumulators: zero, or
    (init != 0) loaded from the accumulator rows at ``rptrs``."""
    i64 = ir.IntType(64)
    zero = ir.Constant(vty, None)
    slots = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in rptrs]
    with builder.if_then(builder.icmp_signed("!=", init_v, ir.Constant(i64, 0))):
        for r, row in zip(rptrs, slots):
            for v, slot in enumerate(row):
                builder.store(_vload(builder, builder.gep(r, [ir.Constant(i64, v * vw)]), vty, size), slot)
    return slots


def _store_slots(builder, rptrs, slots, vw, vty, size):
    """The accumulators back into their rows at ``rptrs``."""
    i64 = ir.IntType(64)
    for r, row in zip(rptrs, slots):
        for v, slot in enumerate(row):
            p = builder.bitcast(builder.gep(r, [ir.Constant(i64, v * vw)]), vty.as_pointer())
            builder.store(builder.load(slot), p, align=size)


def _make_corr_tile(kt, nv):
    """A corr_tile intrinsic for kt output channels x nv vectors."""

    @intrinsic
    def corr_tile(typingctx, inp, base, cstride, cgi, wk, offs, acc, q, init):
        """acc[0:KT, q:q+NV*VW] = (acc[0:KT, q:q+NV*VW] if init else 0) + sum over c < cgi
        and taps t of wk[c, t, k] * inp[base + c*cstride + offs[t] + (q-relative index)].

        A KT output channels x NV vectors (VW = 512 bits / itemsize Q each)
        register tile: KT*NV vector accumulators live in registers across the
        whole reduction; per (c, t): NV unaligned vector loads of the input, KT
        weight broadcasts, KT*NV FMAs.  inp (flat), wk (cgi, T, KT), offs (T,)
        int64, acc (KT, L) C-contiguous."""
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
            rptrs = [
                builder.gep(acc_a.data, [builder.add(builder.mul(ir.Constant(i64, k), row), q_v)]) for k in range(kt)
            ]
            slots = _acc_slots(builder, rptrs, nv, vw, vty, size, init_v)
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
            _store_slots(builder, rptrs, slots, vw, vty, size)
            return context.get_dummy_value()

        return sig, codegen

    return corr_tile


# The two register tiles (shapes in fastconv.cpu.layout.TILE_SHAPES; which
# one a correlation uses is chosen in fastconv._plan).
corr_tile = _make_corr_tile(*TILE_SHAPES[4])
corr_tile8 = _make_corr_tile(*TILE_SHAPES[8])


def _make_pixel_tile(npix, nv):
    """A pixel_tile intrinsic for npix output pixels x nv vectors of output channels."""

    @intrinsic
    def pixel_tile(typingctx, inp, base, cstride, cgi, wk, offs, pix, p0, acc, arow, init):
        """acc[arow + j, 0:NV*VW] = (acc[...] if init else 0) + sum over c < cgi
        and taps t of inp[base + c*cstride + offs[t] + pix[p0 + j]] *
        wk[c, t, 0:NV*VW], j < NPIX.

        The output channels run in the vector lanes and the pixels are
        scalars: NPIX x NV vector accumulators in registers across the whole
        reduction; per (c, t): NV aligned-or-not vector loads of the weights,
        NPIX broadcasts of input elements, NPIX*NV FMAs.  Each pixel has its
        own offset, so no lane is spent on a padding column or row, and
        strides and dilations cost nothing extra.  wk (cgi, T, NV*VW), offs
        (T,) int64, pix int64, acc (rows, NV*VW) C-contiguous."""
        if not (isinstance(inp, types.Array) and isinstance(wk, types.Array) and isinstance(acc, types.Array)):
            return None
        sig = types.void(
            inp, types.intp, types.intp, types.intp, wk, offs, pix, types.intp, acc, types.intp, types.intp
        )

        def codegen(context, builder, signature, args):
            inp_v, base_v, cs_v, cgi_v, wk_v, offs_v, pix_v, p0_v, acc_v, arow_v, init_v = args
            fty, size, vw, vty = _vec(context, signature.args[0].dtype)
            fma = _fma(builder, vty, fty)
            i64 = ir.IntType(64)
            inp_a = context.make_array(signature.args[0])(context, builder, inp_v)
            wk_a = context.make_array(signature.args[4])(context, builder, wk_v)
            offs_a = context.make_array(signature.args[5])(context, builder, offs_v)
            pix_a = context.make_array(signature.args[6])(context, builder, pix_v)
            acc_a = context.make_array(signature.args[8])(context, builder, acc_v)
            ntap = builder.extract_value(offs_a.shape, 0)
            kb = ir.Constant(i64, nv * vw)
            xptrs = [
                builder.gep(
                    inp_a.data,
                    [
                        builder.add(
                            base_v, builder.load(builder.gep(pix_a.data, [builder.add(p0_v, ir.Constant(i64, j))]))
                        )
                    ],
                )
                for j in range(npix)
            ]
            rptrs = [
                builder.gep(acc_a.data, [builder.mul(builder.add(arow_v, ir.Constant(i64, j)), kb)])
                for j in range(npix)
            ]
            slots = _acc_slots(builder, rptrs, nv, vw, vty, size, init_v)
            with cgutils.for_range(builder, cgi_v) as lc:
                cb = builder.mul(lc.index, cs_v)
                wrow = builder.mul(builder.mul(lc.index, ntap), kb)
                with cgutils.for_range(builder, ntap) as lt:
                    off = builder.add(cb, builder.load(builder.gep(offs_a.data, [lt.index])))
                    wptr = builder.gep(wk_a.data, [builder.add(wrow, builder.mul(lt.index, kb))])
                    ws = [_vload(builder, builder.gep(wptr, [ir.Constant(i64, v * vw)]), vty, size) for v in range(nv)]
                    for j in range(npix):
                        xb = _splat(builder, builder.load(builder.gep(xptrs[j], [off])), vty)
                        for v in range(nv):
                            slot = slots[j][v]
                            builder.store(builder.call(fma, [xb, ws[v], builder.load(slot)]), slot)
            _store_slots(builder, rptrs, slots, vw, vty, size)
            return context.get_dummy_value()

        return sig, codegen

    return pixel_tile


# The pixel tile (output pixels x vectors of output channels; whether a
# correlation uses it is chosen in fastconv._plan), and its narrow forms for
# 2 and 1 vectors of output channels (layers with few of them).
pixel_tile = _make_pixel_tile(*PIXEL_TILE)
pixel_tile2 = _make_pixel_tile(PIXEL_TILE[0], 2)
pixel_tile1 = _make_pixel_tile(PIXEL_TILE[0], 1)


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
    sig = ret(
        gys,
        types.intp,
        types.intp,
        xs,
        types.intp,
        types.intp,
        types.intp,
        types.intp,
        types.intp,
        types.intp,
        types.intp,
    )

    def codegen(context, builder, signature, args):
        g_v, gq_v, gks_v, x_v, xq_v, o0_v, o1_v, o2_v, ln_v, nseg_v, ss_v = args
        fty, size, vw, vty = _vec(context, dt)
        fma = _fma(builder, vty, fty)
        sfma = _fma(builder, fty, fty)
        i64 = ir.IntType(64)
        g_a = context.make_array(signature.args[0])(context, builder, g_v)
        x_a = context.make_array(signature.args[3])(context, builder, x_v)
        gptrs = [builder.gep(g_a.data, [builder.add(gq_v, builder.mul(gks_v, ir.Constant(i64, k)))]) for k in range(4)]
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
            with cgutils.for_range_slice(
                builder, builder.add(so, start), builder.add(so, ln_v), ir.Constant(i64, 1)
            ) as (qq, _):
                xv = [builder.load(builder.gep(p, [qq])) for p in xptrs]
                for k in range(4):
                    gv = builder.load(builder.gep(gptrs[k], [qq]))
                    for j in range(3):
                        s = sums[3 * k + j]
                        builder.store(builder.call(sfma, [gv, xv[j], builder.load(s)]), s)
        return context.make_tuple(builder, signature.return_type, [builder.load(s) for s in sums])

    return sig, codegen
