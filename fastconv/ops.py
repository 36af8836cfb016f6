"""Op objects: one convolution or pooling that owns its state between forward and backward.

Modelled on chainer's FunctionNode: an op validates its arguments
(``_params``), picks the backend from the array types (``_dispatch``), gets a
plan (``_plan``, convolution) and runs it; what the forward prepared and the
backward can use again stays inside the op -- the CPU direct kernels' padded
copy of x (reused only for the very same x object and settings), the pooling
argmax indices (in range by construction, so the backward needs no range
check).  The functional API (``fastconv.conv2d`` & co.) runs a throwaway op
per call; ``fastconv.nn`` layers keep one op each.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _benchmark_mode
from ._dispatch import backend, backend_name
from ._params import (
    Conv2dParams,
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
from ._plan import ConvPlan, build_plan, check_layout

__all__ = ["Conv2dOp", "MaxPool2dOp", "plan_conv2d"]

Grads = tuple[NDArray[Any] | None, NDArray[Any], NDArray[Any]]


def _threads(backend_name: str) -> int:
    """Threads a CPU plan is made for (Numba's current setting); 0 on CUDA."""
    if backend_name != "cpu":
        return 0
    import numba

    return numba.get_num_threads()


def plan_conv2d(
    x_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    *,
    dtype: DTypeLike = "float32",
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    algorithm: str = "auto",
    need_input_grad: bool = True,
    backend: str = "cpu",
    threads: int | None = None,
    layout: str | None = None,
) -> ConvPlan:
    """The plan ``conv2d``/``conv2d_backward`` run for these shapes and options.

    ``dtype``: the inputs' dtype (the plan is for the compute dtype: float32 or
    float64).  ``backend``: "cpu" or "cuda".  ``threads``: the CPU thread count
    to plan for (default: Numba's current one, which is what a call uses).
    ``layout`` (CPU, with an explicit algorithm): "standard" or "batch-inner"
    for direct, "column" for im2col, instead of the layout rule -- for
    comparing layouts; run such a plan with ``Conv2dOp.from_plan``.
    The plan says which algorithm and layout run each pass, with which tiles,
    how much workspace they take and why; ``print(plan)`` reads like
    "direct · batch-inner layout · 8×3 register tile · workspace 1.2 MiB · because ...".
    """
    check_algorithm(algorithm)
    need_input_grad = check_bool(need_input_grad, "need_input_grad")
    if backend not in ("cpu", "cuda"):
        raise ValueError(f'backend must be "cpu" or "cuda", got {backend!r}')
    p = conv2d_params(x_shape, weight_shape, None, stride, padding, dilation, groups)
    check_layout(layout, algorithm, p)
    dt = compute_dtype(np.dtype(dtype))
    if threads is None:
        threads = _threads(backend)
    elif backend == "cpu" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if layout is None:
        return _auto_plan(p, dt, backend, threads, need_input_grad, algorithm)
    return build_plan(p, dt, backend, threads, need_input_grad, algorithm, layout)


def _auto_plan(
    p: Conv2dParams, dtype: np.dtype, name: str, threads: int, need_input_grad: bool, algorithm: str
) -> ConvPlan:
    """build_plan, or with ``fastconv.set_benchmark(True)`` the measured plan of a CPU "auto"
    (timed with the current thread count, so only for a plan made for it)."""
    if algorithm == "auto" and name == "cpu" and _benchmark_mode.benchmark_enabled() and threads == _threads(name):
        return _benchmark_mode.measured_plan(p, dtype, threads, need_input_grad)
    return build_plan(p, dtype, name, threads, need_input_grad, algorithm)


class Conv2dOp:
    """A 2-D convolution (``fastconv.conv2d`` semantics) that keeps what its
    forward prepared for its backward.

    ``forward(x, weight, bias)`` returns y and retains x and weight (and, on the
    CPU, the padded copy of x when the backward can reuse it);
    ``backward(grad_output)`` returns ``(grad_x, grad_weight, grad_bias)`` for
    them.  ``backward_from(grad_output, x, weight)`` is the backward for
    explicit inputs (``fastconv.conv2d_backward``); it reuses the forward's
    copy only for the very x object the forward had (and the same settings),
    which must not have changed in between.  ``plan``: the plan of the last
    call (``fastconv.plan_conv2d`` builds the same one).  ``from_plan(plan)``
    makes an op that runs exactly a given plan (e.g. one changed with
    ``dataclasses.replace``), for inputs of its shapes and dtype.
    """

    def __init__(
        self,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        *,
        algorithm: str = "auto",
        need_input_grad: bool = True,
    ):
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.algorithm = check_algorithm(algorithm)
        self.need_input_grad = check_bool(need_input_grad, "need_input_grad")
        self.plan: ConvPlan | None = None
        self._fixed: ConvPlan | None = None
        self._inputs: tuple[Any, Any] | None = None  # the forward's x and weight (backend arrays)
        self._x_compute: Any = None  # the forward's x as computed on (what a kept copy was made from)
        self._kept: Any = None  # the CPU forward's prepared x, reusable by the backward
        self._kept_params: Conv2dParams | None = None

    @classmethod
    def from_plan(cls, plan: ConvPlan) -> Conv2dOp:
        """An op that runs exactly ``plan`` (inputs must match its shapes, dtype and backend)."""
        p = plan.params
        padding = (p.ph, p.pw) if (p.ph, p.pw) == (p.ph_end, p.pw_end) else "same"
        op = cls(
            (p.sh, p.sw),
            padding,
            (p.dh, p.dw),
            p.groups,
            algorithm=plan.algorithm,
            need_input_grad=plan.need_input_grad,
        )
        op._fixed = plan
        return op

    def _params(
        self, x_shape: tuple[int, ...], weight_shape: tuple[int, ...], bias_shape: tuple[int, ...] | None
    ) -> Conv2dParams:
        return conv2d_params(x_shape, weight_shape, bias_shape, self.stride, self.padding, self.dilation, self.groups)

    def _plan_for(self, p: Conv2dParams, dtype: np.dtype, name: str, need_input_grad: bool) -> ConvPlan:
        if self._fixed is not None:
            f = self._fixed
            if (p, dtype.name, name, need_input_grad) != (f.params, f.dtype, f.backend, f.need_input_grad):
                raise ValueError(
                    f"this Conv2dOp runs a fixed plan for x {f.params.x_shape}, weight "
                    f"{f.params.weight_shape}, {f.dtype} on {f.backend}, need_input_grad="
                    f"{f.need_input_grad}; got x {p.x_shape}, weight {p.weight_shape}, {dtype.name} "
                    f"on {name}, need_input_grad={need_input_grad}"
                )
            self.plan = f
            return f
        threads = _threads(name)
        last = self.plan
        if last is not None and (last.params, last.dtype, last.backend, last.need_input_grad, last.threads) == (
            p,
            dtype.name,
            name,
            need_input_grad,
            threads,
        ):
            return last
        self.plan = plan = _auto_plan(p, dtype, name, threads, need_input_grad, self.algorithm)
        return plan

    def _release(self) -> None:
        self._inputs = self._x_compute = self._kept = self._kept_params = None

    def forward(
        self, x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *, keep_for_backward: bool = True
    ) -> NDArray[Any]:
        """y (N, K, OH, OW) = conv2d(x, weight, bias).  ``keep_for_backward=False``
        (inference) retains nothing, and ``backward`` then needs a new forward."""
        self._release()
        name = backend_name(x=x, weight=weight, bias=bias)
        be = backend(name)
        xa, wa = be.asarray(x, "x"), be.asarray(weight, "weight")
        ba = None if bias is None else be.asarray(bias, "bias")
        p = self._params(xa.shape, wa.shape, None if ba is None else ba.shape)
        dtype = compute_dtype(xa.dtype, wa.dtype, None if ba is None else ba.dtype)
        if keep_for_backward:
            self._inputs = (xa, wa)
        if p.n == 0:
            return be.zeros(p.y_shape, dtype)
        xc, wc = be.ascompute(xa, dtype), be.ascompute(wa, dtype)
        bc = None if ba is None else be.ascompute(ba, dtype)
        plan = self._plan_for(p, dtype, name, self.need_input_grad)
        if name != "cpu":
            return be.conv2d_forward(xc, wc, bc, p, plan.algorithm)
        y, kept = be.conv2d_forward(xc, wc, bc, plan)
        if keep_for_backward and kept is not None:
            self._x_compute, self._kept, self._kept_params = xc, kept, p
        return y

    def backward(self, grad_output: ArrayLike, *, need_input_grad: bool | None = None) -> Grads:
        """(grad_x, grad_weight, grad_bias) for the last forward's x and weight;
        grad_x is None when ``need_input_grad`` (default: the op's) is False."""
        if self._inputs is None:
            raise RuntimeError("Conv2dOp.backward needs a forward(..., keep_for_backward=True) first")
        grads = self.backward_from(grad_output, *self._inputs, need_input_grad=need_input_grad)
        self._kept = None  # used once; the retained inputs stay for another backward
        return grads

    def backward_from(
        self, grad_output: ArrayLike, x: ArrayLike, weight: ArrayLike, *, need_input_grad: bool | None = None
    ) -> Grads:
        """(grad_x, grad_weight, grad_bias) of conv2d for ``grad_output``
        (N, K, OH, OW) and explicit inputs x, weight (``fastconv.conv2d_backward``)."""
        nig = check_bool(self.need_input_grad if need_input_grad is None else need_input_grad, "need_input_grad")
        name = backend_name(grad_output=grad_output, x=x, weight=weight)
        be = backend(name)
        gy = be.asarray(grad_output, "grad_output")
        xa, wa = be.asarray(x, "x"), be.asarray(weight, "weight")
        p = self._params(xa.shape, wa.shape, None)
        check_grad_output(gy.shape, p.y_shape)
        dtype = compute_dtype(gy.dtype, xa.dtype, wa.dtype)
        if p.n == 0:
            gx = be.zeros(p.x_shape, dtype) if nig else None
            return gx, be.zeros(p.weight_shape, dtype), be.zeros((p.k,), dtype)
        gy, xc, wc = be.ascompute(gy, dtype), be.ascompute(xa, dtype), be.ascompute(wa, dtype)
        plan = self._plan_for(p, dtype, name, nig)
        if name != "cpu":
            return be.conv2d_backward(gy, xc, wc, p, plan.backward_algorithm, nig)
        # the kept copy only for the very x object and the same geometry
        kept = self._kept if self._kept is not None and xc is self._x_compute and p == self._kept_params else None
        return be.conv2d_backward(gy, xc, wc, plan, kept)


class MaxPool2dOp:
    """2-D max pooling (``fastconv.max_pool2d`` semantics) that keeps its argmax
    indices for its backward.

    ``forward(x)`` returns y and keeps the int64 ``indices``; ``backward(
    grad_output)`` scatters grad_output to them.  Indices this op produced are
    in range by construction, so unlike ``fastconv.max_pool2d_backward`` the
    backward skips the range-check pass.  ``forward(x, need_backward=False)``
    (inference) computes no indices.
    """

    def __init__(
        self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False
    ):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode
        self.indices: Any = None
        self._x_shape: tuple[int, int, int, int] | None = None

    def forward(self, x: ArrayLike, *, need_backward: bool = True) -> NDArray[Any]:
        """y (N, C, OH, OW); ``indices`` kept when ``need_backward``."""
        self.indices = self._x_shape = None
        name = backend_name(x=x)
        be = backend(name)
        xa = be.asarray(x, "x")
        p = pool2d_params(xa.shape, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        need_backward = check_bool(need_backward, "need_backward")
        dtype = compute_dtype(xa.dtype)
        if p.n == 0:
            y = be.zeros(p.y_shape, dtype)
            idx = be.zeros(p.y_shape, "int64")
        elif need_backward:
            y, idx = be.max_pool2d_forward(be.ascompute(xa, dtype), p, True)
        else:
            return be.max_pool2d_forward(be.ascompute(xa, dtype), p, False)
        if need_backward:
            self.indices, self._x_shape = idx, (p.n, p.c, p.h, p.w)
        return y

    def backward(self, grad_output: ArrayLike) -> NDArray[Any]:
        """grad_x of the last forward's input shape."""
        if self.indices is None or self._x_shape is None:
            raise RuntimeError("MaxPool2dOp.backward needs a forward(x, need_backward=True) first")
        be, gy, indices, shape, dtype = pool_backward_args(grad_output, self.indices, self._x_shape)
        return pool_scatter(be, gy, indices, shape, dtype)


def pool_backward_args(
    grad_output: ArrayLike, indices: ArrayLike, input_shape: Any
) -> tuple[Any, Any, Any, tuple[int, int, int, int], np.dtype]:
    """Validated (backend, grad_output, indices, input shape, compute dtype) of a max-pool backward."""
    name = backend_name(grad_output=grad_output, indices=indices)
    be = backend(name)
    gy = be.asarray(grad_output, "grad_output")
    idx = be.asarray(indices, "indices")
    shape = pool_input_shape(input_shape)
    check_pool_indices(idx.dtype, idx.shape, gy.shape, shape)
    return be, gy, idx, shape, compute_dtype(gy.dtype)


def check_indices_in_range(be: Any, indices: Any, shape: tuple[int, int, int, int]) -> None:
    """Every index inside its H*W plane (one pass; for indices from outside)."""
    if indices.size:
        lo, hi = be.index_range(indices)
        check_pool_index_range(lo, hi, shape)


def pool_scatter(be: Any, gy: Any, indices: Any, shape: tuple[int, int, int, int], dtype: np.dtype) -> Any:
    """grad_x of ``shape``: gy scattered to valid ``indices``."""
    if gy.size == 0:
        return be.zeros(shape, dtype)
    p = pool_scatter_params(shape, gy.shape)
    return be.max_pool2d_backward(be.ascompute(gy, dtype), be.ascompute(indices, "int64"), p)
