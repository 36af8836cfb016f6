"""scipy.signal baselines for single-channel input (the MNIST first layer):
one ``correlate``/``convolve`` of the whole batch per output channel."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from fastconv._params import conv2d_params


def scipy_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, padding: Any = 0) -> np.ndarray:
    """Single-channel conv2d (C == 1, stride 1, dilation 1): one
    ``scipy.signal.correlate`` of the (N, H, W) batch per output channel
    (SciPy picks direct or FFT by its own estimate)."""
    from scipy.signal import correlate

    p = conv2d_params(x.shape, weight.shape, None if bias is None else bias.shape, 1, padding, 1, 1)
    xs = np.pad(x[:, 0], ((0, 0), (p.ph, p.ph_end), (p.pw, p.pw_end)))
    y = np.empty(p.y_shape, dtype=np.result_type(x, weight))
    for k in range(p.k):
        y[:, k] = correlate(xs, weight[k, 0][None], mode="valid")
        if bias is not None:
            y[:, k] += bias[k]
    return y


def scipy_conv2d_backward(gy: np.ndarray, x: np.ndarray, weight: np.ndarray,
                          padding: Any = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single-channel backward: grad_x as a full ``scipy.signal.convolve`` of gy
    with each filter, grad_weight as a valid ``correlate`` of x with gy."""
    from scipy.signal import convolve, correlate

    p = conv2d_params(x.shape, weight.shape, None, 1, padding, 1, 1)
    xs = np.pad(x[:, 0], ((0, 0), (p.ph, p.ph_end), (p.pw, p.pw_end)))
    gxp = np.zeros(xs.shape, dtype=gy.dtype)
    gw = np.empty(weight.shape, dtype=gy.dtype)
    for k in range(p.k):
        gw[k, 0] = correlate(xs, gy[:, k], mode="valid")[0]
        gxp += convolve(gy[:, k], weight[k, 0][None], mode="full")
    gx = np.ascontiguousarray(gxp[:, None, p.ph:p.ph + p.h, p.pw:p.pw + p.w])
    return gx, gw, gy.sum(axis=(0, 2, 3))


def applies(op: str, case: Any) -> str | None:
    if case.c != 1 or case.stride != 1 or case.dilation != 1 or case.groups != 1:
        return "scipy.signal.correlate applies to single-channel input, stride 1, dilation 1 only"
    return None


def fns() -> dict[str, Callable[..., Any]]:
    return {
        "conv2d_fwd": lambda c, x, w, b: scipy_conv2d(x, w, b, c.padding),
        "conv2d_bwd": lambda c, gy, x, w: scipy_conv2d_backward(gy, x, w, c.padding),
    }
