"""Host (NumPy) implementation of the small ops the layers need besides conv/pool.

Layers call convolution and pooling through the public ``fastconv`` API and
everything else through an ops module: this one on the CPU, ``_ops_cuda`` on
the GPU, both with the same function names.  Activations and optimizer
updates work in place to keep per-batch allocations down; ReLU, the one big
elementwise op of a convnet, is a small parallel Numba kernel on large
contiguous arrays.  The ReLU and optimizer rules are the ones in ``_rules``
(shared with ``_ops_cuda``), compiled here with ``numba.njit``.  The
activation backward uses the layer's *output* y (relu: y > 0, sigmoid:
y(1-y), tanh: 1 - y^2, softmax: y * (g - sum(g*y))) and may overwrite the
incoming gradient.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import njit, prange

from .. import _cache
from . import _rules  # plain Python rules: compiled below, after _cache.install()

_cache.install()  # before the kernels below: it picks where their Numba cache lives


name = "cpu"

# Below this many elements NumPy's single-threaded loop beats a parallel launch.
_PARALLEL_MIN = 1 << 15


_relu = njit(inline="always")(_rules.relu)
_relu_grad = njit(inline="always")(_rules.relu_grad)


@njit(parallel=True, cache=True)
def _relu_inplace(z, zero):
    """z = max(z, 0) over a flat contiguous array; NaN stays NaN (np.maximum's rule)."""
    for i in prange(z.size):
        z[i] = _relu(z[i], zero)


@njit(parallel=True, cache=True)
def _relu_grad_inplace(g, y):
    """g *= (y > 0) over flat contiguous arrays (multiplying keeps NaN/Inf in g as NumPy does)."""
    for i in prange(g.size):
        g[i] = _relu_grad(g[i], y[i])


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
            _relu_inplace(z.reshape(-1), z.dtype.type(0))
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
    return g[:, :, top : top + h, left : left + w]


_dropout_uniform = njit(cache=True)(_rules.dropout_uniform)


@njit(cache=True)
def _dropout_k(mask, seed, rate, scale):
    for i in range(mask.size):
        mask[i] = scale if _dropout_uniform(seed, i) >= rate else scale * 0


def dropout_seed(rng: np.random.Generator) -> np.uint64:
    """The step's mask seed: one draw from the layer's generator (exact resume keeps it)."""
    return np.uint64(rng.integers(2**63))


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], rate: float, dtype: Any) -> np.ndarray:
    """Inverted dropout: keep with probability 1-rate, scaled by 1/(1-rate).  The mask is a
    function of one seed drawn from ``rng`` (``_rules.dropout_uniform``): the CUDA ops draw
    the same mask on the device."""
    dtype = np.dtype(dtype)
    mask = np.empty(shape, dtype=dtype)
    _dropout_k(mask.reshape(-1), dropout_seed(rng), float(rate), dtype.type(1.0 / (1.0 - rate)))
    return mask


def multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a * b


# --------------------------------------------------------------------------- optimizers (in place)
# One fused pass per parameter array (Numba, serial: the arrays are small) instead of
# ~8 NumPy calls with temporaries each; the update itself is the ``_rules`` function,
# inlined.  Scalars arrive typed as the parameters' dtype (``_t``) so float32 models
# update in float32.  Parameters and optimizer state are C-contiguous (layers and
# ``zeros_like`` create them so).  error_model="numpy": a float division by zero
# gives inf/NaN as in NumPy instead of raising, so the loops have no branch and LLVM
# can vectorise the divisions and square roots.


def _t(p: np.ndarray, v: float) -> Any:
    return p.dtype.type(v)


