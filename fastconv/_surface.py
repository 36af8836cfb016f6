"""The rest of PyTorch's 2-D surface, batched (4-D) only: average pooling,
transposed convolution, max unpooling, padding modes.

Each function validates into a parameter object (``_params``), picks the
backend from the array types (``_dispatch``) and runs the backend's entry
point; ``fastconv/__init__.py`` wraps them with the unbatched handling
(``_unbatched``).  An op made of several backend calls runs them inside
``be.on_inputs(...)`` of the user's arguments, so on CUDA every allocation and
launch of the op is on the device and stream those arguments choose
(``fastconv.cuda._streams``).  Transposed convolution runs conv2d's own kernels through
conv2d's plan (its forward is conv2d's grad_x, its grad_x conv2d's forward).
"""

from __future__ import annotations

from typing import Any

from ._dispatch import backend, backend_name
from ._params import (
    Conv2dParams,
    ConvTranspose2dParams,
    Unpool2dParams,
    avg_pool2d_params,
    check_algorithm,
    check_bool,
    check_grad_output,
    check_unpool_index_range,
    compute_dtype,
    conv2d_params,
    conv_transpose2d_params,
    explicit_pads,
    max_unpool2d_params,
    pool_input_shape,
)
from ._plan import ConvPlan, build_plan
from .ops import Conv2dOp, _threads

__all__ = [
    "avg_pool2d",
    "avg_pool2d_backward",
    "conv2d_padded",
    "conv2d_padded_backward",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "max_unpool2d",
    "max_unpool2d_backward",
]


