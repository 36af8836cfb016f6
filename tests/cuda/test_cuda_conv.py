"""fastconv.conv2d / conv2d_backward on CUDA arrays against the float64 reference,
PyTorch (CPU, when installed) and finite differences; tiny shapes so that
numba-cuda's simulator runs them in seconds.  Outputs are poisoned (root
conftest), so an element a kernel forgets to write fails.

The simulator's tiles are small (see the kernel modules), so these shapes still
cover several tiles in every GEMM dimension, several input-channel chunks and
partial tiles at every border.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference
from fastconv._params import conv2d_params

from tests.cuda.cudahelpers import dev, host
from tests.helpers import assert_close, check_grads

ALGORITHMS = ["direct", "im2col"]
DTYPES = [np.float32, np.float64]

# (x shape, weight shape, conv2d keyword arguments)
CASES = [
    ((2, 3, 6, 5), (6, 3, 3, 3), dict(padding=1)),
    ((2, 5, 7, 6), (6, 5, 3, 3), dict(stride=2)),
    ((1, 4, 7, 7), (5, 4, 3, 2), dict(stride=(2, 1), padding=(1, 0))),
    ((2, 3, 7, 6), (4, 3, 2, 2), dict(padding="same")),  # asymmetric padding (extra bottom/right)
    ((1, 3, 7, 7), (4, 3, 3, 3), dict(stride=2, padding="same")),  # "same" at stride 2 (Keras rule)
    ((2, 2, 7, 7), (3, 2, 3, 3), dict(padding="valid", dilation=2)),
    ((1, 4, 7, 6), (6, 2, 3, 2), dict(padding=(2, 1), dilation=(2, 1), groups=2)),
    ((2, 4, 6, 6), (4, 1, 3, 3), dict(padding=1, groups=4)),  # depthwise
    ((1, 4, 5, 6), (8, 1, 3, 3), dict(stride=2, padding=1, groups=4)),  # depthwise multiplier 2
    ((2, 6, 5, 4), (3, 6, 1, 1), dict()),  # 1x1
    ((1, 2, 7, 7), (3, 2, 2, 2), dict(stride=3, padding=2)),  # stride > kernel, pad > kernel/2
]
CASE_IDS = [f"{'x'.join(map(str, xs))}-{'x'.join(map(str, ws))}-" + "-".join(f"{k}{v}" for k, v in kw.items())
            for xs, ws, kw in CASES]


def _inputs(rng, xs, ws, dtype):
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, kw", CASES, ids=CASE_IDS)
def test_forward_matches_reference(rng, xs, ws, kw, dtype, algorithm):
    x, w, b = _inputs(rng, xs, ws, dtype)
    bias = b if xs[0] == 2 else None  # with and without bias across the cases
    y = fastconv.conv2d(dev(x), dev(w), None if bias is None else dev(bias), algorithm=algorithm, **kw)
    assert y.dtype == dtype
    assert_close(host(y), reference.conv2d(x, w, bias, **kw), dtype, "y")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, kw", CASES, ids=CASE_IDS)
def test_backward_matches_reference(rng, xs, ws, kw, dtype, algorithm):
    x, w, _ = _inputs(rng, xs, ws, dtype)
    p = conv2d_params(xs, ws, None, **kw)
    gy = rng.standard_normal(p.y_shape).astype(dtype)
    gx, gw, gb = fastconv.conv2d_backward(dev(gy), dev(x), dev(w), algorithm=algorithm, **kw)
    rx, rw, rb = reference.conv2d_backward(gy, x, w, **kw)
    for got, ref, what in ((gx, rx, "grad_x"), (gw, rw, "grad_weight"), (gb, rb, "grad_bias")):
        assert got.dtype == dtype, what
        assert_close(host(got), ref, dtype, what)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_matches_torch(torch, rng, algorithm):
    F = torch.nn.functional
    x, w, b = _inputs(rng, (2, 4, 7, 6), (6, 2, 3, 2), np.float64)
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, **kw)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    y = fastconv.conv2d(dev(x), dev(w), dev(b), algorithm=algorithm, **kw)
    gx, gw, gb = fastconv.conv2d_backward(dev(gy), dev(x), dev(w), algorithm=algorithm, **kw)
    assert_close(host(y), ty.detach().numpy(), np.float64, "y")
    assert_close(host(gx), tx.grad.numpy(), np.float64, "grad_x")
    assert_close(host(gw), tw.grad.numpy(), np.float64, "grad_weight")
    assert_close(host(gb), tb.grad.numpy(), np.float64, "grad_bias")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_backward_finite_differences(rng, algorithm):
    """<gy, conv(x + e*dx, w + e*dw, b + e*db)> changes at the rate <gx, dx> + <gw, dw> + <gb, db>."""
    kw = dict(stride=2, padding="same", dilation=(1, 2), groups=2)
    x, w, b = _inputs(rng, (1, 4, 6, 7), (4, 2, 2, 3), np.float64)
    p = conv2d_params(x.shape, w.shape, None, **kw)
    gy = rng.standard_normal(p.y_shape)
    gx, gw, gb = (host(a) for a in fastconv.conv2d_backward(dev(gy), dev(x), dev(w), algorithm=algorithm, **kw))

    def conv(x, w, b):
        return host(fastconv.conv2d(dev(x), dev(w), dev(b), algorithm=algorithm, **kw))

    check_grads(conv, {"x": x, "w": w, "b": b}, {"x": gx, "w": gw, "b": gb}, gy, rng,
                directional=True, jointly=True)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_deterministic(rng, algorithm):
    """Same inputs -> bit-identical outputs, forward and backward (no float atomics)."""
    x, w, b = _inputs(rng, (2, 3, 6, 5), (4, 3, 3, 3), np.float32)
    kw = dict(padding=1, stride=(1, 2))
    p = conv2d_params(x.shape, w.shape, None, **kw)
    gy = rng.standard_normal(p.y_shape).astype(np.float32)
    runs = []
    for _ in range(2):
        y = fastconv.conv2d(dev(x), dev(w), dev(b), algorithm=algorithm, **kw)
        grads = fastconv.conv2d_backward(dev(gy), dev(x), dev(w), algorithm=algorithm, **kw)
        runs.append([host(a) for a in (y, *grads)])
    for a, b_ in zip(*runs):
        assert a.tobytes() == b_.tobytes()


def test_split_k_weight_grad(rng):
    """A long reduction and a single output tile: grad_weight is split over several
    chunks and summed in a fixed order; still matches the reference."""
    from fastconv.cuda import conv_im2col as ci

    x, w, _ = _inputs(rng, (2, 1, 16, 17), (2, 1, 1, 1), np.float64)  # reduction 544: split on a GPU too
    p = conv2d_params(x.shape, w.shape, None)
    assert ci.plan_wgrad(p, 8).split_k > 1
    gy = rng.standard_normal(p.y_shape)
    _, gw, gb = fastconv.conv2d_backward(dev(gy), dev(x), dev(w), algorithm="im2col")
    _, rw, rb = reference.conv2d_backward(gy, x, w)
    assert_close(host(gw), rw, np.float64, "grad_weight")
    assert_close(host(gb), rb, np.float64, "grad_bias")


def test_direct_falls_back_when_tile_does_not_fit(rng):
    """A kernel too large for the direct kernel's shared buffers runs as implicit GEMM."""
    from fastconv.cuda import _geometry as geo
    from fastconv.cuda import _launch_plan as lp

    k = next(k for k in range(1, 64) if lp.TK * k * k > lp.WS)
    kout = lp.THIN_MAX + 1  # more channels than the thin-group kernel takes
    x, w, b = _inputs(rng, (1, 2, k + 1, k + 1), (kout, 2, k, k), np.float64)
    assert lp.direct_tile(geo.forward(conv2d_params(x.shape, w.shape, None, padding=1), True)) is None
    y = fastconv.conv2d(dev(x), dev(w), dev(b), padding=1, algorithm="direct")
    assert_close(host(y), reference.conv2d(x, w, b, padding=1), np.float64, "y")


