"""Winograd's transforms on 512-bit vectors of channels, written as LLVM IR.

``weight_tile<m>`` turns a 3×3 kernel into its α² points (G g G^T),
``input_tile<m>`` turns one tile's α×α input patch into its α² transformed
points (B^T d B) and ``output_tile<m>`` turns α² GEMM results into the tile's
m×m outputs (A^T M A + bias), each for one vector of channels (16 float32
or 8 float64) at once: the patch is read from a channels-innermost copy of
x, the GEMM's results from its pixels × channels rows, so every load and
store is a whole vector and the tile's α² points stay in registers.  (A loop
over the tiles instead, in the lanes, needs strided gathers for the patches,
and LLVM's vectoriser gives up on the in-place rows.)

The formulas are those of Lavin & Gray (2016), points 0, ±1, (±2,) ∞, with
the shared subexpressions of ``fastconv.cpu.conv_winograd``; no fast-math
flag is set, so NaN/Inf propagate through every nonzero coefficient.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .simd import _vec, _vload

__all__ = ["input_tile2", "input_tile4", "output_tile2", "output_tile4", "weight_tile2", "weight_tile4"]


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

    def div(self, x, c):
        return self.b.fdiv(x, ir.Constant(self.vty, [float(c)] * self.vty.count))


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
    e = o.div(o.add(g[0], g[2]), -6)
    f = o.add(o.div(g[0], 24), o.div(g[2], 6))
    return [
        o.scale(0.25, g[0]),
        o.sub(e, o.div(g[1], 6)),
        o.add(e, o.div(g[1], 6)),
        o.add(f, o.div(g[1], 12)),
        o.sub(f, o.div(g[1], 12)),
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


def _make_output_tile(m):
    a = m + 2

    @intrinsic
    def output_tile(typingctx, src, s0, xstride, bias, b0, dst):
        """dst[i*m + j, 0:VW] = (A^T M A)[i, j] + bias[b0 + 0:VW] for i, j < m,
        M[ξ] = src[s0 + ξ*xstride + 0:VW]; dst (m², VW) C-contiguous."""
        if not (isinstance(src, types.Array) and isinstance(dst, types.Array)):
            return None
        sig = types.void(src, types.intp, types.intp, bias, types.intp, dst)

        def codegen(context, builder, signature, args):
            src_v, s0_v, xs_v, bias_v, b0_v, dst_v = args
            _, size, vw, vty = _vec(context, signature.args[0].dtype)
            src_a = context.make_array(signature.args[0])(context, builder, src_v)
            bias_a = context.make_array(signature.args[3])(context, builder, bias_v)
            dst_a = context.make_array(signature.args[5])(context, builder, dst_v)
            i64 = ir.IntType(64)
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
            for i in range(m):
                for j in range(m):
                    p = builder.bitcast(builder.gep(dst_a.data, [ir.Constant(i64, (i * m + j) * vw)]), vty.as_pointer())
                    builder.store(builder.fadd(res[i][j], bv), p, align=size)
            return context.get_dummy_value()

        return sig, codegen

    return output_tile


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
output_tile2, output_tile4 = _make_output_tile(2), _make_output_tile(4)
weight_tile2, weight_tile4 = _make_weight_tile(2), _make_weight_tile(4)
