"""Launch decisions (``fastconv.cuda._launch_plan``: split-K when a layer would fill fewer
than two waves) as pure functions, and forced split-K launches against the reference on
tiny shapes: the chunks are summed in a fixed order, so results are run-to-run identical."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import reference
from fastconv._params import conv2d_params
from fastconv.cuda import _geometry as geo
from fastconv.cuda import _launch_plan as lp

from tests.cuda.cudahelpers import dev, host
from tests.helpers import assert_close


@pytest.fixture
def h100(monkeypatch):
    """The GPU tile sizes and reference GPU, whatever mode the tests run in."""
    for name, value in dict(BM=64, BN=128, BK=8, WBM=64, WBN=128, WBK=16, SMS=132, IGEMM_BLOCKS_PER_SM=3,
                            WGRAD_BLOCKS_PER_SM=2, MIN_SLABS_PER_SPLIT=4, WGRAD_MIN_SLABS_PER_SPLIT=4).items():
        monkeypatch.setattr(lp, name, value)


@pytest.mark.parametrize("blocks, slabs", [(1, 1), (5, 36), (61, 36), (121, 288), (800, 72), (3, 10_000), (0, 0)])
def test_split_k_covers_the_reduction_exactly(blocks, slabs):
    split, per, reason = lp.split_k(blocks, slabs, 3, 4, 1 << 20)
    assert split >= 1 and reason
    if slabs:
        assert split * per >= slabs and (split - 1) * per < slabs  # every split has work
    target = lp.MIN_WAVES * lp.SMS * 3
    if blocks >= lp.SPLIT_BELOW * lp.SMS * 3:
        assert split == 1
    else:  # split enough to fill the waves, unless each chunk is already the minimum
        assert split == 1 or blocks * split >= target or per <= 4 or split == (1 << 20)


def test_mnist_layers_are_split_on_a_132_sm_gpu(h100):
    # The MNIST second convolution (batch 128, 32 -> 64 channels, 13x13 -> 11x11).
    p = conv2d_params((128, 32, 13, 13), (64, 32, 3, 3), None)
    plan = lp.igemm(p.kg, 1, p.n * p.oh * p.ow, p.cg * 9, p.n * p.k * p.oh * p.ow * 4)
    assert plan.grid == (121, 1, 8) and plan.split_k == 8 and plan.slabs_per_split == 5
    assert "split-K x8" in plan.reason and plan.waves == pytest.approx(968 / 396) and plan.waves >= 2
    # A large layer needs no split.
    q = conv2d_params((128, 64, 56, 56), (64, 64, 3, 3), None, padding=1)
    big = lp.igemm(q.kg, 1, q.n * q.oh * q.ow, q.cg * 9, q.n * q.k * q.oh * q.ow * 4)
    assert big.split_k == 1 and big.waves > 2 and "fill" in big.reason


def test_workspace_bound_limits_the_split(h100, monkeypatch):
    monkeypatch.setattr(lp, "SPLIT_WORKSPACE_BYTES", 3 * 1000)
    plan = lp.igemm(64, 1, 128, 100_000, 1000)
    assert plan.split_k == 3


def test_grid_rows_limit_is_a_clear_error():
    with pytest.raises(ValueError, match=r"groups \(70000\) x output-channel tiles is 70000 > 65535"):
        lp.igemm(1, 70_000, 10, 10, 10)


def _conv(rng, dtype):
    kw = dict(stride=2, padding=1, dilation=(1, 2), groups=2)
    x = rng.standard_normal((2, 4, 7, 8)).astype(dtype)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    return x, w, b, kw, conv2d_params(x.shape, w.shape, None, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forced_split_k_forward_and_grad_x_match_reference(rng, dtype):
    from fastconv.cuda import _arrays, conv_im2col as ci

    x, w, b, kw, p = _conv(rng, dtype)
    g = geo.forward(p, True)
    plan = lp.forced(ci.plan_igemm(g, x.itemsize), 3)
    assert plan.split_k == 3 and plan.grid[2] == 3
    runs = [host(ci.conv2d_forward_im2col(dev(x), dev(w), dev(b), p, plan)) for _ in range(2)]
    assert runs[0].tobytes() == runs[1].tobytes()
    assert_close(runs[0], reference.conv2d(x, w, b, **kw), dtype, "y")

    gy = rng.standard_normal(p.y_shape).astype(dtype)
    gi = geo.input_grad(p)
    gx = _arrays.empty(p.x_shape, dtype)
    ci.launch_conv_igemm(dev(gy), dev(w), None, gx, gi, lp.forced(ci.plan_igemm(gi, x.itemsize), 2))
    assert_close(host(gx), reference.conv2d_backward(gy, x, w, **kw)[0], dtype, "grad_x")


def test_forced_split_k_weight_grad_matches_reference(rng):
    from fastconv.cuda import conv_im2col as ci

    x, w, _, kw, p = _conv(rng, np.float64)
    gy = rng.standard_normal(p.y_shape)
    plan = lp.forced(ci.plan_wgrad(p, 8), 4)
    assert plan.split_k > 1
    gw, gb = ci.weight_and_bias_grad(dev(gy), dev(x), p, plan)
    _, rw, rb = reference.conv2d_backward(gy, x, w, **kw)
    assert_close(host(gw), rw, np.float64, "grad_weight")
    assert_close(host(gb), rb, np.float64, "grad_bias")


def test_direct_chooses_thin_tiled_or_implicit_gemm():
    p = conv2d_params((2, 4, 6, 6), (4, 1, 3, 3), None, padding=1, groups=4)  # depthwise
    assert lp.direct(geo.forward(p, False), 4)[0].kernel == "thin"
    k = next(k for k in range(1, 64) if lp.TK * k * k > lp.WS)
    q = conv2d_params((1, 2, k + 1, k + 1), (lp.THIN_MAX + 1, 2, k, k), None, padding=1)
    plan, tile = lp.direct(geo.forward(q, False), 8)
    assert plan.kernel == "igemm" and tile is None and plan.reason.startswith("direct tile does not fit")
    r = conv2d_params((2, 5, 7, 6), (lp.THIN_MAX + 1, 5, 3, 3), None, stride=2)
    plan, tile = lp.direct(geo.forward(r, False), 4)
    assert plan.kernel == "direct" and plan.grid[:2] == (2 * tile.tiles, 1) and tile.cps % tile.cc == 0
    assert tile.th * tile.tw <= lp.TP and tile.cc * tile.php * tile.pwp <= lp.XS


def test_conv_launches_names_every_launch(h100):
    p = conv2d_params((128, 32, 13, 13), (64, 32, 3, 3), None)
    full = lp.conv_launches(p, "im2col", 4)
    assert list(full) == ["forward", "grad_x", "grad_weight"]
    assert full["forward"].grid == (121, 1, 8) and full["grad_weight"].kernel == "wgrad"
    assert list(lp.conv_launches(p, "direct", 4, need_input_grad=False)) == ["forward", "grad_weight"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forced_split_k_direct_matches_reference(rng, dtype):
    """The direct kernel split over input-channel chunks: bias added once, chunks summed in order."""
    from fastconv.cuda import _arrays, conv_direct as cd

    kw = dict(stride=(2, 1), padding=1)
    c = max(3 * (lp.WS // (lp.TK * 9)) + 1, lp.THIN_MAX + 1)  # at least three channel chunks both ways
    x = rng.standard_normal((2, c, 6, 5)).astype(dtype)
    w = rng.standard_normal((c, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(w.shape[0]).astype(dtype)
    p = conv2d_params(x.shape, w.shape, None, **kw)
    for g, xin, want in ((geo.forward(p, True), x, reference.conv2d(x, w, b, **kw)), (geo.input_grad(p), None, None)):
        plan, tile = lp.direct(g, x.itemsize)
        assert plan.kernel == "direct" and plan.slabs >= 3, "several channel chunks to split"
        plan, tile = lp.forced_direct(plan, tile, 3)
        assert plan.split_k > 1 and tile.cps < g.cin_g
        if xin is None:  # grad_x: the transposed convolution of grad_output
            xin = rng.standard_normal(p.y_shape).astype(dtype)
            want = reference.conv2d_backward(xin, x, w, **kw)[0]
        out = _arrays.empty((g.n, g.cout, g.oh, g.ow), dtype)
        cd.launch_conv_direct(dev(xin), dev(w), dev(b) if g.has_bias else None, out, g, (plan, tile))
        assert_close(host(out), want, dtype, "split direct")