def test_direct_plan_used_for_test_shapes():
    """The direct kernel (not its fallback) runs for ordinary 3x3 shapes, over several channel chunks."""
    from fastconv.cuda import _geometry as geo
    from fastconv.cuda import _launch_plan as lp

    tile = lp.direct_tile(geo.forward(conv2d_params((2, 5, 7, 6), (6, 5, 3, 3), None, stride=2), False))
    assert tile is not None
    assert tile.th * tile.tw <= lp.TP and tile.cc * tile.php * tile.pwp <= lp.XS


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator computes inf*0 in NumPy
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nan_and_inf_propagate(rng, algorithm):
    x, w, b = _inputs(rng, (1, 2, 6, 6), (3, 2, 3, 3), np.float64)
    x[0, 1, 2, 3] = np.nan
    x[0, 0, 5, 0] = np.inf
    y = host(fastconv.conv2d(dev(x), dev(w), dev(b), padding=1, algorithm=algorithm))
    ref = reference.conv2d(x, w, b, padding=1)
    assert np.array_equal(np.isnan(y), np.isnan(ref))
    fin = np.isfinite(ref)
    assert np.array_equal(y[~fin & ~np.isnan(ref)], ref[~fin & ~np.isnan(ref)])
    assert_close(y[fin], ref[fin], np.float64, "finite part of y")


