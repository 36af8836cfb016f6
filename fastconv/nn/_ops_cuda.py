"""GPU (numba.cuda) implementation of the small ops the layers need besides conv/pool.

Same function names and semantics as ``_ops_cpu``; arrays are numba device
arrays.  Imported only by ``Sequential.to("cuda")`` after
``fastconv.cuda.is_available()``.  Convolution and pooling run in the
fastconv CUDA backend through the public API; here are the elementwise
activations, the dense products, the channels-last flatten, padding, and the
optimizer updates.  Elementwise kernels are grid-stride loops over flat
indices (``fastconv.cuda._arrays.elemwise_grid`` sizes the grid, small under
the simulator).  The dense products are one thread per output element with a
sequential sum over the reduction axis: the layers are small (a few hundred
by a few dozen) and this keeps results deterministic (no atomics).
Dropout masks are drawn on the device from one seed per step taken from the
layer's generator, by the counter-based hash that the CPU ops use too
(``_rules.dropout_uniform``): the same masks as on the CPU, nothing copied.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from numba import cuda
from numba.cuda.cudadrv.devicearray import is_cuda_ndarray

from ..cuda import _arrays as A
from . import _rules

name = "cuda"

_TPB2 = (4, 4) if A.SIM else (16, 16)


def _grid(size: int) -> tuple[int, int]:
    return A.elemwise_grid(max(1, size))


def _grid2(rows: int, cols: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return (math.ceil(rows / _TPB2[0]), math.ceil(cols / _TPB2[1])), _TPB2


def to_device(a: Any, dtype: Any) -> Any:
    dtype = np.dtype(dtype)
    if is_cuda_ndarray(a):
        if np.dtype(a.dtype) == dtype and a.is_c_contiguous():
            return a
        a = a.copy_to_host()
    host = np.ascontiguousarray(a, dtype=dtype)
    out = A.device_array(host.shape, dtype)  # a cached block: no allocation in a steady loop
    if host.size:  # flat: size-1 axes of a host copy may carry any stride
        A.flat(out).copy_to_device(host.reshape(host.size))
    return out


def to_host(a: Any) -> np.ndarray:
    return a.copy_to_host() if is_cuda_ndarray(a) else np.asarray(a)


def zeros(shape: tuple[int, ...], dtype: Any) -> Any:
    return A.zeros(shape, dtype)


def empty(shape: tuple[int, ...], dtype: Any) -> Any:
    return A.device_array(shape, dtype)


def zeros_like(a: Any) -> Any:
    return A.zeros(a.shape, a.dtype)


def copy(a: Any) -> Any:
    out = A.device_array(a.shape, a.dtype)
    out.copy_to_device(a)
    return out


# --------------------------------------------------------------------------- elementwise kernels

_RELU, _SIGMOID, _TANH = 0, 1, 2
_KINDS = {"relu": _RELU, "sigmoid": _SIGMOID, "tanh": _TANH, None: -1}
_relu = cuda.jit(device=True, inline=True)(_rules.relu)
_relu_grad = cuda.jit(device=True, inline=True)(_rules.relu_grad)


@cuda.jit(device=True, inline=True)
def _act(v, kind, zero):
    """The activation ``kind`` (_RELU, _SIGMOID, _TANH; anything else: none) of v."""
    if kind == 0:
        return _relu(v, zero)
    if kind == 1:
        return 0.5 * (math.tanh(0.5 * v) + 1)
    if kind == 2:
        return math.tanh(v)
    return v


@cuda.jit(device=True, inline=True)
def _act_grad(gv, yv, kind):
    """The gradient gv through activation ``kind`` with output yv (none: gv)."""
    if kind == 0:
        return _relu_grad(gv, yv)
    if kind == 1:
        return gv * yv * (1 - yv)
    if kind == 2:
        return gv * (1 - yv * yv)
    return gv


@cuda.jit(cache=True)
def _act_fwd(z, kind, zero):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < z.size:
        z[i] = _act(z[i], kind, zero)
        i += step


@cuda.jit(cache=True)
def _act_bwd(g, y, kind):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < g.size:
        g[i] = _act_grad(g[i], y[i], kind)
        i += step


@cuda.jit(cache=True)
def _softmax_fwd(z):
    """z (N, C, S): softmax over C for every (n, s), in place."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    n, c, s = z.shape
    while i < n * s:
        b, p = i // s, i % s
        m = z[b, 0, p]
        for k in range(1, c):
            m = max(m, z[b, k, p])
        tot = math.exp(z[b, 0, p] - m)  # typed like z: no literal that would promote float32
        z[b, 0, p] = tot
        for k in range(1, c):
            e = math.exp(z[b, k, p] - m)
            z[b, k, p] = e
            tot += e
        for k in range(c):
            z[b, k, p] /= tot
        i += step


