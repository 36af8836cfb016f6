"""Bad input to max_pool2d / max_pool2d_backward: one test per mistake, each
asserting the message, raised before any kernel runs (the backend's kernel
entries are replaced by a function that fails the test if reached).  The
reference raises the same errors (it validates through the same module)."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
import fastconv.cpu
from fastconv import reference
from tests.helpers import forbid_calls

MODULES = [fastconv, reference]
MOD_IDS = ["fastconv", "reference"]


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch):
    forbid_calls(monkeypatch, fastconv.cpu, "max_pool2d_forward", "max_pool2d_backward",
                 why="a kernel ran before the input was rejected")


def x_(shape=(2, 3, 6, 7), dtype=np.float32):
    return np.zeros(shape, dtype)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("shape", [(6, 7), (1, 2, 3, 6, 7)], ids=["2d", "5d"])
def test_wrong_ndim(mod, shape):
    # a 3-D x is an unbatched input (tests/api/test_unbatched.py)
    with pytest.raises(ValueError, match=r"x must be a 3-D \(C, H, W\) \(unbatched\) or 4-D \(N, C, H, W\) "
                                         r"\(batched\) array, got a \d-D array of shape"):
        mod.max_pool2d(x_(shape), 2)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("name", ["kernel_size", "stride", "dilation"])
@pytest.mark.parametrize("value", [0, (2, 0), -1])
def test_kernel_stride_dilation_below_one(mod, name, value):
    kw = dict(kernel_size=2)
    kw[name] = value
    with pytest.raises(ValueError, match=rf"{name} must be >= 1, got {value!r}".replace("(", r"\(").replace(")", r"\)")):
        mod.max_pool2d(x_(), **kw)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
def test_negative_padding(mod):
    with pytest.raises(ValueError, match=r"padding must be >= 0, got -1"):
        mod.max_pool2d(x_(), 2, padding=-1)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize(
    "kernel_size, padding, dilation, shown",
    [(2, 2, 1, r"padding=\(2, 2\) and kernel_size=\(2, 2\)"),
     (3, 2, 1, r"padding=\(2, 2\) and kernel_size=\(3, 3\)"),
     ((2, 4), (2, 1), 1, r"padding=\(2, 1\) and kernel_size=\(2, 4\)"),
     (2, 2, 3, r"padding=\(2, 2\) and kernel_size=\(2, 2\)")],  # dilation does not relax the rule (torch)
    ids=["k2p2", "k3p2", "one-dim", "dilated"],
)
def test_padding_more_than_half_kernel(mod, kernel_size, padding, dilation, shown):
    with pytest.raises(ValueError, match=r"padding should be at most half of kernel size, but got " + shown):
        mod.max_pool2d(x_((1, 1, 12, 12)), kernel_size, padding=padding, dilation=dilation)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("kw", [dict(kernel_size=8), dict(kernel_size=3, dilation=4), dict(kernel_size=(1, 8))],
                         ids=["kernel", "dilated", "width-only"])
def test_output_size_below_one(mod, kw):
    with pytest.raises(ValueError, match=r"max_pool2d output size would be \(-?\d+, -?\d+\), which is too small: "
                                         r"x of shape \(2, 3, 6, 7\)"):
        mod.max_pool2d(x_(), **kw)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
def test_window_entirely_in_padding(mod):
    """kernel 2, padding 1, dilation H+1: the taps -1 and H both miss the input.
    PyTorch returns -inf with out-of-range indices (and its backward then
    corrupts memory); fastconv refuses the geometry."""
    with pytest.raises(ValueError, match=r"max_pool2d window 0 along H lies entirely in the padding: "
                                         r"with kernel_size=2, padding=1, dilation=7"):
        mod.max_pool2d(x_(), (2, 1), padding=(1, 0), dilation=(7, 1))


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("value", [2.0, (2, 2, 2), "2", True, None, (2.0, 2)])
def test_kernel_size_not_int_or_pair(mod, value):
    with pytest.raises(TypeError, match=r"kernel_size must be an int or a pair of ints, got"):
        mod.max_pool2d(x_(), value)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
def test_ceil_mode_not_bool(mod):
    with pytest.raises(TypeError, match=r"ceil_mode must be a bool, got 'yes'"):
        mod.max_pool2d(x_(), 2, ceil_mode="yes")


@pytest.mark.parametrize("value", [1, "True", None])
def test_return_indices_not_bool(value):
    with pytest.raises(TypeError, match=rf"return_indices must be a bool, got {value!r}"):
        fastconv.max_pool2d(x_(), 2, return_indices=value)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, object])
def test_x_dtype_not_real(mod, dtype):
    with pytest.raises(TypeError, match=r"x must have a real numeric dtype"):
        mod.max_pool2d(np.zeros((1, 1, 4, 4), dtype), 2)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("shape", [(1, 0, 4, 4), (1, 1, 0, 4), (1, 1, 4, 0)])
def test_x_empty_plane(mod, shape):
    with pytest.raises(ValueError, match=r"x must have C, H, W >= 1, got shape"):
        mod.max_pool2d(x_(shape), 2)


# --------------------------------------------------------------------------- backward


def bwd_args():
    """A consistent (grad_output, indices, input_shape) for a (2, 3, 6, 7) input, k2 s2."""
    return np.ones((2, 3, 3, 3), np.float32), np.zeros((2, 3, 3, 3), np.int64), (2, 3, 6, 7)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("dtype", [np.int32, np.float64, np.uint64])
def test_indices_wrong_dtype(mod, dtype):
    gy, idx, shape = bwd_args()
    with pytest.raises(TypeError, match=rf"indices must have dtype int64 \(as returned by max_pool2d\), "
                                        rf"got {np.dtype(dtype)}"):
        mod.max_pool2d_backward(gy, idx.astype(dtype), shape)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("ishape", [(2, 3, 3, 4), (2, 3, 9), (2, 3, 3, 3, 1)])
def test_indices_wrong_shape(mod, ishape):
    gy, _, shape = bwd_args()
    with pytest.raises(ValueError, match=r"indices must have the shape of grad_output \(2, 3, 3, 3\), got "
                                         + str(ishape).replace("(", r"\(").replace(")", r"\)")):
        mod.max_pool2d_backward(gy, np.zeros(ishape, np.int64), shape)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("bad, shown", [(-1, r"\[-1, 0\]"), (42, r"\[0, 42\]"), (10**12, r"\[0, 1000000000000\]")])
def test_indices_out_of_range(mod, bad, shown):
    gy, idx, shape = bwd_args()
    idx[1, 2, 0, 1] = bad
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 42\) \(flat offsets into each 6x7 input plane\), "
                                         r"got values in " + shown):
        mod.max_pool2d_backward(gy, idx, shape)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
def test_indices_out_of_range_non_contiguous(mod):
    gy, idx, shape = bwd_args()
    idx[0, 0, 2, 2] = 42
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 42\)"):
        mod.max_pool2d_backward(gy.transpose(0, 1, 3, 2), idx.transpose(0, 1, 3, 2), shape)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
def test_grad_output_wrong_ndim(mod):
    _, _, shape = bwd_args()
    with pytest.raises(ValueError, match=r"grad_output must be a 4-D array \(N, C, OH, OW\), got a 3-D array"):
        mod.max_pool2d_backward(np.ones((2, 3, 9)), np.zeros((2, 3, 9), np.int64), shape)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("shape", [(1, 3, 6, 7), (2, 4, 6, 7)], ids=["batch", "channels"])
def test_grad_output_mismatches_input_shape(mod, shape):
    gy, idx, _ = bwd_args()
    with pytest.raises(ValueError, match=rf"grad_output must have the \(N, C\) of input_shape "
                                         rf"\({shape[0]}, {shape[1]}\), got \(2, 3\)"):
        mod.max_pool2d_backward(gy, idx, shape)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("dtype", [np.complex128, np.bool_])
def test_grad_output_dtype_not_real(mod, dtype):
    gy, idx, shape = bwd_args()
    with pytest.raises(TypeError, match=r"grad_output must have a real numeric dtype"):
        mod.max_pool2d_backward(gy.astype(dtype), idx, shape)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("bad", [(2, 3, 6, 7, 1), (2, 3, 0, 7), (-1, 3, 6, 7), (3,)])
def test_input_shape_bad_value(mod, bad):  # 3 ints: an unbatched input_shape (tests/api/test_unbatched.py)
    gy, idx, _ = bwd_args()
    with pytest.raises(ValueError, match=r"input_shape must be 4 ints \(N, C, H, W\) with C, H, W >= 1, got"):
        mod.max_pool2d_backward(gy, idx, bad)


@pytest.mark.parametrize("mod", MODULES, ids=MOD_IDS)
@pytest.mark.parametrize("bad", [None, 7, (2, 3, 6.5, 7), "2367", (2, 3, True, 7)])
def test_input_shape_not_ints(mod, bad):
    gy, idx, _ = bwd_args()
    with pytest.raises(TypeError, match=r"input_shape must be a sequence of 4 ints \(N, C, H, W\), got"):
        mod.max_pool2d_backward(gy, idx, bad)


def test_valid_call_reaches_the_kernel():
    """The guard fixture itself works: valid input does reach the (replaced) kernel."""
    with pytest.raises(pytest.fail.Exception, match="a kernel ran"):
        fastconv.max_pool2d(x_(), 2)
    gy, idx, shape = bwd_args()
    with pytest.raises(pytest.fail.Exception, match="a kernel ran"):
        fastconv.max_pool2d_backward(gy, idx, shape)
