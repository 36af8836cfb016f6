"""Bad conv2d / conv2d_backward arguments: one test per bad input of issue 2.

Each asserts the exception type and its message (the argument, what was
expected, what was given) and that it was raised before any kernel ran: the
CPU backend's conv entry points are replaced by a function that fails the test.
(Max-pool argument checks live in the pool tests.)
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastconv
import fastconv.cpu
from tests.helpers import forbid_calls


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch):
    forbid_calls(monkeypatch, fastconv.cpu, "conv2d_forward", "conv2d_backward",
                 why="a conv kernel ran although the arguments are invalid")


X = np.zeros((2, 4, 8, 8), np.float32)
W = np.zeros((6, 4, 3, 3), np.float32)
B = np.zeros(6, np.float32)
GY = np.zeros((2, 6, 6, 6), np.float32)


def both(match, exc=ValueError, x=X, weight=W, bias=B, gy=GY, **kw):
    """The same bad arguments must fail the forward and the backward alike."""
    with pytest.raises(exc, match=match):
        fastconv.conv2d(x, weight, bias, **kw)
    with pytest.raises(exc, match=match):
        fastconv.conv2d_backward(gy, x, weight, **kw)


def test_x_wrong_ndim():
    # a 3-D x is an unbatched input (tests/api/test_unbatched.py)
    both(r"x must be a 3-D \(C, H, W\) \(unbatched\) or 4-D \(N, C, H, W\) \(batched\) array, got a 2-D array of "
         r"shape \(8, 8\)", x=X[0, 0])
    with pytest.raises(ValueError, match=r"x must be a 3-D .* or 4-D .* got a 5-D array"):
        fastconv.conv2d(X[None], W)


def test_weight_wrong_ndim():
    both(r"weight must be a 4-D array \(K, C/groups, R, S\), got a 2-D array of shape \(6, 36\)",
         weight=W.reshape(6, 36))


def test_channels_mismatch():
    both(r"Given groups=1, weight of size \[6, 3, 3, 3\], expected input\[2, 4, 8, 8\] to have 3 channels, "
         r"but got 4 channels instead", weight=W[:, :3])
    both(r"Given groups=2, weight of size \[6, 4, 3, 3\], expected input\[2, 4, 8, 8\] to have 8 channels, "
         r"but got 4 channels instead", groups=2)


def test_channels_not_divisible_by_groups():
    both(r"x channels \(4\) must be divisible by groups \(3\)", weight=np.zeros((6, 1, 3, 3)), groups=3)


def test_out_channels_not_divisible_by_groups():
    both(r"weight out_channels \(6\) must be divisible by groups \(4\), got weight of shape \(6, 1, 3, 3\)",
         weight=np.zeros((6, 1, 3, 3)), groups=4)


def test_groups_not_positive():
    both(r"groups must be >= 1, got 0", groups=0)


@pytest.mark.parametrize("bias", [np.zeros(5), np.zeros((6, 1)), np.zeros(())], ids=["length", "2-D", "scalar"])
def test_bias_shape(bias):
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\) \(one value per output channel\), got"):
        fastconv.conv2d(X, W, bias)


@pytest.mark.parametrize("stride", [0, -1, (1, 0), (0, 2)])
def test_stride_below_one(stride):
    both(r"stride must be >= 1, got " + re.escape(repr(stride)), stride=stride)


@pytest.mark.parametrize("dilation", [0, (1, -2)])
def test_dilation_below_one(dilation):
    both(r"dilation must be >= 1, got " + re.escape(repr(dilation)), dilation=dilation)


@pytest.mark.parametrize("value", [1.5, (1, 2, 3), "2", None, True])
def test_stride_not_int_pair(value):
    both(r"stride must be an int or a pair of ints, got", exc=TypeError, stride=value)


@pytest.mark.parametrize("padding", [-1, (0, -1)])
def test_negative_padding(padding):
    both(r"padding must be >= 0, got " + re.escape(repr(padding)), padding=padding)


@pytest.mark.parametrize("padding", ["full", "SAME", ""])
def test_unknown_padding_string(padding):
    both(r'padding must be an int, a pair of ints, "same" or "valid", got ' + repr(padding), padding=padding)


@pytest.mark.parametrize(
    "kw, dilated, padded",
    [
        (dict(), r"\(9, 9\)", r"\(8, 8\)"),  # 9x9 kernel on an 8x8 input
        (dict(dilation=5, padding=1), r"\(11, 11\)", r"\(10, 10\)"),
    ],
)
def test_kernel_larger_than_padded_input(kw, dilated, padded):
    weight = np.zeros((6, 4, 9, 9)) if not kw else W
    both(r"Kernel size can't be greater than actual input size: dilated kernel " + dilated
         + r" .* is larger than the padded input " + padded, weight=weight, **kw)


@pytest.mark.parametrize("shape", [(2, 6, 6, 5), (2, 5, 6, 6), (1, 6, 6, 6), (2, 6, 36)])
def test_grad_output_shape(shape):
    gy = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=r"grad_output must have the forward output's shape \(2, 6, 6, 6\), got "
                       + re.escape(str(shape))):
        fastconv.conv2d_backward(gy, X, W)


@pytest.mark.parametrize("algorithm", ["fft", "DIRECT", "", None, 1])
def test_unknown_algorithm(algorithm):
    both(r"algorithm must be one of \('auto', 'direct', 'im2col', 'winograd'\), got " + re.escape(repr(algorithm)),
         algorithm=algorithm)


BAD_DTYPES = {
    "complex": np.zeros((2, 4, 8, 8), np.complex64),
    "bool": np.zeros((2, 4, 8, 8), bool),
    "object": np.full((2, 4, 8, 8), None, dtype=object),
    "string": np.full((2, 4, 8, 8), "a"),
}


@pytest.mark.parametrize("kind", list(BAD_DTYPES))
def test_bad_dtype_x(kind):
    a = BAD_DTYPES[kind]
    both(rf"x must have a real numeric dtype \(float32/float64 preferred\), got dtype {a.dtype}", exc=TypeError, x=a)


@pytest.mark.parametrize("kind", list(BAD_DTYPES))
def test_bad_dtype_weight(kind):
    a = BAD_DTYPES[kind][:, :, :3, :3].repeat(2, axis=0)[:6]
    both(rf"weight must have a real numeric dtype .* got dtype {a.dtype}", exc=TypeError, weight=a)


@pytest.mark.parametrize("kind", list(BAD_DTYPES))
def test_bad_dtype_bias(kind):
    a = BAD_DTYPES[kind].reshape(-1)[:6]
    with pytest.raises(TypeError, match=rf"bias must have a real numeric dtype .* got dtype {a.dtype}"):
        fastconv.conv2d(X, W, a)


@pytest.mark.parametrize("kind", list(BAD_DTYPES))
def test_bad_dtype_grad_output(kind):
    a = BAD_DTYPES[kind][:, :1].repeat(6, axis=1)[:, :, :6, :6]
    with pytest.raises(TypeError, match=rf"grad_output must have a real numeric dtype .* got dtype {a.dtype}"):
        fastconv.conv2d_backward(a, X, W)


def test_ragged_list():
    with pytest.raises(TypeError, match=r"x must be array-like, got list"):
        fastconv.conv2d([[[[1.0, 2.0], [3.0]]]], W)


def test_none_input():
    with pytest.raises(TypeError, match=r"x must be an array, got None"):
        fastconv.conv2d(None, W)


def test_validation_cache_never_lets_a_bad_argument_through():
    """conv2d_params caches plain int/str/tuple arguments: after the valid calls below are
    cached, the same values as bool, float or list still get their own checks, and an
    invalid call raises every time."""
    from fastconv._params import conv2d_params

    good = conv2d_params(X.shape, W.shape, B.shape, 1, 1, 1, 1)
    assert conv2d_params(X.shape, W.shape, B.shape, 1, 1, 1, 1) is good  # cached
    assert conv2d_params(list(X.shape), W.shape, B.shape, [1, 1], [1, 1], 1, 1) == good  # uncached, equal
    for _ in range(2):
        both("stride", TypeError, stride=True)
        both("stride", TypeError, stride=1.0)
        both("stride", stride=(1, 0))
        both("padding", padding=-1)
