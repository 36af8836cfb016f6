"""Winograd's transforms on 512-bit vectors of channels, written as LLVM IR.

``weight_tile<m>`` turns 3×3 kernels into their α² points (G g G^T),
``input_tile<m>`` turns a tile's α×α input patch into its α² transformed
points (B^T d B), and ``output_tile_nchw<m>`` turns α² GEMM results into the
tile's m×m outputs (A^T M A + bias), each for one vector of channels (16
float32 or 8 float64) at once.  The patch is read from a channels-innermost
copy of x and the GEMM's results from its tiles × channels rows, so every
load is a whole vector and a tile's α² points stay in registers; the outputs
are turned channel-major in registers (a 4×4 transpose per 128-bit lane) and
each channel's row segment of the tile is one masked store into NCHW.  (A loop
with the tiles in the lanes instead needs strided gathers for the patches,
and LLVM's vectoriser does not vectorise its in-place rows.)

The formulas are those of Lavin & Gray (2016), points 0, ±1, (±2,) ∞; no
fast-math flag is set, so NaN/Inf propagate through every nonzero coefficient.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .simd import _vec, _vload

__all__ = [
    "add_vector",
    "input_tile2",
    "input_tile4",
    "output_tile_nchw2",
    "transpose_block",
    "transpose_block_exact",
    "output_tile_nchw4",
    "weight_tile2",
    "weight_tile4",
]


class _Ops:
    """Vector arithmetic on IR values: a + b, a - b, c * a (c a constant)."""

    def __init__(self, builder, vty):
        self.b, self.vty = builder, vty

    def add(self, x, y):
        return self.b.fadd(x, y)

    def sub(self, x, y):
        return self.b.fsub(x, y)

    def scale(self, c, x):
        return self.b.fmul(ir.Constant(self.vty, [float(c)] * self.vty.count), x)


def bt(o, m, d):
    """B^T d for the α values d (a column or row of a patch)."""
    if m == 2:
        return [o.sub(d[0], d[2]), o.add(d[1], d[2]), o.sub(d[2], d[1]), o.sub(d[1], d[3])]
    d34, d42 = o.add(d[3], d[4]), o.sub(d[4], d[2])
    return [
        o.add(o.sub(o.scale(4, d[0]), o.scale(5, d[2])), d[4]),
        o.sub(d34, o.scale(4, o.add(d[1], d[2]))),
        o.add(o.scale(4, o.sub(d[1], d[2])), o.sub(d[4], d[3])),
        o.add(o.scale(2, o.sub(d[3], d[1])), d42),
        o.add(o.scale(2, o.sub(d[1], d[3])), d42),
        o.add(o.sub(o.scale(4, d[1]), o.scale(5, d[3])), d[5]),
    ]


def at(o, m, v):
    """A^T v for the α values v."""
    if m == 2:
        return [o.add(o.add(v[0], v[1]), v[2]), o.sub(o.sub(v[1], v[2]), v[3])]
    p12, m12 = o.add(v[1], v[2]), o.sub(v[1], v[2])
    p34, m34 = o.add(v[3], v[4]), o.sub(v[3], v[4])
    return [
        o.add(o.add(v[0], p12), p34),
        o.add(m12, o.scale(2, m34)),
        o.add(p12, o.scale(4, p34)),
        o.add(o.add(m12, o.scale(8, m34)), v[5]),
    ]


def g3(o, m, g):
    """G g for the 3 values g (a column or row of a 3×3 kernel)."""
    if m == 2:
        h = o.scale(0.5, o.add(g[0], g[2]))
        return [g[0], o.add(h, o.scale(0.5, g[1])), o.sub(h, o.scale(0.5, g[1])), g[2]]
    # each term times a reciprocal, then summed: a vector division costs tens of
    # cycles (and the transform runs on every call), and scaling before adding
    # keeps every partial sum within a few times the largest weight
    s6, h6 = o.add(o.scale(1 / 6, g[0]), o.scale(1 / 6, g[2])), o.scale(1 / 6, g[1])
    t24, h12 = o.add(o.scale(1 / 24, g[0]), o.scale(1 / 6, g[2])), o.scale(1 / 12, g[1])
    return [
        o.scale(0.25, g[0]),
        o.scale(-1, o.add(s6, h6)),
        o.sub(h6, s6),
        o.add(t24, h12),
        o.sub(t24, h12),
        g[2],
    ]


def _two_d(o, f, m, grid):
    """f applied down the columns, then along the rows, of a square grid."""
    n = len(grid)
    cols = [f(o, m, [grid[r][s] for r in range(n)]) for s in range(n)]
    return [f(o, m, [cols[s][r] for s in range(n)]) for r in range(len(cols[0]))]


def _make_input_tile(m):
    a = m + 2

    @intrinsic
    def input_tile(typingctx, src, s0, rstride, cstride, dst, d0, xstride):
        """dst[d0 + ξ*xstride + 0:VW] = (B^T d B)[ξ] for ξ < α², d[r, s] =
        src[s0 + r*rstride + s*cstride + 0:VW] (a vector of channels)."""
        if not (isinstance(src, types.Array) and isinstance(dst, types.Array)):
            return None
        sig = types.void(src, types.intp, types.intp, types.intp, dst, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            src_v, s0_v, rs_v, cs_v, dst_v, d0_v, xs_v = args
            _, size, _, vty = _vec(context, signature.args[0].dtype)
            src_a = context.make_array(signature.args[0])(context, builder, src_v)
            dst_a = context.make_array(signature.args[4])(context, builder, dst_v)
            i64 = ir.IntType(64)
            grid = [
                [
                    _vload(
                        builder,
                        builder.gep(
                            src_a.data,
                            [
                                builder.add(
                                    s0_v,
                                    builder.add(
                                        builder.mul(rs_v, ir.Constant(i64, r)), builder.mul(cs_v, ir.Constant(i64, s))
                                    ),
                                )
                            ],
                        ),
                        vty,
                        size,
                    )
                    for s in range(a)
                ]
                for r in range(a)
            ]
            res = _two_d(_Ops(builder, vty), bt, m, grid)
            for r in range(a):
                for s in range(a):
                    at_ = builder.add(d0_v, builder.mul(xs_v, ir.Constant(i64, r * a + s)))
                    p = builder.bitcast(builder.gep(dst_a.data, [at_]), vty.as_pointer())
                    builder.store(res[r][s], p, align=size)
            return context.get_dummy_value()

        return sig, codegen

    return input_tile


def _shuffle(builder, a, b, idx):
    i32 = ir.IntType(32)
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, len(idx)), list(idx)))


def _channel_segments(builder, row, vw):
    """For the m vectors of one tile row (lanes = channels), each channel's m
    values as an <m> vector: a 4×4 transpose within each 128-bit lane (eight
    unpack shuffles) for 16 float32 lanes and m = 4, else element by element."""
    m = len(row)
    if m == 4 and vw == 16:
        lo = [j for q in range(4) for j in (4 * q, 16 + 4 * q, 4 * q + 1, 17 + 4 * q)]
        hi = [j for q in range(4) for j in (4 * q + 2, 18 + 4 * q, 4 * q + 3, 19 + 4 * q)]
        lo2 = [j for q in range(4) for j in (4 * q, 4 * q + 1, 16 + 4 * q, 17 + 4 * q)]
        hi2 = [j for q in range(4) for j in (4 * q + 2, 4 * q + 3, 18 + 4 * q, 19 + 4 * q)]
        t0, t1 = _shuffle(builder, row[0], row[1], lo), _shuffle(builder, row[0], row[1], hi)
        t2, t3 = _shuffle(builder, row[2], row[3], lo), _shuffle(builder, row[2], row[3], hi)
        # u[j] holds channel 4q + j in its 128-bit lane q
        u = [_shuffle(builder, t0, t2, lo2), _shuffle(builder, t0, t2, hi2)]
        u += [_shuffle(builder, t1, t3, lo2), _shuffle(builder, t1, t3, hi2)]
        return [_shuffle(builder, u[ln % 4], u[ln % 4], range(4 * (ln // 4), 4 * (ln // 4) + 4)) for ln in range(16)]
    i32 = ir.IntType(32)
    sty = ir.VectorType(row[0].type.element, m)
    segs = []
    for ln in range(vw):
        v = ir.Constant(sty, None)
        for j in range(m):
            v = builder.insert_element(v, builder.extract_element(row[j], ir.Constant(i32, ln)), ir.Constant(i32, j))
        segs.append(v)
    return segs


def _make_output_tile_nchw(m):
    a = m + 2

    @intrinsic
    def output_tile_nchw(typingctx, src, s0, xstride, bias, b0, y, y0, plane, pitch, nl, hi, wi):
        """y[y0 + l*plane + i*pitch + j] = (A^T M A)[i, j] + bias[b0 + l] for
        channels l < nl, i < hi, j < wi (the part of an m×m tile inside y),
        M[ξ] = src[s0 + ξ*xstride + 0:VW].  The m results of a tile row are
        interleaved in registers (channel-major) and each channel's row
        segment written with one masked store, so an NCHW output needs no
        scalar scatter."""
        if not (isinstance(src, types.Array) and isinstance(y, types.Array)):
            return None
        ip = types.intp
        sig = types.void(src, ip, ip, bias, ip, y, ip, ip, ip, ip, ip, ip)

        def codegen(context, builder, signature, args):
            src_v, s0_v, xs_v, bias_v, b0_v, y_v, y0_v, plane_v, pitch_v, nl_v, hi_v, wi_v = args
            fty, size, vw, vty = _vec(context, signature.args[0].dtype)
            src_a = context.make_array(signature.args[0])(context, builder, src_v)
            bias_a = context.make_array(signature.args[3])(context, builder, bias_v)
            y_a = context.make_array(signature.args[5])(context, builder, y_v)
            i64, i32 = ir.IntType(64), ir.IntType(32)
            grid = [
                [
                    _vload(
                        builder,
                        builder.gep(src_a.data, [builder.add(s0_v, builder.mul(xs_v, ir.Constant(i64, r * a + s)))]),
                        vty,
                        size,
                    )
                    for s in range(a)
                ]
                for r in range(a)
            ]
            res = _two_d(_Ops(builder, vty), at, m, grid)
            bv = _vload(builder, builder.gep(bias_a.data, [b0_v]), vty, size)
            sty = ir.VectorType(fty, m)
            mstore = _masked(builder, fty, sty, "store")
            mask = _lane_mask(builder, wi_v, m)
            for i in range(m):
                segs = _channel_segments(builder, [builder.fadd(res[i][j], bv) for j in range(m)], vw)
                with builder.if_then(builder.icmp_signed(">", hi_v, ir.Constant(i64, i))):
                    rbase = builder.add(y0_v, builder.mul(pitch_v, ir.Constant(i64, i)))
                    for ln in range(vw):
                        with builder.if_then(builder.icmp_signed(">", nl_v, ir.Constant(i64, ln))):
                            at_ = builder.add(rbase, builder.mul(plane_v, ir.Constant(i64, ln)))
                            ptr = builder.bitcast(builder.gep(y_a.data, [at_]), sty.as_pointer())
                            builder.call(mstore, [segs[ln], ptr, ir.Constant(i32, size), mask])
            return context.get_dummy_value()

        return sig, codegen

    return output_tile_nchw


def _masked(builder, fty, vty, what):
    """The llvm.masked.load / llvm.masked.store intrinsic for vectors ``vty``."""
    i32 = ir.IntType(32)
    mty = ir.VectorType(ir.IntType(1), vty.count)
    suffix = f"v{vty.count}{'f32' if fty == ir.FloatType() else 'f64'}"
    name = f"llvm.masked.{what}.{suffix}.p0{suffix}"
    if what == "load":
        fnty = ir.FunctionType(vty, [vty.as_pointer(), i32, mty, vty])
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), i32, mty])
    return cgutils.get_or_insert_function(builder.module, fnty, name)


def _lane_mask(builder, n, count):
    """<count x i1>: lane j < n (n an i64 value)."""
    i64, i32 = ir.IntType(64), ir.IntType(32)
    mask = ir.Constant(ir.VectorType(ir.IntType(1), count), None)
    for j in range(count):
        mask = builder.insert_element(mask, builder.icmp_signed(">", n, ir.Constant(i64, j)), ir.Constant(i32, j))
    return mask


def _make_transpose(exact):
    """A transpose_block intrinsic; ``exact``: each destination row stores only
    its first nrows lanes (a masked store), else the whole vector."""

    @intrinsic
    def transpose(typingctx, src, s0, sstride, nrows, ncols, dst, d0, dstride):
        if not (isinstance(src, types.Array) and isinstance(dst, types.Array)):
            return None
        ip = types.intp
        sig = types.void(src, ip, ip, ip, ip, dst, ip, ip)

        def codegen(context, builder, signature, args):
            src_v, s0_v, ss_v, nr_v, nc_v, dst_v, d0_v, ds_v = args
            fty, size, vw, vty = _vec(context, signature.args[0].dtype)
            src_a = context.make_array(signature.args[0])(context, builder, src_v)
            dst_a = context.make_array(signature.args[5])(context, builder, dst_v)
            i64, i32 = ir.IntType(64), ir.IntType(32)
            mload = _masked(builder, fty, vty, "load")
            cols = _lane_mask(builder, nc_v, vw)
            zero = ir.Constant(vty, None)
            rows = []
            for i in range(vw):
                live = builder.icmp_signed(">", nr_v, ir.Constant(i64, i))
                mask = builder.and_(cols, _splat_i1(builder, live, vw))
                ptr = builder.gep(src_a.data, [builder.add(s0_v, builder.mul(ss_v, ir.Constant(i64, i)))])
                rows.append(
                    builder.call(mload, [builder.bitcast(ptr, vty.as_pointer()), ir.Constant(i32, size), mask, zero])
                )
            n = vw
            lo = [k for j in range(n // 2) for k in (j, n + j)]
            hi = [k for j in range(n // 2, n) for k in (j, n + j)]
            for _ in range(n.bit_length() - 1):  # log2(VW) rounds: new[2i], new[2i+1] interleave rows i, i + VW/2
                new = []
                for i in range(n // 2):
                    new += [
                        _shuffle(builder, rows[i], rows[i + n // 2], lo),
                        _shuffle(builder, rows[i], rows[i + n // 2], hi),
                    ]
                rows = new
            if exact:
                mstore = _masked(builder, fty, vty, "store")
                live_rows = _lane_mask(builder, nr_v, vw)
            for j in range(vw):
                with builder.if_then(builder.icmp_signed(">", nc_v, ir.Constant(i64, j))):
                    ptr = builder.gep(dst_a.data, [builder.add(d0_v, builder.mul(ds_v, ir.Constant(i64, j)))])
                    vptr = builder.bitcast(ptr, vty.as_pointer())
                    if exact:
                        builder.call(mstore, [rows[j], vptr, ir.Constant(i32, size), live_rows])
                    else:
                        builder.store(rows[j], vptr, align=size)
            return context.get_dummy_value()

        return sig, codegen

    return transpose


transpose_block = _make_transpose(exact=False)
transpose_block.__doc__ = """transpose_block(src, s0, sstride, nrows, ncols, dst, d0, dstride):
dst[d0 + j*dstride + i] = src[s0 + i*sstride + j] for j < ncols and i < VW
(one vector), 0 for i >= nrows: a VW×VW block transposed in registers
(log2(VW) rounds of interleaves); rows past nrows and columns past ncols are
not read, whole vectors are written for j < ncols."""

transpose_block_exact = _make_transpose(exact=True)
transpose_block_exact.__doc__ = """``transpose_block`` that writes only dst[d0 + j*dstride + i] for
i < nrows (masked stores): for transposing into a caller's array, where the
lanes past nrows belong to other data."""


def _splat_i1(builder, bit, count):
    """<count x i1> with every lane ``bit``."""
    i32 = ir.IntType(32)
    vty = ir.VectorType(ir.IntType(1), count)
    v = builder.insert_element(ir.Constant(vty, None), bit, ir.Constant(i32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, None), ir.Constant(ir.VectorType(i32, count), [0] * count))


def _make_weight_tile(m):
    a = m + 2

    @intrinsic
    def weight_tile(typingctx, src, s0, rstride, dst, d0, xstride):
        """dst[d0 + ξ*xstride + 0:VW] = (G g G^T)[ξ] for ξ < α², g[r, s] =
        src[s0 + (3r + s)*rstride + 0:VW] (a vector of output channels),
        computed in float64 and rounded once."""
        if not (isinstance(src, types.Array) and isinstance(dst, types.Array)):
            return None
        sig = types.void(src, types.intp, types.intp, dst, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            src_v, s0_v, rs_v, dst_v, d0_v, xs_v = args
            fty, size, vw, vty = _vec(context, signature.args[0].dtype)
            dty = ir.VectorType(ir.DoubleType(), vw)
            src_a = context.make_array(signature.args[0])(context, builder, src_v)
            dst_a = context.make_array(signature.args[3])(context, builder, dst_v)
            i64 = ir.IntType(64)
            wide = fty != ir.DoubleType()

            def load(j):
                p = builder.gep(src_a.data, [builder.add(s0_v, builder.mul(rs_v, ir.Constant(i64, j)))])
                v = _vload(builder, p, vty, size)
                return builder.fpext(v, dty) if wide else v

            grid = [[load(3 * r + s) for s in range(3)] for r in range(3)]
            res = _two_d(_Ops(builder, dty), g3, m, grid)
            for r in range(a):
                for s in range(a):
                    at_ = builder.add(d0_v, builder.mul(xs_v, ir.Constant(i64, r * a + s)))
                    p = builder.bitcast(builder.gep(dst_a.data, [at_]), vty.as_pointer())
                    v = builder.fptrunc(res[r][s], vty) if wide else res[r][s]
                    builder.store(v, p, align=size)
            return context.get_dummy_value()

        return sig, codegen

    return weight_tile


# F(2×2, 3×3) and F(4×4, 3×3)
input_tile2, input_tile4 = _make_input_tile(2), _make_input_tile(4)
output_tile_nchw2, output_tile_nchw4 = _make_output_tile_nchw(2), _make_output_tile_nchw(4)
weight_tile2, weight_tile4 = _make_weight_tile(2), _make_weight_tile(4)


@intrinsic
def add_vector(typingctx, dst, d0, src, s0):
    """dst[d0 : d0 + VW] += src[s0 : s0 + VW]: one whole vector (unaligned
    loads and store; LLVM's vectoriser will not prove two Numba arrays
    distinct, so the scalar loop stays scalar)."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)):
        return None
    sig = types.void(dst, types.intp, src, types.intp)

    def codegen(context, builder, signature, args):
        dst_v, d0_v, src_v, s0_v = args
        _, size, _, vty = _vec(context, signature.args[0].dtype)
        dst_a = context.make_array(signature.args[0])(context, builder, dst_v)
        src_a = context.make_array(signature.args[2])(context, builder, src_v)
        dptr = builder.gep(dst_a.data, [d0_v])
        total = builder.fadd(
            _vload(builder, dptr, vty, size), _vload(builder, builder.gep(src_a.data, [s0_v]), vty, size)
        )
        builder.store(total, builder.bitcast(dptr, vty.as_pointer()), align=size)
        return context.get_dummy_value()

    return sig, codegen
