"""The rest of PyTorch's 2-D surface, batched (4-D) only: average pooling,
transposed convolution, max unpooling, padding modes.

Each function validates into a parameter object (``_params``), picks the
backend from the array types (``_dispatch``) and runs the backend's entry
point; ``fastconv/__init__.py`` wraps them with the unbatched handling
(``_unbatched``).  Transposed convolution runs conv2d's own kernels through
conv2d's plan (its forward is conv2d's grad_x, its grad_x conv2d's forward).
"""

from __future__ import annotations

from typing import Any

from ._dispatch import backend, backend_name
from ._params import avg_pool2d_params, check_grad_output, compute_dtype, pool_input_shape

__all__ = ["avg_pool2d", "avg_pool2d_backward"]


def avg_pool2d(x: Any, kernel_size: Any, stride: Any, padding: Any, ceil_mode: Any, count_include_pad: Any,
               divisor_override: Any) -> Any:
    be = backend(backend_name(x=x))
    xa = be.asarray(x, "x")
    p = avg_pool2d_params(xa.shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    dtype = compute_dtype(xa.dtype)
    if p.n == 0:
        return be.zeros(p.y_shape, dtype)
    return be.avg_pool2d_forward(be.ascompute(xa, dtype), p)


def avg_pool2d_backward(grad_output: Any, input_shape: Any, kernel_size: Any, stride: Any, padding: Any,
                        ceil_mode: Any, count_include_pad: Any, divisor_override: Any) -> Any:
    be = backend(backend_name(grad_output=grad_output))
    gy = be.asarray(grad_output, "grad_output")
    p = avg_pool2d_params(pool_input_shape(input_shape), kernel_size, stride, padding, ceil_mode,
                          count_include_pad, divisor_override)
    check_grad_output(gy.shape, p.y_shape)
    dtype = compute_dtype(gy.dtype)
    if p.n == 0:
        return be.zeros(p.x_shape, dtype)
    return be.avg_pool2d_backward(be.ascompute(gy, dtype), p)