@cuda.jit(cache=True)
def _softmax_bwd(g, y):
    """g = y * (g - sum_c g*y), over C of (N, C, S), in place."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    n, c, s = g.shape
    while i < n * s:
        b, p = i // s, i % s
        dot = g[b, 0, p] * y[b, 0, p]
        for k in range(1, c):
            dot += g[b, k, p] * y[b, k, p]
        for k in range(c):
            g[b, k, p] = y[b, k, p] * (g[b, k, p] - dot)
        i += step


def _ncs(a: Any) -> Any:
    return a.reshape(a.shape[0], a.shape[1], a.size // (a.shape[0] * a.shape[1]))


def activation_forward(kind: str | None, z: Any) -> Any:
    if kind is None or z.size == 0:
        return z
    if kind == "softmax":
        blocks, tpb = _grid(z.shape[0] * (z.size // (z.shape[0] * z.shape[1])))
        _softmax_fwd[blocks, tpb](_ncs(z))
        return z
    blocks, tpb = _grid(z.size)
    _act_fwd[blocks, tpb](A.flat(z), _KINDS[kind], np.dtype(z.dtype).type(0))
    return z


def activation_backward(kind: str | None, g: Any, y: Any) -> Any:
    if kind is None or g.size == 0:
        return g
    g = g if g.is_c_contiguous() else copy(g)
    if kind == "softmax":
        blocks, tpb = _grid(g.shape[0] * (g.size // (g.shape[0] * g.shape[1])))
        _softmax_bwd[blocks, tpb](_ncs(g), _ncs(y))
        return g
    blocks, tpb = _grid(g.size)
    _act_bwd[blocks, tpb](A.flat(g), A.flat(y), _KINDS[kind])
    return g


@cuda.jit(cache=True)
def _mul(a, b, out):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < out.size:
        out[i] = a[i] * b[i]
        i += step


def multiply(a: Any, b: Any) -> Any:
    out = A.device_array(a.shape, a.dtype)
    blocks, tpb = _grid(a.size)
    _mul[blocks, tpb](A.flat(a), A.flat(b), A.flat(out))
    return out


_dropout_uniform = cuda.jit(device=True, inline=True)(_rules.dropout_uniform)


@cuda.jit(cache=True)
def _dropout_mask(mask, seed, rate, scale):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < mask.size:
        mask[i] = scale if _dropout_uniform(seed, i) >= rate else scale * 0
        i += step


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], rate: float, dtype: Any) -> Any:
    """The mask ``_ops_cpu.dropout_mask`` draws (same seed, same bits), drawn on the device:
    one launch, nothing copied."""
    from ._ops_cpu import dropout_seed

    dtype = np.dtype(dtype)
    mask = A.device_array(shape, dtype)
    blocks, tpb = _grid(mask.size)
    args = (A.flat(mask), dropout_seed(rng), float(rate), dtype.type(1.0 / (1.0 - rate)))
    if A.SIM:  # the simulator runs the uint64 hash on NumPy scalars, which warn as they wrap
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            A.launch(_dropout_mask, blocks, tpb, *args)
    else:
        A.launch(_dropout_mask, blocks, tpb, *args)
    return mask


# --------------------------------------------------------------------------- max pooling with the ReLU


def max_pool_relu_forward(x: Any, kernel_size: Any, stride: Any, padding: Any, need_indices: bool):
    """(relu(max_pool2d(x)), indices or None) in one launch (``steps.ConvReLUPool``)."""
    from .._params import pool2d_params
    from ..cuda import _streams, pool

    p = pool2d_params(tuple(x.shape), kernel_size, stride, padding)
    with _streams.on_inputs(x=x):
        if need_indices:
            y, idx = pool.max_pool2d_forward(x, p, True, relu=True)
            return y, idx, p
        return pool.max_pool2d_forward(x, p, False, relu=True), None, p


def max_pool_relu_backward(gy: Any, y: Any, indices: Any, p: Any) -> Any:
    """The input gradient of ``max_pool_relu_forward`` (output y) in one launch."""
    from ..cuda import _streams, pool

    gy = gy if gy.is_c_contiguous() else copy(gy)
    with _streams.on_inputs(grad_output=gy, y=y, indices=indices):
        return pool.max_pool2d_backward(gy, indices, p, y=y)


# --------------------------------------------------------------------------- loss


@cuda.jit(device=True, inline=True)
def _argmax_row(a, i):
    """np.argmax of row i: the first maximum, or the first NaN."""
    best, at = a[i, 0], 0
    if best != best:
        return 0
    for k in range(1, a.shape[1]):
        v = a[i, k]
        if v != v:
            return k
        if v > best:
            best, at = v, k
    return at


@cuda.jit(device=True, inline=True)
def _xent_row(z, t, g, i, n):
    """Row i of the softmax cross-entropy on logits (``losses`` in log-sum-exp form):
    writes the gradient (softmax - t * rowsum(t)) / N, returns the row's loss (float64)."""
    c = z.shape[1]
    m = z[i, 0]
    for k in range(1, c):
        m = max(m, z[i, k])
    tot = math.exp(z[i, 0] - m)
    tsum = t[i, 0]
    for k in range(1, c):
        tot += math.exp(z[i, k] - m)
        tsum += t[i, k]
    lse = math.log(tot)
    loss = 0.0
    for k in range(c):
        logp = z[i, k] - m - lse
        loss -= float(t[i, k] * logp)
        g[i, k] = (math.exp(logp) * tsum - t[i, k]) / n
    return loss


