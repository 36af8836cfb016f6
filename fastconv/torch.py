"""PyTorch bridge: fastconv's convolution and max pooling inside torch models.

``import fastconv.torch`` needs PyTorch (``pip install 'fastconv[torch]'``).  It gives

- ``conv2d`` / ``max_pool2d``: ``torch.nn.functional`` signatures, autograd
  Functions whose forward and backward run fastconv's kernels (public API:
  ``fastconv.conv2d``, ``conv2d_backward``, ``max_pool2d``, ``max_pool2d_backward``);
- ``Conv2d`` / ``MaxPool2d``: subclasses of ``torch.nn.Conv2d`` / ``MaxPool2d``
  whose ``forward`` calls the above -- constructor, initialisation, parameter
  names and ``state_dict`` keys are torch's own, so ``load_state_dict`` from a
  plain torch model works unchanged;
- ``convert(model)``: swaps every supported torch layer for its fastconv twin in
  place (same parameter objects, so weights, device, dtype, hooks and an
  optimizer built before stay valid) and reports what it replaced and what it left.

Tensors reach the kernels without copies: CPU tensors as NumPy views
(``tensor.detach().numpy()``, strided views included; fastconv copies only
when its kernel needs a contiguous layout) and results come back through
``torch.from_numpy``; CUDA tensors go to ``fastconv.cuda`` as they are (it
reads ``__cuda_array_interface__`` and runs on torch's current stream) and
results come back through ``torch.as_tensor``.  float32 and float64 only.

Backward: grad_input is computed only when the input requires grad
(``need_input_grad=False`` otherwise); grad_bias alone, when neither input
nor weight needs a gradient, is a sum in torch; grad_weight cannot be skipped
by fastconv's ``conv2d_backward`` when grad_input is needed.  The Functions are
differentiable once (double backward raises).
"""

from __future__ import annotations

try:
    import torch
except ImportError:  # one line, no chained traceback: the fix is an install
    raise ImportError(
        "fastconv.torch needs PyTorch, which is not installed: pip install 'fastconv[torch]' (or pip install torch)"
    ) from None

from dataclasses import dataclass, field
from typing import Any

from torch.autograd.function import once_differentiable

import fastconv

__all__ = ["Conv2d", "ConversionReport", "MaxPool2d", "conv2d", "convert", "max_pool2d"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- tensors <-> arrays


class _TensorIO:
    """How tensors of one device become arrays fastconv takes, and its results tensors."""

    @staticmethod
    def to_array(t: torch.Tensor) -> Any:
        raise NotImplementedError

    @staticmethod
    def to_tensor(a: Any, device: torch.device) -> torch.Tensor:
        raise NotImplementedError


class _HostIO(_TensorIO):
    """CPU tensors <-> NumPy arrays, zero-copy both ways."""

    @staticmethod
    def to_array(t: torch.Tensor) -> Any:
        return t.detach().numpy()

    @staticmethod
    def to_tensor(a: Any, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(a)


class _CudaIO(_TensorIO):
    """CUDA tensors -> fastconv.cuda as they are (``__cuda_array_interface__``,
    which torch refuses for tensors that require grad: hence ``detach``);
    numba device arrays -> tensors through the same interface, zero-copy (the
    tensor keeps the numba allocation alive)."""

    @staticmethod
    def to_array(t: torch.Tensor) -> Any:
        return t.detach()

    @staticmethod
    def to_tensor(a: Any, device: torch.device) -> torch.Tensor:
        if isinstance(a, torch.Tensor):
            return a
        return torch.as_tensor(a, device=device)


def _io(device: torch.device) -> type[_TensorIO]:
    """The tensor<->array adapter for a device (the CUDA tests swap it for a simulator one)."""
    if device.type == "cpu":
        return _HostIO
    if device.type == "cuda":
        return _CudaIO
    raise TypeError(f"fastconv.torch runs on CPU and CUDA tensors, got a tensor on device {device}")


def _check_tensors(op: str, **tensors: torch.Tensor | None) -> None:
    """Same device, same dtype, float32 or float64 -- checked before any kernel runs."""
    given = {k: t for k, t in tensors.items() if t is not None}
    first_name, first = next(iter(given.items()))
    for name, t in given.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fastconv.torch.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"fastconv.torch.{op}: {name} has dtype {t.dtype}; fastconv computes in "
                f"torch.float32 and torch.float64 only (cast the model with .float() or .double())"
            )
        if t.dtype != first.dtype:
            raise TypeError(
                f"fastconv.torch.{op}: {name} has dtype {t.dtype} but {first_name} has "
                f"{first.dtype}; they must be equal (as in torch)"
            )
        if t.device != first.device:
            raise TypeError(
                f"fastconv.torch.{op}: {name} is on {t.device} but {first_name} is on "
                f"{first.device}; they must be on the same device"
            )
    _io(first.device)


# --------------------------------------------------------------------------- convolution


class Conv2dFunction(torch.autograd.Function):
    """y = conv2d(x, weight, bias) on fastconv's kernels; backward through
    ``fastconv.conv2d_backward`` with ``need_input_grad`` from ``ctx``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
    ) -> torch.Tensor:
        io = _io(x.device)
        y = fastconv.conv2d(
            io.to_array(x),
            io.to_array(weight),
            None if bias is None else io.to_array(bias),
            stride,
            padding,
            dilation,
            groups,
        )
        ctx.save_for_backward(x, weight)
        ctx.options = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return io.to_tensor(y, x.device)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x or need_w:
            io = _io(x.device)
            gx_a, gw_a, gb_a = fastconv.conv2d_backward(
                io.to_array(grad_output),
                io.to_array(x),
                io.to_array(weight),
                *ctx.options,
                need_input_grad=bool(need_x),
            )
            gx = io.to_tensor(gx_a, x.device) if need_x else None
            gw = io.to_tensor(gw_a, x.device) if need_w else None
            gb = io.to_tensor(gb_a, x.device) if need_b and ctx.has_bias else None
        elif need_b and ctx.has_bias:  # neither x nor weight: grad_bias is a plain sum, no kernel
            gb = grad_output.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None, None, None


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``torch.nn.functional.conv2d`` on fastconv's kernels (differentiable once).

    input (N, C, H, W) or unbatched (C, H, W); ``padding="same"`` is accepted
    for any stride (output ceil(H/stride), fastconv's rule; torch allows it at
    stride 1 only, where both agree).
    """
    _check_tensors("conv2d", input=input, weight=weight, bias=bias)
    if input.dim() == 3:
        return Conv2dFunction.apply(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups)[0]
    return Conv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups)


