"""fastconv/cpu/conv_pool.py: a first conv fused with the max pooling after it,
and its plan (fastconv._plan.plan_conv_pool).

The forward is checked against the float64 reference conv2d -> max_pool2d; the
backward against the reference's dense backward (pooling scatter, then conv2d
grad_weight) routed through the fused forward's own window codes, so that a
float32 near-tie decided differently than in float64 cannot make a test fail
by chance; in float64 the codes must also equal the reference's indices."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import reference
from fastconv._params import conv2d_params
from fastconv._plan import FUSED_POOL_FAN_IN, plan_conv_pool
from fastconv.cpu import conv_pool
from tests.helpers import assert_close, assert_same_nonfinite, check_grads

# (N, C, H, W), K, (KH, KW), stride, padding, dilation, pool window (= stride)
GEOMETRIES = [
    ((64, 1, 28, 28), 32, (3, 3), 1, 0, 1, (2, 2)),  # the Keras MNIST convnet's first layer
    ((16, 1, 28, 28), 6, (5, 5), 1, 2, 1, (2, 2)),  # LeNet-5: "same", 6 channels in a 16-lane tile
    ((6, 3, 32, 32), 20, (3, 3), 1, 1, 1, (2, 2)),  # RGB, 20 channels: 2 vectors, 12 lanes unused
    ((3, 2, 15, 13), 80, (2, 3), 1, "same", 1, (3, 2)),  # asymmetric "same", two channel blocks
    ((4, 1, 19, 23), 16, (3, 3), 2, 1, 1, (2, 2)),  # stride 2, windows leave a row and a column
    ((2, 2, 21, 17), 33, (3, 3), 1, 2, 2, (2, 3)),  # dilation 2
    ((5, 1, 9, 9), 64, (1, 1), 1, 0, 1, (3, 3)),  # 1x1, 3x3 windows
]


# layers that need grad_x, whose own forward runs on the pixel tiles
GRAD_X_GEOMETRIES = [
    ((16, 32, 13, 13), 64, (3, 3), 1, 0, 1, (2, 2)),  # the Keras MNIST convnet's second layer
    ((4, 16, 12, 12), 48, (3, 3), 1, 1, 1, (2, 2)),  # padded
    ((3, 16, 14, 14), 24, (3, 3), 1, 0, 1, (2, 2)),  # 24 channels in a 2-vector tile
    ((2, 40, 16, 16), 96, (3, 3), 1, 1, 1, (2, 2)),  # two channel blocks, input channels in passes
]


def _plan(x_shape, k, ksize, stride, padding, dilation, pool, dtype=np.float32, need_input_grad=False):
    p = conv2d_params(x_shape, (k, x_shape[1], *ksize), None, stride, padding, dilation, 1)
    return plan_conv_pool(p, np.dtype(dtype), (pool, pool, (0, 0)), need_input_grad)


def _indices(codes, plan):
    """The reference's int64 indices (flat in each conv output plane) of the codes."""
    p = plan.params
    (pkh, pkw), (ph, pw) = plan.pool, plan.pooled
    e = codes.transpose(0, 1, 4, 2, 3).reshape(p.n, -1, ph, pw)[:, : p.k].astype(np.int64)
    qh = np.arange(ph)[:, None]
    qw = np.arange(pw)[None, :]
    return (qh * pkh + e // pkw) * p.ow + qw * pkw + e % pkw


def _reference(x, w, b, g, plan, idx):
    """(pooled y, its indices, grad_weight, grad_bias) of the unfused ops in float64, on x
    padded explicitly (asymmetric "same" included); the backward routed through ``idx``."""
    p = plan.params
    xr = np.pad(x, ((0, 0), (0, 0), (p.ph, p.ph_end), (p.pw, p.pw_end)))
    z = reference.conv2d(xr, w, b, (p.sh, p.sw), 0, (p.dh, p.dw))
    y, ref_idx = reference.max_pool2d(z, plan.pool, return_indices=True)
    gz = reference.max_pool2d_backward(g, idx, z.shape)
    _, gw, gb = reference.conv2d_backward(gz, xr, w, (p.sh, p.sw), 0, (p.dh, p.dw))
    return y, ref_idx, gw, gb


def _inputs(rng, x_shape, k, ksize, dtype):
    c = x_shape[1]
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal((k, c, *ksize)) / np.sqrt(c * ksize[0] * ksize[1])).astype(dtype)
    return x, w, rng.standard_normal(k).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0]}->{g[1]}")