@cuda.jit(cache=True)
def _xent_logits(z, t, g, rows, sink, slot, n):
    """One block: every row's loss and hit (argmax of z == argmax of t) into ``rows``, then
    thread 0 sums them in row order (deterministic, no atomics) into sink[slot]."""
    i = cuda.threadIdx.x
    while i < z.shape[0]:
        rows[i, 0] = _xent_row(z, t, g, i, n)
        rows[i, 1] = 1.0 if _argmax_row(z, i) == _argmax_row(t, i) else 0.0
        i += cuda.blockDim.x
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        loss, hits = 0.0, 0.0
        for r in range(z.shape[0]):
            loss += rows[r, 0]
            hits += rows[r, 1]
        sink[slot, 0] = loss
        sink[slot, 1] = hits


def xent_logits(z: Any, targets: np.ndarray, sink: Any, slot: int) -> Any:
    """Gradient of the mean softmax cross-entropy of logits z (N, C) against host one-hot
    ``targets`` (copied over: the step's only host-to-device copy besides the batch); the
    summed loss and the correct count go to ``sink[slot]`` on the device."""
    t = to_device(targets, z.dtype)
    g = A.device_array(z.shape, z.dtype)
    rows = A.device_array((z.shape[0], 2), np.float64)
    A.launch(_xent_logits, 1, A.ELEMWISE_TPB, z, t, g, rows, sink, slot, _t(z, z.shape[0]))
    return g


# --------------------------------------------------------------------------- dense