# --------------------------------------------------------------------------- max pooling


class MaxPool2dFunction(torch.autograd.Function):
    """(y, indices) = max_pool2d(x) on fastconv's kernels; indices (int64, flat
    offsets into each H*W plane) are a non-differentiable output, computed only
    when asked for or needed by the backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        kernel_size: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        ceil_mode: bool,
        need_indices: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        io = _io(x.device)
        ctx.set_materialize_grads(False)  # else autograd builds a zero grad_indices as large as y
        if not need_indices:
            return io.to_tensor(
                fastconv.max_pool2d(io.to_array(x), kernel_size, stride, padding, dilation, ceil_mode), x.device
            ), None
        y, idx_a = fastconv.max_pool2d(
            io.to_array(x), kernel_size, stride, padding, dilation, ceil_mode, return_indices=True
        )
        idx = io.to_tensor(idx_a, x.device)
        ctx.mark_non_differentiable(idx)
        ctx.save_for_backward(idx)  # an output: torch's version counter guards it against in-place edits
        ctx.x_shape = tuple(x.shape)
        return io.to_tensor(y, x.device), idx

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor, grad_indices: Any) -> tuple:
        (idx,) = ctx.saved_tensors
        if grad_output is None:  # y did not reach the loss (grads are not materialised)
            return None, None, None, None, None, None, None
        io = _io(idx.device)
        gx = fastconv.max_pool2d_backward(io.to_array(grad_output), io.to_array(idx), ctx.x_shape)
        return io.to_tensor(gx, idx.device), None, None, None, None, None, None


def max_pool2d(
    input: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Any:
    """``torch.nn.functional.max_pool2d`` on fastconv's kernels: y, or (y, indices)
    with ``return_indices``; input (N, C, H, W) or unbatched (C, H, W)."""
    _check_tensors("max_pool2d", input=input)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    need_grad = torch.is_grad_enabled() and x.requires_grad
    y, idx = MaxPool2dFunction.apply(
        x, kernel_size, stride, padding, dilation, ceil_mode, bool(return_indices) or need_grad
    )
    if unbatched:
        y, idx = y[0], None if idx is None else idx[0]
    return (y, idx) if return_indices else y


# --------------------------------------------------------------------------- modules


def _conv_unsupported(m: torch.nn.Conv2d) -> str | None:
    """Why fastconv cannot run this Conv2d, or None if it can."""
    if m.padding_mode != "zeros":
        return f'padding_mode="{m.padding_mode}" (fastconv pads with zeros only)'
    if isinstance(m.weight, torch.nn.parameter.UninitializedParameter):
        return "weight not initialised yet (lazy module: run one forward first)"
    if m.weight.dtype not in SUPPORTED_DTYPES:
        return f"dtype {m.weight.dtype} (fastconv computes in float32 and float64)"
    if m.weight.device.type not in ("cpu", "cuda"):
        return f"device {m.weight.device} (fastconv runs on CPU and CUDA)"
    if m.weight.device.type == "cuda":
        import fastconv.cuda

        reason = fastconv.cuda._unavailable_reason()
        if reason is not None:
            return f"on CUDA but fastconv's CUDA backend cannot run: {reason}"
    return None


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` whose forward runs fastconv's kernels.  Same
    constructor, initialisation, parameters and state_dict keys; only
    ``padding_mode="zeros"`` (anything else is a ``ValueError`` naming it)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if padding_mode != "zeros":  # before torch builds anything: the error names the option
            raise ValueError(
                f'fastconv.torch.Conv2d: padding_mode="{padding_mode}" is not supported; '
                f'fastconv pads with zeros only (padding_mode="zeros")'
            )
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, "zeros", device, dtype
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":  # changed after construction
            raise ValueError(f'fastconv.torch.Conv2d: padding_mode="{self.padding_mode}" is not supported')
        return conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MaxPool2d(torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` whose forward runs fastconv's kernels (every option)."""

    def forward(self, input: torch.Tensor) -> Any:
        return max_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices
        )