def _flat(p: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Flat views for the fused kernels (p and the state are updated in place)."""
    if not p.flags.c_contiguous:
        raise RuntimeError("optimizer parameters must be C-contiguous arrays")
    return (p.reshape(-1),) + tuple(np.ascontiguousarray(o).reshape(-1) for o in others)


def _rule(rule: Any) -> Any:
    return njit(error_model="numpy", inline="always")(rule)


_axpy_r, _sgd_r, _sgd_momentum_r = _rule(_rules.axpy), _rule(_rules.sgd), _rule(_rules.sgd_momentum)
_rmsprop_r, _adam_r, _adadelta_r = _rule(_rules.rmsprop), _rule(_rules.adam), _rule(_rules.adadelta)


@njit(cache=True, error_model="numpy")
def _axpy_k(a, x, y):
    for i in range(y.size):
        y[i] = _axpy_r(y[i], x[i], a)


@njit(cache=True, error_model="numpy")
def _sgd_k(p, g, lr):
    for i in range(p.size):
        p[i] = _sgd_r(p[i], g[i], lr)


@njit(cache=True, error_model="numpy")
def _sgd_momentum_k(p, g, v, lr, momentum, nesterov):
    for i in range(p.size):
        p[i], v[i] = _sgd_momentum_r(p[i], g[i], v[i], lr, momentum, nesterov)


@njit(cache=True, error_model="numpy")
def _rmsprop_k(p, g, a, lr, rho, omr, eps):
    for i in range(p.size):
        p[i], a[i] = _rmsprop_r(p[i], g[i], a[i], lr, rho, omr, eps)


@njit(cache=True, error_model="numpy")
def _adam_k(p, g, m, v, alpha, omb1, omb2, eps):
    for i in range(p.size):
        p[i], m[i], v[i] = _adam_r(p[i], g[i], m[i], v[i], alpha, omb1, omb2, eps)


@njit(cache=True, error_model="numpy")
def _adadelta_k(p, g, a, b, lr, rho, omr, eps):
    for i in range(p.size):
        p[i], a[i], b[i] = _adadelta_r(p[i], g[i], a[i], b[i], lr, rho, omr, eps)


def axpy(a: float, x: np.ndarray, y: np.ndarray) -> None:
    """y += a * x (the L2 term added to a gradient)."""
    yf, xf = _flat(y, x)
    _axpy_k(_t(y, a), xf, yf)


def sgd(p, g, v, lr, momentum, nesterov):
    if v is None:
        pf, gf = _flat(p, g)
        _sgd_k(pf, gf, _t(p, lr))
        return
    pf, gf, vf = _flat(p, g, v)
    _sgd_momentum_k(pf, gf, vf, _t(p, lr), _t(p, momentum), bool(nesterov))


def rmsprop(p, g, a, lr, rho, eps):
    pf, gf, af = _flat(p, g, a)
    _rmsprop_k(pf, gf, af, _t(p, lr), _t(p, rho), _t(p, 1 - rho), _t(p, eps))


def adam(p, g, m, v, alpha, b1, b2, eps):
    pf, gf, mf, vf = _flat(p, g, m, v)
    _adam_k(pf, gf, mf, vf, _t(p, alpha), _t(p, 1 - b1), _t(p, 1 - b2), _t(p, eps))


def adadelta(p, g, a, b, lr, rho, eps):
    pf, gf, af, bf = _flat(p, g, a, b)
    _adadelta_k(pf, gf, af, bf, _t(p, lr), _t(p, rho), _t(p, 1 - rho), _t(p, eps))


# --------------------------------------------------------------------------- a conv + max pooling, fused


def conv_pool_plan(x: np.ndarray, conv: Any, pool: Any) -> Any:
    """``fastconv._plan.plan_conv_pool`` for a Conv2D layer and the MaxPooling2D after it
    (no explicit padding) on input x; not fused where conv2d would refuse the geometry."""
    from .._params import conv2d_params
    from .._plan import ConvPoolPlan, plan_conv_pool

    w = conv.params["kernel"]
    try:
        p = conv2d_params(x.shape, w.shape, None, conv.strides, conv.padding, conv.dilation_rate, 1)
    except ValueError as exc:
        return ConvPoolPlan(False, str(exc))
    pooling = (pool.pool_size, pool.strides, pool._implicit)
    return plan_conv_pool(p, w.dtype, pooling, conv.need_input_grad, threads())


def threads() -> int:
    """The kernels' thread count (part of a plan's key)."""
    return numba.get_num_threads()


def conv_max_pool_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, plan: Any, training: bool) -> Any:
    """(pooled conv output, window codes or None, x as read): ``fastconv.cpu.conv_pool.forward``."""
    from ..cpu import conv_pool

    return conv_pool.forward(x, w, b, plan, keep_codes=training)


def conv_max_pool_backward(g: np.ndarray, codes: np.ndarray, xp: np.ndarray, plan: Any) -> Any:
    """(grad_weight, grad_bias) of the fused step: ``fastconv.cpu.conv_pool.grad_weight``."""
    from ..cpu import conv_pool

    return conv_pool.grad_weight(g, codes, xp, plan)


def conv_max_pool_scatter(g: np.ndarray, codes: np.ndarray, plan: Any) -> Any:
    """The conv output's gradient from the pooled one: ``fastconv.cpu.conv_pool.scatter_gradient``."""
    from ..cpu import conv_pool

    return conv_pool.scatter_gradient(g, codes, plan)