@cuda.jit(device=True, inline=True)
def _xin(x4, i, f, relu_in, zero):
    """Input feature f of row i: x4 is (N, C, H, W) and feature f is (h, w, c) in Keras'
    channels-last order (a plain (N, F) input arrives as (N, F, 1, 1)); ``relu_in``: the
    ReLU of a Conv2D before a Flatten, applied on the fly (``steps.ReLUFlattenDense``)."""
    c = x4.shape[1]
    ci = f % c
    j = f // c
    wi = j % x4.shape[3]
    v = x4[i, ci, j // x4.shape[3], wi]
    return _relu(v, zero) if relu_in else v


@cuda.jit(cache=True)
def _dense_fwd(x4, w, b, y, has_bias, kind, zero, relu_in):
    """y[i, j] = act(sum_k x[i, k] w[k, j] + b[j]): product, bias and activation in one launch
    (the same sums in the same order as the separate steps, so the same bits)."""
    i, j = cuda.grid(2)
    if i >= y.shape[0] or j >= y.shape[1]:
        return
    acc = _xin(x4, i, 0, relu_in, zero) * w[0, j]
    for k in range(1, w.shape[0]):
        acc += _xin(x4, i, k, relu_in, zero) * w[k, j]
    if has_bias:
        acc += b[j]
    y[i, j] = _act(acc, kind, zero)


@cuda.jit(device=True, inline=True)
def _dense_wgrad_at(x4, g, y, kind, out, f, j, relu_in, zero):
    """out[f, j]: rows f < F of x.T @ ga, row F the column sums of ga (the bias gradient),
    where ga is g taken back through the activation on the fly."""
    if f == out.shape[0] - 1:
        acc = _act_grad(g[0, j], y[0, j], kind)
        for i in range(1, g.shape[0]):
            acc += _act_grad(g[i, j], y[i, j], kind)
    else:
        acc = _xin(x4, 0, f, relu_in, zero) * _act_grad(g[0, j], y[0, j], kind)
        for i in range(1, g.shape[0]):
            acc += _xin(x4, i, f, relu_in, zero) * _act_grad(g[i, j], y[i, j], kind)
    out[f, j] = acc


@cuda.jit(device=True, inline=True)
def _dense_gx_at(g, y, kind, w, gx4, x4, i, f, relu_in):
    """Input gradient (i, f) of ga @ w.T (ga as in ``_dense_wgrad_at``), written at x's
    (c, h, w) position; ``relu_in``: through the ReLU of the input on the fly."""
    acc = _act_grad(g[i, 0], y[i, 0], kind) * w[f, 0]
    for j in range(1, g.shape[1]):
        acc += _act_grad(g[i, j], y[i, j], kind) * w[f, j]
    c = gx4.shape[1]
    ci = f % c
    q = f // c
    wi = q % gx4.shape[3]
    hi = q // gx4.shape[3]
    if relu_in:
        acc = _relu_grad(acc, x4[i, ci, hi, wi])  # relu(x) > 0 exactly where x > 0
    gx4[i, ci, hi, wi] = acc


@cuda.jit(cache=True)
def _dense_bwd(x4, g, y, kind, w, out, gx4, relu_in, zero):
    """Both gradients of a dense layer in one launch: grid z = 0 computes the weight and
    bias gradients (``out``), z = 1 the input gradient (``gx4``; a grid with one z layer
    when it is not needed).  The 2-D grid covers the larger of the two outputs."""
    r, c = cuda.grid(2)
    if cuda.blockIdx.z == 0:
        if r < out.shape[0] and c < out.shape[1]:
            _dense_wgrad_at(x4, g, y, kind, out, r, c, relu_in, zero)
    elif r < g.shape[0] and c < w.shape[0]:
        _dense_gx_at(g, y, kind, w, gx4, x4, r, c, relu_in)


def _as4(a: Any) -> Any:
    """(N, F) -> (N, F, 1, 1); a 4-D array as it is."""
    return a if a.ndim == 4 else a.reshape(a.shape[0], a.size // max(a.shape[0], 1), 1, 1)


def dense_act_forward(x: Any, w: Any, b: Any, activation: str | None, relu_in: bool = False) -> Any:
    """act(x @ w + b) in one launch (``activation`` elementwise or None).  x is (N, F), or
    (N, C, H, W) flattened in (h, w, c) order on the fly, through a ReLU if ``relu_in``."""
    y = A.device_array((x.shape[0], w.shape[1]), x.dtype)
    grid, tpb = _grid2(*y.shape)
    bias = b if b is not None else w[0]
    zero = np.dtype(x.dtype).type(0)
    A.launch(_dense_fwd, grid, tpb, _as4(x), w, bias, y, b is not None, _KINDS[activation], zero, relu_in)
    return y


def dense_act_backward(
    g: Any, x: Any, w: Any, y: Any, activation: str | None, need_gx: bool, need_gb: bool, relu_in: bool = False
):
    """(gx, gw, gb) of ``dense_act_forward`` from the output gradient g and output y, in
    one launch (``_dense_bwd``); gx has x's shape."""
    g = g if g.is_c_contiguous() else copy(g)
    kind = _KINDS[activation]
    y = y if kind >= 0 else g
    features = w.shape[0]
    out = A.device_array((features + 1, g.shape[1]), g.dtype)
    rows, cols = out.shape
    gx = out.reshape(out.shape[0], out.shape[1], 1, 1)  # placeholder when not wanted (grid z = 0 only)
    if need_gx:
        gx = A.device_array(tuple(x.shape), g.dtype)
        rows, cols = max(rows, g.shape[0]), max(cols, features)
    (gr, gc), tpb = _grid2(rows, cols)
    zero = np.dtype(g.dtype).type(0)
    A.launch(_dense_bwd, (gr, gc, 2 if need_gx else 1), tpb, _as4(x), g, y, kind, w, out, _as4(gx), relu_in, zero)
    return (gx if need_gx else None), out[:features], (out[features] if need_gb else None)


def dense_forward(x: Any, w: Any, b: Any) -> Any:
    return dense_act_forward(x, w, b, None)


def dense_backward(g: Any, x: Any, w: Any, need_gx: bool, need_gb: bool):
    return dense_act_backward(g, x, w, None, None, need_gx, need_gb)


# --------------------------------------------------------------------------- reshapes


@cuda.jit(cache=True)
def _nchw_to_nhwc(x, out):
    """out (N, H*W*C) flat in (h, w, c) order from x (N, C, H, W)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    n, c, h, w = x.shape
    while i < out.size:
        ci = i % c
        j = i // c
        wi = j % w
        j //= w
        hi = j % h
        b = j // h
        out[i] = x[b, ci, hi, wi]
        i += step


@cuda.jit(cache=True)
def _nhwc_to_nchw(g, out):
    """out (N, C, H, W) from g (N, H*W*C) in (h, w, c) order; flat index over out."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    n, c, h, w = out.shape
    while i < g.size:
        wi = i % w
        j = i // w
        hi = j % h
        j //= h
        ci = j % c
        b = j // c
        out[b, ci, hi, wi] = g[b, (hi * w + wi) * c + ci]
        i += step


@cuda.jit(cache=True)
def _flatten_act(x, out, kind, zero):
    """out = act(x) flattened in (h, w, c) order (``_nchw_to_nhwc`` with the activation)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    n, c, h, w = x.shape
    while i < out.size:
        ci = i % c
        j = i // c
        wi = j % w
        j //= w
        hi = j % h
        b = j // h
        out[i] = _act(x[b, ci, hi, wi], kind, zero)
        i += step


@cuda.jit(cache=True)
def _unflatten_act_grad(g, y, out):
    """out (N, C, H, W) = relu'(g) with g and the flat output y in (h, w, c) order."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    n, c, h, w = out.shape
    while i < g.size:
        wi = i % w
        j = i // w
        hi = j % h
        j //= h
        ci = j % c
        b = j // c
        f = (hi * w + wi) * c + ci
        out[b, ci, hi, wi] = _relu_grad(g[b, f], y[b, f])
        i += step


def flatten_relu_forward(x: Any) -> Any:
    """relu(x) flattened as ``flatten_forward``, in one launch (``steps.ReLUFlatten``)."""
    n, c, h, w = x.shape
    out = A.device_array((n, c * h * w), x.dtype)
    blocks, tpb = _grid(out.size)
    A.launch(_flatten_act, blocks, tpb, x, A.flat(out), _RELU, np.dtype(x.dtype).type(0))
    return out


def flatten_relu_backward(g: Any, y: Any, shape: tuple[int, ...]) -> Any:
    """The gradient of ``flatten_relu_forward`` (output y) in one launch."""
    g = g if g.is_c_contiguous() else copy(g)
    out = A.device_array(shape, g.dtype)
    blocks, tpb = _grid(out.size)
    A.launch(_unflatten_act_grad, blocks, tpb, g, y, out)
    return out


def flatten_forward(x: Any) -> Any:
    n, c, h, w = x.shape
    if c == 1 or h * w == 1:
        return x.reshape(n, c * h * w)
    out = A.device_array((n, c * h * w), x.dtype)
    blocks, tpb = _grid(out.size)
    _nchw_to_nhwc[blocks, tpb](x, A.flat(out))
    return out


def flatten_backward(g: Any, shape: tuple[int, ...]) -> Any:
    n, c, h, w = shape
    g = g if g.is_c_contiguous() else copy(g)
    if c == 1 or h * w == 1:
        return g.reshape(n, c, h, w)
    out = A.device_array((n, c, h, w), g.dtype)
    blocks, tpb = _grid(out.size)
    _nhwc_to_nchw[blocks, tpb](g, out)
    return out


@cuda.jit(cache=True)
def _pad(x, out, top, left, value):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    n, c, hp, wp = out.shape
    h, w = x.shape[2], x.shape[3]
    while i < out.size:
        wi = i % wp
        j = i // wp
        hi = j % hp
        j //= hp
        ci = j % c
        b = j // c
        r, s = hi - top, wi - left
        out[b, ci, hi, wi] = x[b, ci, r, s] if 0 <= r < h and 0 <= s < w else value
        i += step


@cuda.jit(cache=True)
def _crop(g, out, top, left):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    n, c, h, w = out.shape
    while i < out.size:
        wi = i % w
        j = i // w
        hi = j % h
        j //= h
        ci = j % c
        b = j // c
        out[b, ci, hi, wi] = g[b, ci, hi + top, wi + left]
        i += step


def pad_value(x: Any, top: int, bottom: int, left: int, right: int, value: float) -> Any:
    n, c, h, w = x.shape
    out = A.device_array((n, c, h + top + bottom, w + left + right), x.dtype)
    blocks, tpb = _grid(out.size)
    _pad[blocks, tpb](x, out, top, left, np.dtype(x.dtype).type(value))
    return out


def crop(g: Any, top: int, left: int, h: int, w: int) -> Any:
    out = A.device_array((g.shape[0], g.shape[1], h, w), g.dtype)
    blocks, tpb = _grid(out.size)
    _crop[blocks, tpb](g, out, top, left)
    return out


# --------------------------------------------------------------------------- optimizers (in place, flat)
# The update rules are ``_rules``' (shared with ``_ops_cpu``), compiled as device
# functions.  Coefficients arrive typed as the parameters' dtype (1 - rho
# precomputed on the host), so float32 models update in float32 arithmetic, as on
# the CPU.


def _device(rule: Any) -> Any:
    return cuda.jit(device=True, inline=True)(rule)


_axpy_r, _sgd_r, _sgd_momentum_r = _device(_rules.axpy), _device(_rules.sgd), _device(_rules.sgd_momentum)
_rmsprop_r, _adam_r, _adadelta_r = _device(_rules.rmsprop), _device(_rules.adam), _device(_rules.adadelta)


def _t(p: Any, v: float) -> Any:
    return np.dtype(p.dtype).type(v)


# --------------------------------------------------------------------------- optimizers, fused
# One launch updates every parameter: the arrays arrive as tuples (flat views, all of
# the model dtype, so one tuple type), each thread walks every parameter with a grid
# stride.  ``wds`` holds each parameter's L2 coefficient (0: none), applied to the
# gradient first exactly as ``Optimizer.apply``'s axpy does on the host path.


@cuda.jit(device=True, inline=True)
def _decayed(g, p, i, wd):
    """g[i] with the L2 term added (written back, as the unfused axpy leaves it)."""
    gi = g[i]
    if wd != 0:
        gi = _axpy_r(gi, p[i], wd)
        g[i] = gi
    return gi


@cuda.jit(cache=True)
def _sgd_all(ps, gs, wds, lr):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for s in range(len(ps)):
        p, g, wd = ps[s], gs[s], wds[s]
        i = start
        while i < p.size:
            p[i] = _sgd_r(p[i], _decayed(g, p, i, wd), lr)
            i += step


@cuda.jit(cache=True)
def _sgd_momentum_all(ps, gs, vs, wds, lr, momentum, nesterov):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for s in range(len(ps)):
        p, g, v, wd = ps[s], gs[s], vs[s], wds[s]
        i = start
        while i < p.size:
            p[i], v[i] = _sgd_momentum_r(p[i], _decayed(g, p, i, wd), v[i], lr, momentum, nesterov)
            i += step


@cuda.jit(cache=True)
def _rmsprop_all(ps, gs, as_, wds, lr, rho, omr, eps):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for s in range(len(ps)):
        p, g, a, wd = ps[s], gs[s], as_[s], wds[s]
        i = start
        while i < p.size:
            p[i], a[i] = _rmsprop_r(p[i], _decayed(g, p, i, wd), a[i], lr, rho, omr, eps)
            i += step


@cuda.jit(cache=True)
def _adam_all(ps, gs, ms, vs, wds, alpha, omb1, omb2, eps):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for s in range(len(ps)):
        p, g, m, v, wd = ps[s], gs[s], ms[s], vs[s], wds[s]
        i = start
        while i < p.size:
            p[i], m[i], v[i] = _adam_r(p[i], _decayed(g, p, i, wd), m[i], v[i], alpha, omb1, omb2, eps)
            i += step


@cuda.jit(cache=True)
def _adadelta_all(ps, gs, as_, bs, wds, lr, rho, omr, eps):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for s in range(len(ps)):
        p, g, a, b, wd = ps[s], gs[s], as_[s], bs[s], wds[s]
        i = start
        while i < p.size:
            p[i], a[i], b[i] = _adadelta_r(p[i], _decayed(g, p, i, wd), a[i], b[i], lr, rho, omr, eps)
            i += step


def _coefficients(name: str, p: Any, args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    """(kernel, its scalar arguments typed as the parameters) for ``Optimizer.update_args``."""
    if name == "sgd":
        lr, momentum, nesterov = args
        if not momentum:
            return _sgd_all, (_t(p, lr),)
        return _sgd_momentum_all, (_t(p, lr), _t(p, momentum), bool(nesterov))
    if name == "rmsprop":
        lr, rho, eps = args
        return _rmsprop_all, (_t(p, lr), _t(p, rho), _t(p, 1 - rho), _t(p, eps))
    if name == "adam":
        alpha, b1, b2, eps = args
        return _adam_all, (_t(p, alpha), _t(p, 1 - b1), _t(p, 1 - b2), _t(p, eps))
    if name == "adadelta":
        lr, rho, eps = args
        return _adadelta_all, (_t(p, lr), _t(p, rho), _t(p, 1 - rho), _t(p, eps))
    raise ValueError(f"no fused update for optimizer {name!r}")


def update_all(name: str, params: list[Any], grads: list[Any], state: list[list[Any]], wds: list[float], args):
    """One optimizer step for every parameter in one launch (``Optimizer.apply``)."""
    if not params:
        return
    p0 = params[0]
    kernel, coeffs = _coefficients(name, p0, tuple(args))
    slots = tuple(tuple(A.flat(st[j]) for st in state) for j in range(len(state[0])))
    tensors = (tuple(A.flat(p) for p in params), tuple(A.flat(g) for g in grads), *slots)
    blocks, tpb = _grid(max(p.size for p in params))
    A.launch(kernel, blocks, tpb, *tensors, tuple(_t(p0, w) for w in wds), *coeffs)