def avg_pool2d(
    x: Any, kernel_size: Any, stride: Any, padding: Any, ceil_mode: Any, count_include_pad: Any, divisor_override: Any
) -> Any:
    be = backend(backend_name(x=x))
    xa = be.asarray(x, "x")
    p = avg_pool2d_params(xa.shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    dtype = compute_dtype(xa.dtype)
    with be.on_inputs(x=xa):
        if p.n == 0:
            return be.zeros(p.y_shape, dtype)
        return be.avg_pool2d_forward(be.ascompute(xa, dtype), p)


def avg_pool2d_backward(
    grad_output: Any,
    input_shape: Any,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    ceil_mode: Any,
    count_include_pad: Any,
    divisor_override: Any,
) -> Any:
    be = backend(backend_name(grad_output=grad_output))
    gy = be.asarray(grad_output, "grad_output")
    p = avg_pool2d_params(
        pool_input_shape(input_shape), kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )
    check_grad_output(gy.shape, p.y_shape)
    dtype = compute_dtype(gy.dtype)
    with be.on_inputs(grad_output=gy):
        if p.n == 0:
            return be.zeros(p.x_shape, dtype)
        return be.avg_pool2d_backward(be.ascompute(gy, dtype), p)


# --------------------------------------------------------------------------- conv_transpose2d


def _conv_plan(t: ConvTranspose2dParams, dtype: Any, name: str, algorithm: str) -> ConvPlan:
    """The plan of the conv2d whose grad_x the transposed forward is.  On the
    CPU always direct (its grad_x needs no grad_weight pass; im2col computes
    grad_x inside its grad_weight loop); on CUDA the plan's choice."""
    alg = "direct" if name == "cpu" else algorithm
    return build_plan(t.conv, dtype, name, _threads(name), True, alg)


def conv_transpose2d(
    x: Any,
    weight: Any,
    bias: Any,
    stride: Any,
    padding: Any,
    output_padding: Any,
    groups: Any,
    dilation: Any,
    algorithm: str,
) -> Any:
    check_algorithm(algorithm)
    name = backend_name(x=x, weight=weight, bias=bias)
    be = backend(name)
    xa, wa = be.asarray(x, "x"), be.asarray(weight, "weight")
    ba = None if bias is None else be.asarray(bias, "bias")
    t = conv_transpose2d_params(
        xa.shape, wa.shape, None if ba is None else ba.shape, stride, padding, output_padding, groups, dilation
    )
    dtype = compute_dtype(xa.dtype, wa.dtype, None if ba is None else ba.dtype)
    with be.on_inputs(x=xa, weight=wa, bias=ba):
        if t.n == 0:
            return be.zeros(t.y_shape, dtype)
        xc, wc = be.ascompute(xa, dtype), be.ascompute(wa, dtype)
        if t.extra_h or t.extra_w:
            xc = be.pad_end(xc, t.extra_h, t.extra_w)
        plan = _conv_plan(t, dtype, name, algorithm)
        y = be.conv2d_input_grad(xc, wc, plan)
        return y if ba is None else be.add_bias(y, be.ascompute(ba, dtype))


def conv_transpose2d_backward(
    grad_output: Any,
    x: Any,
    weight: Any,
    stride: Any,
    padding: Any,
    output_padding: Any,
    groups: Any,
    dilation: Any,
    algorithm: str,
    need_input_grad: Any,
) -> tuple[Any, Any, Any]:
    """(grad_x or None, grad_weight, grad_bias): grad_x is conv2d(grad_output,
    weight), grad_weight conv2d's grad_weight with x as its grad_output and
    grad_output as its input, grad_bias the channel sums of grad_output."""
    check_algorithm(algorithm)
    nig = check_bool(need_input_grad, "need_input_grad")
    name = backend_name(grad_output=grad_output, x=x, weight=weight)
    be = backend(name)
    gya = be.asarray(grad_output, "grad_output")
    xa, wa = be.asarray(x, "x"), be.asarray(weight, "weight")
    t = conv_transpose2d_params(xa.shape, wa.shape, None, stride, padding, output_padding, groups, dilation)
    check_grad_output(gya.shape, t.y_shape)
    dtype = compute_dtype(gya.dtype, xa.dtype, wa.dtype)
    with be.on_inputs(grad_output=gya, x=xa, weight=wa):
        if t.n == 0:
            gx0 = be.zeros(t.x_shape, dtype) if nig else None
            return gx0, be.zeros(tuple(wa.shape), dtype), be.zeros((t.c_out,), dtype)
        gy, xc, wc = be.ascompute(gya, dtype), be.ascompute(xa, dtype), be.ascompute(wa, dtype)
        conv = t.conv
        geometry = ((conv.sh, conv.sw), (conv.ph, conv.pw), (conv.dh, conv.dw), conv.groups)
        gx = None
        if nig:
            gx = Conv2dOp(*geometry, algorithm=algorithm).forward(gy, wc, None, keep_for_backward=False)
            if t.extra_h or t.extra_w:
                gx = be.crop(gx, t.h, t.w)
        if t.extra_h or t.extra_w:
            xc = be.pad_end(xc, t.extra_h, t.extra_w)
        _, gw, _ = Conv2dOp(*geometry, algorithm=algorithm, need_input_grad=False).backward_from(xc, gy, wc)
        return gx, gw, be.channel_sums(gy)


# --------------------------------------------------------------------------- max_unpool2d


def _unpool_args(
    x: Any, indices: Any, kernel_size: Any, stride: Any, padding: Any, output_size: Any
) -> tuple[Any, Any, Any, Unpool2dParams]:
    be = backend(backend_name(x=x, indices=indices))
    xa, idx = be.asarray(x, "x"), be.asarray(indices, "indices")
    p = max_unpool2d_params(xa.shape, idx.dtype, idx.shape, kernel_size, stride, padding, output_size)
    return be, xa, idx, p


def _check_indices(be: Any, idx: Any, p: Unpool2dParams) -> None:
    if idx.size:
        lo, hi = be.index_range(idx)
        check_unpool_index_range(lo, hi, p)


def max_unpool2d(x: Any, indices: Any, kernel_size: Any, stride: Any, padding: Any, output_size: Any) -> Any:
    be, xa, idx, p = _unpool_args(x, indices, kernel_size, stride, padding, output_size)
    dtype = compute_dtype(xa.dtype)
    with be.on_inputs(x=xa, indices=idx):
        _check_indices(be, idx, p)
        if p.n == 0:
            return be.zeros(p.y_shape, dtype)
        return be.max_unpool2d_forward(be.ascompute(xa, dtype), be.ascompute(idx, "int64"), (p.oh, p.ow))


def max_unpool2d_backward(
    grad_output: Any, indices: Any, kernel_size: Any, stride: Any, padding: Any, output_size: Any
) -> Any:
    """grad_x (the shape of indices): grad_output read at each index."""
    be = backend(backend_name(grad_output=grad_output, indices=indices))
    gya, idx = be.asarray(grad_output, "grad_output"), be.asarray(indices, "indices")
    p = max_unpool2d_params(idx.shape, idx.dtype, idx.shape, kernel_size, stride, padding, output_size)
    check_grad_output(gya.shape, p.y_shape)
    dtype = compute_dtype(gya.dtype)
    with be.on_inputs(grad_output=gya, indices=idx):
        _check_indices(be, idx, p)
        if p.n == 0:
            return be.zeros(p.x_shape, dtype)
        return be.max_unpool2d_backward(be.ascompute(gya, dtype), be.ascompute(idx, "int64"))


# --------------------------------------------------------------------------- conv2d with a padding mode


def _padded_conv(
    x: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: Any, padding_mode: str
) -> tuple[Any, dict[str, Any], Conv2dParams, tuple[int, int, int, int], Any]:
    """(backend, the arrays x, weight, bias as backend arrays, conv2d's params, the
    explicit pads, the dtype) of conv2d with a non-zeros padding mode."""
    be = backend(backend_name(x=x, weight=weight, bias=bias))
    xa, wa = be.asarray(x, "x"), be.asarray(weight, "weight")
    ba = None if bias is None else be.asarray(bias, "bias")
    p = conv2d_params(xa.shape, wa.shape, None if ba is None else ba.shape, stride, padding, dilation, groups)
    pads = explicit_pads(p, padding_mode)
    dtype = compute_dtype(xa.dtype, wa.dtype, None if ba is None else ba.dtype)
    return be, {"x": xa, "weight": wa, "bias": ba}, p, pads, dtype


def conv2d_padded(
    x: Any,
    weight: Any,
    bias: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    padding_mode: str,
    algorithm: str,
) -> Any:
    """conv2d after an explicit pad in ``padding_mode`` ("reflect", "replicate", "circular")."""
    check_algorithm(algorithm)
    be, arrays, p, pads, dtype = _padded_conv(x, weight, bias, stride, padding, dilation, groups, padding_mode)
    with be.on_inputs(**arrays):
        if p.n == 0:
            return be.zeros(p.y_shape, dtype)
        xp = be.pad_input(be.ascompute(arrays["x"], dtype), pads, padding_mode)
        op = Conv2dOp(stride, 0, dilation, groups, algorithm=algorithm)
        return op.forward(xp, arrays["weight"], arrays["bias"], keep_for_backward=False)


def conv2d_padded_backward(
    grad_output: Any,
    x: Any,
    weight: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    padding_mode: str,
    algorithm: str,
    need_input_grad: Any,
) -> tuple[Any, Any, Any]:
    """conv2d_backward on the padded input, grad_x folded back (padded cells to their sources)."""
    check_algorithm(algorithm)
    nig = check_bool(need_input_grad, "need_input_grad")
    backend_name(grad_output=grad_output, x=x, weight=weight)  # host and device arrays mixed: the usual error
    be, arrays, p, pads, dtype = _padded_conv(x, weight, None, stride, padding, dilation, groups, padding_mode)
    gy = be.asarray(grad_output, "grad_output")
    with be.on_inputs(grad_output=gy, x=arrays["x"], weight=arrays["weight"]):
        if p.n == 0:
            check_grad_output(gy.shape, p.y_shape)
            gx0 = be.zeros(p.x_shape, dtype) if nig else None
            return gx0, be.zeros(p.weight_shape, dtype), be.zeros((p.k,), dtype)
        xp = be.pad_input(be.ascompute(arrays["x"], dtype), pads, padding_mode)
        op = Conv2dOp(stride, 0, dilation, groups, algorithm=algorithm, need_input_grad=nig)
        gxp, gw, gb = op.backward_from(gy, xp, arrays["weight"])
        return (None if gxp is None else be.fold_input(gxp, pads, padding_mode)), gw, gb
