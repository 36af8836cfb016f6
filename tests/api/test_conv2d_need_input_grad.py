"""conv2d_backward(..., need_input_grad=False) on the CPU: grad_x is skipped
(None), grad_weight and grad_bias are bit-identical to the full call and match
the float64 reference; the flag is validated before any kernel runs.
Outputs are poisoned (conftest), so a gradient left unwritten fails."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import CONV_ALGORITHMS, conv2d_params
from fastconv.cpu import conv_direct, conv_im2col

from tests.helpers import assert_close, forbid_calls, spy_calls

# "auto" included: it must forward the flag too; winograd: tests/cpu/test_conv_winograd.py
ALGS = [a for a in CONV_ALGORITHMS if a != "winograd"]
DTYPES = [np.float32, np.float64]

# (x shape, weight shape, conv2d keyword arguments)
CASES = {
    "plain": ((2, 3, 7, 8), (4, 3, 3, 3), {}),
    "stride2-pad1": ((2, 3, 9, 7), (5, 3, 3, 3), dict(stride=2, padding=1)),
    "same-even-kernel": ((2, 2, 7, 6), (3, 2, 2, 2), dict(padding="same")),
    "dil2-groups2": ((1, 4, 9, 9), (6, 2, 3, 2), dict(dilation=(2, 1), padding=(2, 1), groups=2)),
    "depthwise-stride": ((2, 4, 8, 7), (4, 1, 3, 3), dict(stride=(2, 1), padding=1, groups=4)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("case", list(CASES))
def test_skips_grad_x_and_keeps_weight_and_bias_grads(rng, case, alg, dtype):
    xs, ws, kw = CASES[case]
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    gy = rng.standard_normal(conv2d_params(xs, ws, None, **kw).y_shape).astype(dtype)
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, algorithm=alg, need_input_grad=False, **kw)
    assert gx is None
    full_gx, full_gw, full_gb = fastconv.conv2d_backward(gy, x, w, algorithm=alg, need_input_grad=True, **kw)
    assert full_gx is not None and full_gx.shape == xs
    assert gw.dtype == dtype and gb.dtype == dtype
    assert np.array_equal(gw, full_gw), "grad_weight differs from the need_input_grad=True call"
    assert np.array_equal(gb, full_gb), "grad_bias differs from the need_input_grad=True call"
    _, rw, rb = reference.conv2d_backward(gy, x, w, **kw)
    assert_close(gw, rw, dtype, "grad_weight")
    assert_close(gb, rb, dtype, "grad_bias")


@pytest.mark.parametrize("alg", ["direct", "im2col"])
def test_flag_reaches_the_kernel_entry(rng, monkeypatch, alg):
    """The backend passes the flag on in the plan (the kernel entry, not the facade, drops grad_x)."""
    mod = {"direct": conv_direct, "im2col": conv_im2col}[alg]
    seen = spy_calls(monkeypatch, mod, "backward", record=lambda *args, **kwargs: args[3].need_input_grad)  # the plan's
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    gy = rng.standard_normal((1, 3, 3, 3))
    assert fastconv.conv2d_backward(gy, x, w, algorithm=alg, need_input_grad=False)[0] is None
    assert fastconv.conv2d_backward(gy, x, w, algorithm=alg)[0] is not None
    assert seen == [False, True]


@pytest.mark.parametrize("bad", ["yes", 1, 0, None, np.array([True])])
def test_bad_need_input_grad_is_rejected_before_any_kernel(rng, monkeypatch, bad):
    why = "a kernel ran before need_input_grad was validated"
    forbid_calls(monkeypatch, conv_direct, "backward", why=why)
    forbid_calls(monkeypatch, conv_im2col, "backward", why=why)
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    gy = rng.standard_normal((1, 3, 3, 3))
    with pytest.raises(TypeError, match=r"need_input_grad must be a bool, got"):
        fastconv.conv2d_backward(gy, x, w, need_input_grad=bad)
    with pytest.raises(TypeError, match=r"need_input_grad must be a bool, got"):  # also for an empty batch
        fastconv.conv2d_backward(gy[:0], x[:0], w, need_input_grad=bad)


def test_numpy_bool_is_accepted(rng):
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    gy = rng.standard_normal((1, 3, 3, 3))
    assert fastconv.conv2d_backward(gy, x, w, need_input_grad=np.False_)[0] is None
    assert fastconv.conv2d_backward(gy, x, w, need_input_grad=np.True_)[0].shape == x.shape


@pytest.mark.parametrize("alg", ALGS)
def test_zero_size_batch(alg):
    x = np.zeros((0, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    gy = np.zeros((0, 4, 8, 8), np.float32)
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, padding=1, algorithm=alg, need_input_grad=False)
    assert gx is None
    assert gw.dtype == np.float32 and np.array_equal(gw, np.zeros_like(w))
    assert gb.dtype == np.float32 and np.array_equal(gb, np.zeros(4, np.float32))
    gx, _, _ = fastconv.conv2d_backward(gy, x, w, padding=1, algorithm=alg)
    assert gx.shape == x.shape
