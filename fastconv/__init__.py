"""fastconv: hand-written Numba kernels for 2-D convolution and max pooling.

Public functions take NumPy arrays (or array-likes) and return NumPy arrays,
or take CUDA arrays (``__cuda_array_interface__``) and return numba device
arrays.  Semantics are PyTorch's: NCHW, cross-correlation.

Call flow: each function runs a throwaway op object (``fastconv.ops``): it
validates into a parameter object (``_params``), picks the backend
(``_dispatch``), gets the convolution's plan (``_plan``: algorithm, layout,
tiling, each with its reason; ``plan_conv2d`` shows it) and the backend runs
the plan.  ``Conv2dOp``/``MaxPool2dOp`` keep state between forward and
backward (``fastconv.nn`` layers hold one each).
"""

from __future__ import annotations

from typing import Any, Literal, overload

from numpy.typing import ArrayLike, NDArray

from . import _surface, _threads, reference
from ._benchmark_mode import set_benchmark
from ._params import check_bool, check_padding_mode
from ._plan import ConvPlan
from ._threads import get_num_threads, set_num_threads, show_config, threads
from ._unbatched import check_like, drop, lift, lift_shape
from ._version import __version__  # noqa: E402
from .ops import (
    Conv2dOp,
    MaxPool2dOp,
    check_indices_in_range,
    plan_conv2d,
    pool_backward_args,
    pool_scatter,
)

__all__ = [
    "Conv2dOp",
    "ConvPlan",
    "MaxPool2dOp",
    "__version__",
    "avg_pool2d",
    "avg_pool2d_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "conv2d",
    "conv2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_unpool2d",
    "max_unpool2d_backward",
    "plan_conv2d",
    "reference",
    "get_num_threads",
    "set_num_threads",
    "show_config",
    "threads",
    "set_benchmark",
]


@_threads.guarded
def conv2d(
    x: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    algorithm: str = "auto",
    padding_mode: str = "zeros",
) -> NDArray[Any]:
    """2-D cross-correlation, ``torch.nn.functional.conv2d`` semantics.

    x (N, C, H, W), weight (K, C/groups, R, S), bias (K,) or None -> y (N, K, OH, OW).
    ``padding``: int, pair, "valid" or "same" (output ceil(H/stride), odd extra
    pad at the bottom/right, any stride).  ``algorithm``: "direct", "im2col" or
    "auto"; ``plan_conv2d`` with the same arguments returns the plan this runs.
    x may be unbatched (C, H, W) (then y is (K, OH, OW)).  ``padding_mode``
    (``torch.nn.Conv2d``'s): "zeros", or "reflect", "replicate", "circular" --
    an explicit pad of x, then the convolution with padding 0.
    """
    x, unbatched = lift(x, "x")
    if check_padding_mode(padding_mode) != "zeros":
        y = _surface.conv2d_padded(x, weight, bias, stride, padding, dilation, groups, padding_mode, algorithm)
        return drop(y, unbatched)
    op = Conv2dOp(stride, padding, dilation, groups, algorithm=algorithm)
    return drop(op.forward(x, weight, bias, keep_for_backward=False), unbatched)


@_threads.guarded
def conv2d_backward(
    grad_output: ArrayLike,
    x: ArrayLike,
    weight: ArrayLike,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    algorithm: str = "auto",
    need_input_grad: bool = True,
    padding_mode: str = "zeros",
) -> tuple[NDArray[Any] | None, NDArray[Any], NDArray[Any]]:
    """Gradients of ``conv2d`` for ``grad_output`` (N, K, OH, OW).

    Returns ``(grad_x, grad_weight, grad_bias)`` with the shapes of x, weight and
    (K,); grad_bias is the sum of grad_output over N, OH, OW and is always returned.
    ``need_input_grad=False`` skips grad_x (returned as None), like PyTorch for an
    input that does not require grad, e.g. a network's first layer.
    ``padding_mode`` as in ``conv2d``: the gradient of padded cells is folded
    back onto the cells they copy.  x may be unbatched (C, H, W), with
    grad_output (K, OH, OW) and grad_x (C, H, W).
    """
    x, unbatched = lift(x, "x")
    grad_output = check_like(grad_output, "grad_output", unbatched, "(K, OH, OW)")
    if check_padding_mode(padding_mode) != "zeros":
        gx, gw, gb = _surface.conv2d_padded_backward(
            grad_output, x, weight, stride, padding, dilation, groups, padding_mode, algorithm, need_input_grad
        )
        return drop(gx, unbatched), gw, gb
    op = Conv2dOp(stride, padding, dilation, groups, algorithm=algorithm, need_input_grad=need_input_grad)
    gx, gw, gb = op.backward_from(grad_output, x, weight)
    return drop(gx, unbatched), gw, gb