def test_fused_forward_and_grad_weight_match_the_unfused_reference(rng, threads, geometry, dtype):
    x_shape, k, ksize, stride, padding, dilation, pool = geometry
    plan = _plan(x_shape, k, ksize, stride, padding, dilation, pool, dtype)
    assert plan.fused, plan
    x, w, b = _inputs(rng, x_shape, k, ksize, dtype)
    y, codes, xp = conv_pool.forward(x, w, b, plan, keep_codes=True)
    g = rng.standard_normal(y.shape).astype(dtype)
    gw, gb = conv_pool.grad_weight(g, codes, xp, plan)
    idx = _indices(codes, plan)
    y_ref, idx_ref, gw_ref, gb_ref = _reference(x, w, b, g, plan, idx)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert_close(y, y_ref, dtype)
    if dtype == np.float64:  # no near-ties at this precision: the same winners
        np.testing.assert_array_equal(idx, idx_ref)
    assert gw.shape == w.shape and gw.dtype == dtype and gb.dtype == dtype
    assert_close(gw, gw_ref, dtype, "grad_weight")
    assert_close(gb, gb_ref, dtype, "grad_bias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GRAD_X_GEOMETRIES, ids=lambda g: f"{g[0]}->{g[1]}")
def test_fused_forward_and_scatter_of_layers_that_need_grad_x(rng, threads, geometry, dtype):
    x_shape, k, ksize, stride, padding, dilation, pool = geometry
    plan = _plan(x_shape, k, ksize, stride, padding, dilation, pool, dtype, need_input_grad=True)
    assert plan.fused and plan.grad_x, plan
    x, w, b = _inputs(rng, x_shape, k, ksize, dtype)
    y, codes, _ = conv_pool.forward(x, w, b, plan, keep_codes=True)
    g = rng.standard_normal(y.shape).astype(dtype)
    gz = conv_pool.scatter_gradient(g, codes, plan)
    idx = _indices(codes, plan)
    z = reference.conv2d(x, w, b, stride, padding, dilation)
    y_ref, idx_ref = reference.max_pool2d(z, pool, return_indices=True)
    assert_close(y, y_ref, dtype)
    if dtype == np.float64:
        np.testing.assert_array_equal(idx, idx_ref)
    np.testing.assert_array_equal(gz, reference.max_pool2d_backward(g, idx, z.shape))  # a scatter: exact


def test_without_codes_and_without_bias(rng):
    geometry = GEOMETRIES[0]
    x_shape, k, ksize, stride, padding, dilation, pool = geometry
    plan = _plan(x_shape, k, ksize, stride, padding, dilation, pool)
    x, w, _ = _inputs(rng, x_shape, k, ksize, np.float32)
    y, codes, _ = conv_pool.forward(x, w, None, plan, keep_codes=False)
    assert codes is None
    assert_close(y, reference.max_pool2d(reference.conv2d(x, w), pool), np.float32)


def test_ties_and_nan_follow_pytorchs_rule():
    """Constant windows: the first position wins a tie; a NaN always wins (the last one)."""
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 2, 3] = np.nan
    x[0, 0, 3, 2] = np.nan
    w = np.ones((1, 1, 1, 1), np.float32)
    plan = _plan(x.shape, 1, (1, 1), 1, 0, 1, (2, 2))
    y, codes, _ = conv_pool.forward(x, w, None, plan, keep_codes=True)
    idx = _indices(codes, plan)
    np.testing.assert_array_equal(idx[0, 0], [[0, 2], [8, 14]])
    assert np.isnan(y[0, 0, 1, 1]) and (y[0, 0].ravel()[:3] == 0).all()


