"""fastconv: hand-written Numba kernels for 2-D convolution and max pooling.

Public functions take NumPy arrays (or array-likes) and return NumPy arrays,
or take CUDA arrays (``__cuda_array_interface__``) and return numba device
arrays.  Semantics are PyTorch's: NCHW, cross-correlation.

Call flow: validate into a parameter object (``_params``) -> pick backend and
algorithm (``_dispatch``) -> the backend allocates and launches a kernel.
"""

from __future__ import annotations

from typing import Any

from . import _dispatch, _threads, reference
from ._params import (
    check_algorithm,
    check_bool,
    check_grad_output,
    check_pool_index_range,
    check_pool_indices,
    compute_dtype,
    conv2d_params,
    pool2d_params,
    pool_input_shape,
    pool_scatter_params,
)
from ._threads import get_num_threads, set_num_threads, show_config, threads

__version__ = "0.1.0"

__all__ = ["conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "reference", "__version__",
           "set_num_threads", "get_num_threads", "threads", "show_config"]


@_threads.guarded
def conv2d(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1, *, algorithm: str = "auto") -> Any:
    """2-D cross-correlation, ``torch.nn.functional.conv2d`` semantics.

    x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or None -> y (N, K, OH, OW).
    ``padding``: int, pair, "valid" or "same" (output ceil(H/stride), odd extra
    pad at the bottom/right, any stride).  ``algorithm``: "direct", "im2col" or
    "auto" (see ``_dispatch.conv2d_algorithm``).
    """
    return _conv2d(x, weight, bias, stride, padding, dilation, groups, algorithm, None)


def _conv2d(x: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: int,
            algorithm: str, saved: dict | None) -> Any:
    """``conv2d``; ``saved`` (a dict, or None): the CPU direct kernels may keep
    their prepared copy of x there for ``_conv2d_backward`` with the same
    ``saved`` and the same x object, which must not change in between
    (``fastconv.nn``'s Conv2D: its input is never modified)."""
    check_algorithm(algorithm)
    name = _dispatch.backend_name(x=x, weight=weight, bias=bias)
    be = _dispatch.backend(name)
    x, weight = be.asarray(x, "x"), be.asarray(weight, "weight")
    bias = None if bias is None else be.asarray(bias, "bias")
    p = conv2d_params(x.shape, weight.shape, None if bias is None else bias.shape,
                      stride, padding, dilation, groups)
    dtype = compute_dtype(x.dtype, weight.dtype, None if bias is None else bias.dtype)
    if p.n == 0:
        return be.zeros(p.y_shape, dtype)
    x, weight = be.ascompute(x, dtype), be.ascompute(weight, dtype)
    bias = None if bias is None else be.ascompute(bias, dtype)
    return be.conv2d_forward(x, weight, bias, p, _dispatch.conv2d_algorithm(algorithm, p, name), saved)


@_threads.guarded
def conv2d_backward(grad_output: Any, x: Any, weight: Any, stride: Any = 1, padding: Any = 0,
                    dilation: Any = 1, groups: int = 1, *, algorithm: str = "auto",
                    need_input_grad: bool = True) -> tuple[Any, Any, Any]:
    """Gradients of ``conv2d`` for ``grad_output`` (N, K, OH, OW).

    Returns ``(grad_x, grad_weight, grad_bias)`` with the shapes of x, weight and
    (K,); grad_bias is the sum of grad_output over N, OH, OW and is always returned.
    ``need_input_grad=False`` skips grad_x (returned as None), like PyTorch for an
    input that does not require grad, e.g. a network's first layer.
    """
    return _conv2d_backward(grad_output, x, weight, stride, padding, dilation, groups, algorithm,
                            need_input_grad, None)


def _conv2d_backward(grad_output: Any, x: Any, weight: Any, stride: Any, padding: Any, dilation: Any,
                     groups: int, algorithm: str, need_input_grad: bool, saved: dict | None) -> tuple[Any, Any, Any]:
    """``conv2d_backward``; ``saved``: see ``_conv2d``."""
    check_algorithm(algorithm)
    need_input_grad = check_bool(need_input_grad, "need_input_grad")
    name = _dispatch.backend_name(grad_output=grad_output, x=x, weight=weight)
    be = _dispatch.backend(name)
    gy = be.asarray(grad_output, "grad_output")
    x, weight = be.asarray(x, "x"), be.asarray(weight, "weight")
    p = conv2d_params(x.shape, weight.shape, None, stride, padding, dilation, groups)
    check_grad_output(gy.shape, p.y_shape)
    dtype = compute_dtype(gy.dtype, x.dtype, weight.dtype)
    if p.n == 0:
        gx = be.zeros(p.x_shape, dtype) if need_input_grad else None
        return gx, be.zeros(p.weight_shape, dtype), be.zeros((p.k,), dtype)
    gy, x, weight = be.ascompute(gy, dtype), be.ascompute(x, dtype), be.ascompute(weight, dtype)
    alg = _dispatch.conv2d_algorithm(algorithm, p, name, need_input_grad)
    return be.conv2d_backward(gy, x, weight, p, alg, need_input_grad, saved)


@_threads.guarded
def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """2-D max pooling, ``torch.nn.functional.max_pool2d`` semantics.

    x (N, C, H, W) -> y (N, C, OH, OW), plus int64 ``indices`` (flat offsets into
    each H*W input plane) when ``return_indices``.  Padding is implicit -inf;
    ties go to the first maximum in row-major window order; NaN propagates.
    """
    name = _dispatch.backend_name(x=x)
    be = _dispatch.backend(name)
    x = be.asarray(x, "x")
    p = pool2d_params(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    check_bool(return_indices, "return_indices")
    dtype = compute_dtype(x.dtype)
    if p.n == 0:
        y = be.zeros(p.y_shape, dtype)
        return (y, be.zeros(p.y_shape, "int64")) if return_indices else y
    return be.max_pool2d_forward(be.ascompute(x, dtype), p, return_indices)


@_threads.guarded
def max_pool2d_backward(grad_output: Any, indices: Any, input_shape: Any) -> Any:
    """Gradient of ``max_pool2d``: grad_output (N, C, OH, OW) scattered to the
    argmax ``indices`` (int64, as returned by ``max_pool2d``) and summed where
    windows overlap.  Returns grad_x of ``input_shape``."""
    return _max_pool2d_backward(grad_output, indices, input_shape, check_range=True)


def _max_pool2d_backward(grad_output: Any, indices: Any, input_shape: Any, *, check_range: bool) -> Any:
    """``max_pool2d_backward``; ``check_range=False`` skips the pass that checks
    every index lies inside its plane -- only for indices this library's own
    ``max_pool2d`` returned for ``input_shape`` (``fastconv.nn``'s pooling
    layer), which are in range by construction."""
    name = _dispatch.backend_name(grad_output=grad_output, indices=indices)
    be = _dispatch.backend(name)
    gy = be.asarray(grad_output, "grad_output")
    indices = be.asarray(indices, "indices")
    shape = pool_input_shape(input_shape)
    check_pool_indices(indices.dtype, indices.shape, gy.shape, shape)
    dtype = compute_dtype(gy.dtype)
    if gy.size == 0:
        return be.zeros(shape, dtype)
    if check_range:
        check_pool_index_range(*be.index_range(indices), shape)
    p = pool_scatter_params(shape, gy.shape)
    return be.max_pool2d_backward(be.ascompute(gy, dtype), be.ascompute(indices, "int64"), p)