def test_dtype_promotion_and_strided_inputs(rng):
    """float16 / integer / strided device inputs are cast on the device to the compute dtype."""
    from numba import cuda

    x = rng.standard_normal((2, 3, 6, 10))
    w = rng.integers(-3, 4, size=(4, 3, 3, 3))
    xd = cuda.to_device(x.astype(np.float16))[:, :, :, ::2]  # non-contiguous view
    y = fastconv.conv2d(xd, dev(w.astype(np.float16)), algorithm="im2col")
    assert y.dtype == np.float32
    ref = reference.conv2d(x.astype(np.float16)[:, :, :, ::2], w)
    assert_close(host(y), ref, np.float32, "y")
    y64 = fastconv.conv2d(dev(x.astype(np.float32)), dev(w), algorithm="direct")  # float32 x int64
    assert y64.dtype == np.float64
    assert_close(host(y64), reference.conv2d(x.astype(np.float32), w), np.float64, "y")


def test_zero_size_batch():
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    y = fastconv.conv2d(dev(x), dev(w), padding=1)
    assert host(y).shape == (0, 3, 5, 5)
    gx, gw, gb = fastconv.conv2d_backward(dev(np.zeros((0, 3, 5, 5), np.float32)), dev(x), dev(w), padding=1)
    assert host(gx).shape == x.shape
    assert np.array_equal(host(gw), np.zeros_like(w)) and np.array_equal(host(gb), np.zeros(3, np.float32))


def test_results_are_device_arrays(rng):
    from numba.cuda.cudadrv.devicearray import is_cuda_ndarray

    x, w, b = _inputs(rng, (1, 2, 5, 5), (2, 2, 3, 3), np.float32)
    out = [fastconv.conv2d(dev(x), dev(w), dev(b))]
    out += list(fastconv.conv2d_backward(dev(np.ones((1, 2, 3, 3), np.float32)), dev(x), dev(w)))
    assert all(is_cuda_ndarray(a) for a in out)


def test_mixing_host_and_device_is_a_type_error(rng):
    x, w, b = _inputs(rng, (1, 2, 5, 5), (2, 2, 3, 3), np.float32)
    with pytest.raises(TypeError, match=r"same device: x on the GPU but weight on the host"):
        fastconv.conv2d(dev(x), w)
    with pytest.raises(TypeError, match=r"bias on the GPU but x, weight on the host|x, weight on the GPU but bias"):
        fastconv.conv2d(dev(x), dev(w), b)
    with pytest.raises(TypeError, match=r"grad_output on the GPU but x, weight on the host"):
        fastconv.conv2d_backward(dev(np.ones((1, 2, 3, 3), np.float32)), x, w)


def test_bad_dtype_and_shape_messages(rng):
    from numba import cuda

    w = dev(np.ones((2, 2, 3, 3), np.float32))
    xc = cuda.to_device(np.ones((1, 2, 5, 5), np.complex64))
    with pytest.raises(TypeError, match=r"x must have a real numeric dtype .* got dtype complex64"):
        fastconv.conv2d(xc, w)
    with pytest.raises(ValueError, match=r"expected input\[1, 3, 5, 5\] to have 2 channels, but got 3"):
        fastconv.conv2d(dev(np.ones((1, 3, 5, 5), np.float32)), w)
    with pytest.raises(ValueError, match=r"grad_output must have the forward output's shape \(1, 2, 3, 3\)"):
        fastconv.conv2d_backward(dev(np.ones((1, 2, 4, 4), np.float32)), dev(np.ones((1, 2, 5, 5))), w)


@st.composite
def _problems(draw):
    groups = draw(st.integers(1, 2))
    cg, kg = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding = draw(st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"]),
                             st.tuples(st.integers(0, 2), st.integers(0, 2))))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 4), 7))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 4), 7))
    stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    kw_ = dict(stride=stride, padding=padding, dilation=(dh, dw), groups=groups)
    xs, ws = (draw(st.integers(1, 2)), cg * groups, h, w), (kg * groups, cg, kh, kw)
    try:
        conv2d_params(xs, ws, None, **kw_)
    except ValueError:
        assume(False)
    return xs, ws, kw_, draw(st.sampled_from(ALGORITHMS)), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(_problems())
def test_property_random_geometry_matches_reference(problem):
    xs, ws, kw, algorithm, seed = problem
    rng = np.random.default_rng(seed)
    x, w, b = _inputs(rng, xs, ws, np.float64)
    y = fastconv.conv2d(dev(x), dev(w), dev(b), algorithm=algorithm, **kw)
    assert_close(host(y), reference.conv2d(x, w, b, **kw), np.float64, "y")
    gy = rng.standard_normal(reference.conv2d(x, w, **kw).shape)
    grads = fastconv.conv2d_backward(dev(gy), dev(x), dev(w), algorithm=algorithm, **kw)
    for got, ref, what in zip(grads, reference.conv2d_backward(gy, x, w, **kw), ("grad_x", "grad_weight", "grad_bias")):
        assert_close(host(got), ref, np.float64, what)