@overload
def max_pool2d(
    x: ArrayLike,
    kernel_size: Any,
    stride: Any = ...,
    padding: Any = ...,
    dilation: Any = ...,
    ceil_mode: bool = ...,
    return_indices: Literal[False] = ...,
) -> NDArray[Any]: ...


@overload
def max_pool2d(
    x: ArrayLike,
    kernel_size: Any,
    stride: Any = ...,
    padding: Any = ...,
    dilation: Any = ...,
    ceil_mode: bool = ...,
    *,
    return_indices: Literal[True],
) -> tuple[NDArray[Any], NDArray[Any]]: ...


@overload
def max_pool2d(
    x: ArrayLike,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: bool,
    return_indices: Literal[True],
) -> tuple[NDArray[Any], NDArray[Any]]: ...


@overload
def max_pool2d(
    x: ArrayLike,
    kernel_size: Any,
    stride: Any = ...,
    padding: Any = ...,
    dilation: Any = ...,
    ceil_mode: bool = ...,
    return_indices: bool = ...,
) -> NDArray[Any] | tuple[NDArray[Any], NDArray[Any]]: ...


@_threads.guarded
def max_pool2d(
    x: ArrayLike,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> NDArray[Any] | tuple[NDArray[Any], NDArray[Any]]:
    """2-D max pooling, ``torch.nn.functional.max_pool2d`` semantics.

    x (N, C, H, W) -> y (N, C, OH, OW), plus int64 ``indices`` (flat offsets into
    each H*W input plane) when ``return_indices``.  Padding is implicit -inf;
    ties go to the first maximum in row-major window order; NaN propagates.
    """
    return_indices = check_bool(return_indices, "return_indices")
    x, unbatched = lift(x, "x")
    op = MaxPool2dOp(kernel_size, stride, padding, dilation, ceil_mode)
    y = drop(op.forward(x, need_backward=return_indices), unbatched)
    return (y, drop(op.indices, unbatched)) if return_indices else y


@_threads.guarded
def max_pool2d_backward(grad_output: ArrayLike, indices: ArrayLike, input_shape: Any) -> NDArray[Any]:
    """Gradient of ``max_pool2d``: grad_output (N, C, OH, OW) scattered to the
    argmax ``indices`` (int64, as returned by ``max_pool2d``) and summed where
    windows overlap.  Returns grad_x of ``input_shape``.  Every index is
    checked to lie inside its plane (``MaxPool2dOp.backward`` skips that for
    its own indices)."""
    input_shape, unbatched = lift_shape(input_shape)
    grad_output = check_like(grad_output, "grad_output", unbatched, "(C, OH, OW)", "input_shape")
    indices = check_like(indices, "indices", unbatched, "(C, OH, OW)", "input_shape")
    be, gy, idx, shape, dtype = pool_backward_args(grad_output, indices, input_shape)
    check_indices_in_range(be, idx, shape)
    return drop(pool_scatter(be, gy, idx, shape, dtype), unbatched)


@_threads.guarded
def avg_pool2d(
    x: ArrayLike,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> NDArray[Any]:
    """2-D average pooling, ``torch.nn.functional.avg_pool2d`` semantics.

    x (N, C, H, W) or (C, H, W) -> y (N, C, OH, OW) or (C, OH, OW).  Each
    window's sum over its taps inside the input, divided by
    ``divisor_override`` if given, else by the window's size counting the zero
    padding (``count_include_pad``, but not a ceil_mode overhang past it) or
    only the taps inside the input.  Padding at most half the kernel.
    """
    x, unbatched = lift(x, "x")
    y = _surface.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return drop(y, unbatched)


@_threads.guarded
def avg_pool2d_backward(
    grad_output: ArrayLike,
    input_shape: Any,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> NDArray[Any]:
    """Gradient of ``avg_pool2d`` for ``grad_output`` (N, C, OH, OW) or
    (C, OH, OW): each output's gradient / its divisor added to every in-input
    tap of its window.  Returns grad_x of ``input_shape`` (4 or 3 ints)."""
    input_shape, unbatched = lift_shape(input_shape)
    grad_output = check_like(grad_output, "grad_output", unbatched, "(C, OH, OW)", "input_shape")
    gx = _surface.avg_pool2d_backward(
        grad_output, input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    return drop(gx, unbatched)


@_threads.guarded
def conv_transpose2d(
    x: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    algorithm: str = "auto",
) -> NDArray[Any]:
    """2-D transposed convolution, ``torch.nn.functional.conv_transpose2d`` semantics
    (argument order included).

    x (N, C_in, H, W) or (C_in, H, W), weight (C_in, C_out/groups, R, S), bias
    (C_out,) -> y (N, C_out, H_out, W_out), H_out = (H-1)*stride - 2*padding +
    dilation*(R-1) + output_padding + 1; output_padding must be smaller than
    stride or dilation.  Computed as conv2d's grad_x by conv2d's kernels and
    plan (on the CPU: the direct algorithm's grad_x), bias added after.
    """
    x, unbatched = lift(x, "x", "(C_in, H, W)")
    y = _surface.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation, algorithm)
    return drop(y, unbatched)


@_threads.guarded
def conv_transpose2d_backward(
    grad_output: ArrayLike,
    x: ArrayLike,
    weight: ArrayLike,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    algorithm: str = "auto",
    need_input_grad: bool = True,
) -> tuple[NDArray[Any] | None, NDArray[Any], NDArray[Any]]:
    """Gradients of ``conv_transpose2d`` for ``grad_output`` (N, C_out, H_out, W_out):
    ``(grad_x, grad_weight, grad_bias)``; grad_x is conv2d(grad_output, weight)
    (``algorithm`` chooses its kernels), None when ``need_input_grad`` is False."""
    x, unbatched = lift(x, "x", "(C_in, H, W)")
    grad_output = check_like(grad_output, "grad_output", unbatched, "(C_out, H_out, W_out)")
    gx, gw, gb = _surface.conv_transpose2d_backward(
        grad_output, x, weight, stride, padding, output_padding, groups, dilation, algorithm, need_input_grad
    )
    return drop(gx, unbatched), gw, gb


@_threads.guarded
def max_unpool2d(
    x: ArrayLike, indices: ArrayLike, kernel_size: Any, stride: Any = None, padding: Any = 0, output_size: Any = None
) -> NDArray[Any]:
    """Partial inverse of ``max_pool2d``, ``torch.nn.functional.max_unpool2d`` semantics.

    x and int64 ``indices`` (N, C, H, W) or (C, H, W) -> y (N, C, OH, OW): zeros
    except x's values at their indices (flat offsets into each OH*OW plane; a
    repeated index keeps the last value).  OH = (H-1)*stride - 2*padding +
    kernel_size unless ``output_size`` ((OH, OW), or a shape ending in them)
    gives another size strictly within one stride of it.  Indices outside the
    output plane raise ValueError.
    """
    x, unbatched = lift(x, "x")
    indices = check_like(indices, "indices", unbatched, "(C, H, W)")
    y = _surface.max_unpool2d(x, indices, kernel_size, stride, padding, output_size)
    return drop(y, unbatched)


@_threads.guarded
def max_unpool2d_backward(
    grad_output: ArrayLike,
    indices: ArrayLike,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    output_size: Any = None,
) -> NDArray[Any]:
    """Gradient of ``max_unpool2d``: grad_output (N, C, OH, OW) read at each index;
    grad_x has the shape of ``indices``."""
    indices, unbatched = lift(indices, "indices")
    grad_output = check_like(grad_output, "grad_output", unbatched, "(C, OH, OW)", "indices")
    gx = _surface.max_unpool2d_backward(grad_output, indices, kernel_size, stride, padding, output_size)
    return drop(gx, unbatched)