# --------------------------------------------------------------------------- convert


@dataclass
class ConversionReport:
    """What ``convert`` did: ``replaced`` lists "name (Type)" of swapped layers;
    ``left`` lists (name, reason) for conv and pooling layers it kept as they were."""

    replaced: list[str] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fastconv.torch.convert: replaced {len(self.replaced)}, left {len(self.left)}"]
        lines += [f"  replaced {name}" for name in self.replaced]
        lines += [f"  left     {name}: {why}" for name, why in self.left]
        return "\n".join(lines)


_CONV_LIKE = (
    torch.nn.modules.conv._ConvNd,
    torch.nn.modules.pooling._MaxPoolNd,
    torch.nn.modules.pooling._AvgPoolNd,
    torch.nn.modules.pooling._AdaptiveMaxPoolNd,
    torch.nn.modules.pooling._AdaptiveAvgPoolNd,
)


def _swap_target(m: torch.nn.Module) -> tuple[type | None, str | None]:
    """(fastconv class to become, None) or (None, why not); (None, None) for layers not worth reporting."""
    if isinstance(m, (Conv2d, MaxPool2d)):
        return None, "already a fastconv.torch layer"
    if type(m) is torch.nn.Conv2d:
        reason = _conv_unsupported(m)
        return (Conv2d, None) if reason is None else (None, reason)
    if type(m) is torch.nn.MaxPool2d:
        return MaxPool2d, None
    if isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
        return None, f"{type(m).__name__} subclasses torch's layer (its forward may differ): left as is"
    if isinstance(m, _CONV_LIKE):
        return None, f"fastconv has no {type(m).__name__}"
    return None, None


def convert(module: torch.nn.Module) -> ConversionReport:
    """Make every ``torch.nn.Conv2d`` and ``torch.nn.MaxPool2d`` of ``module``
    (itself included) run on fastconv, in place, and report what was done.

    A layer is converted by changing its class to ``fastconv.torch.Conv2d`` /
    ``MaxPool2d`` (a subclass adding nothing but ``forward``): its parameters,
    buffers, hooks, device and dtype are untouched, so an optimizer created
    earlier keeps training the same tensors.  Layers fastconv cannot run
    (``padding_mode`` other than "zeros", float16/bfloat16, other devices,
    subclasses, other conv/pool types) stay torch's, with the reason in the report.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"fastconv.torch.convert: module must be a torch.nn.Module, got {type(module).__name__}")
    report = ConversionReport()
    for name, m in module.named_modules():
        label = f"{name or '<root>'} ({type(m).__name__})"
        target, reason = _swap_target(m)
        if target is not None:
            m.__class__ = target
            report.replaced.append(label)
        elif reason is not None:
            report.left.append((label, reason))
    return report