@pytest.mark.parametrize("where", ["x", "weight", "grad"])
def test_nonfinite_values_propagate_like_the_unfused_ops(rng, where):
    x_shape, k, ksize, stride, padding, dilation, pool = GEOMETRIES[1]
    plan = _plan(x_shape, k, ksize, stride, padding, dilation, pool)
    x, w, b = _inputs(rng, x_shape, k, ksize, np.float32)
    if where == "x":
        x[1, 0, 5, 7], x[3, 0, 0, 0] = np.inf, np.nan
    elif where == "weight":
        w[2, 0, 1, 3] = np.inf
    y, codes, xp = conv_pool.forward(x, w, b, plan, keep_codes=True)
    g = rng.standard_normal(y.shape).astype(np.float32)
    if where == "grad":
        g[0, 1, 2, 3], g[2, 5, 0, 0] = np.nan, -np.inf
    gw, gb = conv_pool.grad_weight(g, codes, xp, plan)
    y_ref, _, gw_ref, gb_ref = _reference(x, w, b, g, plan, _indices(codes, plan))
    assert_same_nonfinite(y, y_ref, np.float32, "y")
    assert_same_nonfinite(gw, gw_ref, np.float32, "grad_weight")
    assert_same_nonfinite(gb, gb_ref, np.float32, "grad_bias")
    assert not np.isfinite(y).all() if where != "grad" else not np.isfinite(gw).all()


def test_grad_weight_by_finite_differences(rng):
    x_shape, k, ksize, stride, padding, dilation, pool = GEOMETRIES[5]
    plan = _plan(x_shape, k, ksize, stride, padding, dilation, pool, np.float64)
    x, w, b = _inputs(rng, x_shape, k, ksize, np.float64)
    y, codes, xp = conv_pool.forward(x, w, b, plan, keep_codes=True)
    g = rng.standard_normal(y.shape)
    gw, gb = conv_pool.grad_weight(g, codes, xp, plan)
    check_grads(lambda w, b: conv_pool.forward(x, w, b, plan, keep_codes=False)[0],
                {"w": w, "b": b}, {"w": gw, "b": gb}, g, rng, points=8)


def test_plan_rules():
    def plan(x_shape=(8, 1, 28, 28), w_shape=(32, 1, 3, 3), pool=((2, 2), (2, 2), (0, 0)), need_input_grad=False,
             groups=1, dtype=np.float32):
        p = conv2d_params(x_shape, w_shape, None, 1, 0, 1, groups)
        return plan_conv_pool(p, np.dtype(dtype), pool, need_input_grad)

    fused = plan()
    assert fused.fused and fused.channels == 32 and fused.pooled == (13, 13) and "fused" in repr(fused)
    assert plan(w_shape=(6, 1, 3, 3)).channels == 16 and plan(w_shape=(200, 1, 3, 3)).channels == 64
    assert plan(dtype=np.float64).channels == 32 and plan(w_shape=(6, 1, 3, 3), dtype=np.float64).channels == 8
    assert plan(w_shape=(20, 1, 3, 3), dtype=np.float64).channels == 32  # 3 vectors: the 4-vector tile
    assert plan(x_shape=(8, 3, 28, 28), w_shape=(8, 3, 3, 3)).fused  # 27 products
    second = plan((8, 32, 13, 13), (64, 32, 3, 3), need_input_grad=True)
    assert second.fused and second.grad_x and "scattered" in repr(second) and second.rows == 5
    assert not plan((8, 64, 56, 56), (64, 64, 3, 3), need_input_grad=True).fused  # Winograd's layer
    kept = {
        "grad_x": plan(need_input_grad=True),  # 9 products: its own forward runs on Q-lane tiles
        "fan-in": plan(x_shape=(8, 4, 28, 28), w_shape=(8, 4, 3, 3)),
        "groups": plan(x_shape=(8, 2, 28, 28), w_shape=(8, 1, 3, 3), groups=2),
        "overlap": plan(pool=((3, 3), (2, 2), (0, 0))),
        "padded": plan(pool=((2, 2), (2, 2), (1, 1))),
        "empty": plan(x_shape=(8, 1, 3, 3), pool=((3, 3), (3, 3), (0, 0))),
    }
    for why, p in kept.items():
        assert not p.fused and "not fused" in repr(p), why
    assert str(4 * 9) in kept["fan-in"].reason and 4 * 9 > FUSED_POOL_FAN_IN

