"""conv2d_backward(..., need_input_grad=False) on CUDA arrays: grad_x is None
and its kernel is neither allocated nor launched; grad_weight and grad_bias are
bit-identical to the full call and match the float64 reference.  Tiny shapes
(numba-cuda's simulator)."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import conv2d_params

from tests.cuda.cudahelpers import dev, host
from tests.helpers import assert_close, spy_calls

ALGORITHMS = ["direct", "im2col"]

# (x shape, weight shape, conv2d keyword arguments, dtype)
CASES = [
    ((2, 3, 6, 5), (4, 3, 3, 3), dict(padding=1), np.float64),
    ((1, 4, 7, 6), (6, 2, 3, 2), dict(stride=2, padding="same", dilation=(1, 2), groups=2), np.float32),
]
CASE_IDS = ["pad1-f64", "s2-same-dil-groups-f32"]


@pytest.fixture
def spy(monkeypatch):
    """Records the input-grad launches (transposed=True) and every device allocation's shape."""
    from fastconv.cuda import _arrays, conv_direct, conv_im2col

    def transposed(*args, **kwargs):
        return bool(args[4].transposed)

    launches = spy_calls(monkeypatch, conv_direct, "launch_conv_direct", record=transposed)
    spy_calls(monkeypatch, conv_im2col, "launch_conv_igemm", record=transposed, into=launches)
    allocs = spy_calls(monkeypatch, _arrays, "empty", record=lambda *args, **kwargs: tuple(args[0]))
    return {"transposed": launches, "alloc": allocs}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("xs, ws, kw, dtype", CASES, ids=CASE_IDS)
def test_skips_grad_x(rng, spy, xs, ws, kw, dtype, algorithm):
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    gy = rng.standard_normal(conv2d_params(xs, ws, None, **kw).y_shape).astype(dtype)
    dgy, dx, dw = dev(gy), dev(x), dev(w)
    gx, gw, gb = fastconv.conv2d_backward(dgy, dx, dw, algorithm=algorithm, need_input_grad=False, **kw)
    assert gx is None
    assert True not in spy["transposed"], "the grad_x kernel was launched"
    assert xs not in spy["alloc"], "an x-shaped output was allocated"
    full_gx, full_gw, full_gb = fastconv.conv2d_backward(dgy, dx, dw, algorithm=algorithm, **kw)
    assert True in spy["transposed"] and xs in spy["alloc"]  # the spy does see the full call's grad_x
    assert host(full_gx).shape == xs
    gw, gb = host(gw), host(gb)
    assert gw.dtype == dtype and gb.dtype == dtype
    assert np.array_equal(gw, host(full_gw)) and np.array_equal(gb, host(full_gb))
    _, rw, rb = reference.conv2d_backward(gy, x, w, **kw)
    assert_close(gw, rw, dtype, "grad_weight")
    assert_close(gb, rb, dtype, "grad_bias")


def test_bad_flag_and_zero_size_batch():
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    gy = np.zeros((0, 3, 5, 5), np.float32)
    with pytest.raises(TypeError, match=r"need_input_grad must be a bool, got 'yes'"):
        fastconv.conv2d_backward(dev(gy), dev(x), dev(w), padding=1, need_input_grad="yes")
    gx, gw, gb = fastconv.conv2d_backward(dev(gy), dev(x), dev(w), padding=1, need_input_grad=False)
    assert gx is None
    assert np.array_equal(host(gw), np.zeros_like(w)) and np.array_equal(host(gb), np.zeros(3, np.float32))
