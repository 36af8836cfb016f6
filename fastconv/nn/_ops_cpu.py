"""Host (NumPy) implementation of the small ops the layers need besides conv/pool.

Layers call convolution and pooling through the public ``fastconv`` API and
everything else through an ops module: this one on the CPU, ``_ops_cuda`` on
the GPU, both with the same function names.  Activations and optimizer
updates work in place to keep per-batch allocations down; ReLU, the one big
elementwise op of a convnet, is a small parallel Numba kernel on large
contiguous arrays (~6x NumPy's single-threaded loop on 2 cores).  The
activation backward uses the layer's *output* y (relu: y > 0, sigmoid:
y(1-y), tanh: 1 - y^2, softmax: y * (g - sum(g*y))) and may overwrite the
incoming gradient.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

name = "cpu"

# Below this many elements NumPy's single-threaded loop beats a parallel launch.
_PARALLEL_MIN = 1 << 15


@njit(parallel=True, cache=True)
def _relu_inplace(z):
    """z = max(z, 0) over a flat contiguous array; NaN stays NaN (np.maximum's rule)."""
    for i in prange(z.size):
        if z[i] < 0:
            z[i] = 0


@njit(parallel=True, cache=True)
def _relu_grad_inplace(g, y):
    """g *= (y > 0) over flat contiguous arrays (multiplying keeps NaN/Inf in g as NumPy does)."""
    for i in prange(g.size):
        if not y[i] > 0:
            g[i] = g[i] * 0


def to_device(a: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)


def to_host(a: np.ndarray) -> np.ndarray:
    return a


def zeros_like(a: np.ndarray) -> np.ndarray:
    return np.zeros_like(a)


def zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def copy(a: np.ndarray) -> np.ndarray:
    return a.copy()


# --------------------------------------------------------------------------- activations


def activation_forward(kind: str | None, z: np.ndarray) -> np.ndarray:
    """y = act(z), in place on z (z is a fresh output the layer owns).  Channel axis 1."""
    if kind is None:
        return z
    if kind == "relu":
        if z.size >= _PARALLEL_MIN and z.flags.c_contiguous:
            _relu_inplace(z.reshape(-1))
            return z
        return np.maximum(z, 0, out=z)
    if kind == "sigmoid":
        # 1/(1+exp(-z)) overflows exp for very negative z; the tanh form does not
        np.multiply(z, 0.5, out=z)
        np.tanh(z, out=z)
        z += 1
        z *= 0.5
        return z
    if kind == "tanh":
        return np.tanh(z, out=z)
    if kind == "softmax":
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z
    raise AssertionError(kind)


def activation_backward(kind: str | None, g: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dL/dz from dL/dy and the forward output y; may overwrite g."""
    if kind is None:
        return g
    if kind == "relu":
        if g.size >= _PARALLEL_MIN and g.flags.c_contiguous and y.flags.c_contiguous and g.flags.writeable:
            _relu_grad_inplace(g.reshape(-1), y.reshape(-1))
            return g
        return np.multiply(g, y > 0)
    if kind == "sigmoid":
        return g * y * (1 - y)
    if kind == "tanh":
        return g * (1 - y * y)
    if kind == "softmax":
        return y * (g - (g * y).sum(axis=1, keepdims=True))
    raise AssertionError(kind)


# --------------------------------------------------------------------------- dense / reshape


def dense_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = x @ w
    if b is not None:
        y += b
    return y


def dense_backward(g: np.ndarray, x: np.ndarray, w: np.ndarray, need_gx: bool, need_gb: bool):
    gw = x.T @ g
    gb = g.sum(axis=0) if need_gb else None
    gx = g @ w.T if need_gx else None
    return gx, gw, gb


def flatten_forward(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, H*W*C) in Keras' channels-last order (a view when C == 1 or H*W == 1)."""
    n = x.shape[0]
    return x.transpose(0, 2, 3, 1).reshape(n, -1)


def flatten_backward(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n, c, h, w = shape
    return g.reshape(n, h, w, c).transpose(0, 3, 1, 2)


def pad_value(x: np.ndarray, top: int, bottom: int, left: int, right: int, value: float) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def crop(g: np.ndarray, top: int, left: int, h: int, w: int) -> np.ndarray:
    return g[:, :, top:top + h, left:left + w]


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], rate: float, dtype: Any) -> np.ndarray:
    """Inverted dropout: keep with probability 1-rate, scaled by 1/(1-rate)."""
    keep = rng.random(shape, dtype=np.float32) >= rate
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))


def multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a * b


# --------------------------------------------------------------------------- optimizers (in place)


def axpy(a: float, x: np.ndarray, y: np.ndarray) -> None:
    y += x.dtype.type(a) * x


def sgd(p, g, v, lr, momentum, nesterov):
    if v is None:
        p -= p.dtype.type(lr) * g
        return
    v *= momentum
    v -= p.dtype.type(lr) * g
    if nesterov:
        p += p.dtype.type(momentum) * v - p.dtype.type(lr) * g
    else:
        p += v


def rmsprop(p, g, a, lr, rho, eps):
    t = p.dtype.type
    a *= t(rho)
    a += t(1 - rho) * g * g
    p -= t(lr) * g / (np.sqrt(a) + t(eps))


def adam(p, g, m, v, alpha, b1, b2, eps):
    t = p.dtype.type
    m += (g - m) * t(1 - b1)
    v += (g * g - v) * t(1 - b2)
    p -= t(alpha) * m / (np.sqrt(v) + t(eps))


def adadelta(p, g, a, b, lr, rho, eps):
    t = p.dtype.type
    a *= t(rho)
    a += t(1 - rho) * g * g
    d = np.sqrt(b + t(eps)) / np.sqrt(a + t(eps)) * g
    b *= t(rho)
    b += t(1 - rho) * d * d
    p -= t(lr) * d
