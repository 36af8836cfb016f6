"""Layers: one small class each, ``forward(x, training)`` / ``backward(grad)``.

Layout: layers work on NCHW batches (what the fastconv kernels take); the
model converts Keras' channels-last input once per batch.  Shapes reported
to users (``output_shape``, ``summary()``) are Keras' channels-last ones.

Parameters and their gradients sit side by side in two dicts with the same
keys: ``layer.params["kernel"]`` / ``layer.grads["kernel"]`` (and ``"bias"``).
Kernels are stored in the layout of the op that uses them: Conv2D
(filters, channels, kh, kw) as fastconv/PyTorch, Dense (inputs, units) as
Keras.  ``get_weights()``/``set_weights()`` use Keras' layouts
(Conv2D kernel (kh, kw, channels, filters)), so weights are portable.

``Flatten`` flattens in Keras' channels-last order (h, w, c), so a Dense
layer after it has exactly Keras' weights; it costs one small transpose of
the (usually tiny) last feature map per batch.

Activations ("relu", "sigmoid", "tanh", "softmax", None) are applied in place
on the layer's fresh output; their backward uses that output.  Softmax acts
on the channel axis.  Convolution and pooling go through ``fastconv.conv2d``,
``fastconv.conv2d_backward``, ``fastconv.max_pool2d`` and
``fastconv.max_pool2d_backward``, on the CPU or the GPU by array type.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

import fastconv

from .._params import avg_pool2d_params, check_padding_mode, conv2d_params, explicit_pads, pair, pool2d_params
from . import _ops_cpu, initializers

__all__ = [
    "Layer",
    "Conv2D",
    "MaxPooling2D",
    "MaxPool2D",
    "Flatten",
    "Dense",
    "Dropout",
    "ReLU",
    "AveragePooling2D",
    "AvgPool2D",
    "GlobalAveragePooling2D",
    "ACTIVATIONS",
    "LAYER_CLASSES",
]

ACTIVATIONS = (None, "relu", "sigmoid", "tanh", "softmax")


def _activation(value: Any) -> str | None:
    if value is None or value == "linear":
        return None
    if isinstance(value, str) and value in ACTIVATIONS:
        return value
    raise ValueError(f"unknown activation {value!r}; expected one of {ACTIVATIONS}")


def _padding(value: Any, layer: str) -> str:
    if isinstance(value, str) and value.lower() in ("valid", "same"):
        return value.lower()
    raise ValueError(f'{layer} padding must be "valid" or "same", got {value!r}')


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _snake(name: str) -> str:
    """Keras' default layer names: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d, ReLU -> re_lu."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def keras_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Internal per-sample shape (C, H, W) or (F,) -> Keras' channels-last (H, W, C) or (F,)."""
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else tuple(shape)


def internal_shape(shape: Any, what: str = "input_shape") -> tuple[int, ...]:
    """Keras per-sample shape (H, W, C), (H, W) or (F,) -> internal (C, H, W) or (F,)."""
    try:
        shape = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a tuple of ints such as (28, 28, 1), got {shape!r}") from None
    if len(shape) not in (1, 2, 3) or min(shape) < 1:
        raise ValueError(
            f"{what} must be (height, width, channels), (height, width) or (features,) "
            f"with positive sizes (no batch dimension), got {shape}"
        )
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    if len(shape) == 3:
        return (shape[2], shape[0], shape[1])
    return shape


class Layer:
    """Base class.  ``build`` fixes shapes and creates parameters; ``forward``
    keeps what ``backward`` needs; ``backward`` fills ``grads`` and returns the
    input gradient (None when ``need_input_grad`` is False: the first layer)."""

    def __init__(self, *, input_shape: Any = None, name: str | None = None):
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"layer name must be a non-empty str, got {name!r}")
        self.name = name
        self.input_shape_arg = None if input_shape is None else internal_shape(input_shape)
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.built = False
        # per sample, internal layout; None until built (then tuple[int, ...])
        self.input_shape: Any = None
        self.output_shape: Any = None
        self.need_input_grad = True
        self.dtype = np.dtype(np.float32)
        self._ops: Any = _ops_cpu

    # -- interface
    def build(self, input_shape: tuple[int, ...], rng: np.random.Generator, dtype: Any = np.float32) -> tuple[int, ...]:
        self.dtype = np.dtype(dtype)
        self.input_shape = tuple(input_shape)
        self.output_shape = tuple(self._build(self.input_shape, rng))
        self.built = True
        return self.output_shape

    def _build(self, input_shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
        return input_shape

    def forward(self, x: Any, training: bool = False) -> Any:
        raise NotImplementedError

    def backward(self, grad: Any) -> Any:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"name": self.name}
        if self.input_shape_arg is not None:
            cfg["input_shape"] = list(keras_shape(self.input_shape_arg))
        return cfg

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Layer":
        return cls(**cfg)

    # -- helpers
    @property
    def type_name(self) -> str:
        return type(self).__name__

    @property
    def default_name(self) -> str:
        return _snake(self.type_name)

    def count_params(self) -> int:
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def get_weights(self) -> list[np.ndarray]:
        return [np.array(self._ops.to_host(p)) for p in self.params.values()]

    def set_weights(self, weights: list[Any]) -> None:
        keys = list(self.params)
        if len(weights) != len(keys):
            raise ValueError(f"layer {self.name!r} expects {len(keys)} weight arrays ({keys}), got {len(weights)}")
        for k, w in zip(keys, weights):
            w = np.asarray(w)
            if w.shape != tuple(self.params[k].shape):
                raise ValueError(
                    f"layer {self.name!r} {k}: expected shape {tuple(self.params[k].shape)}, got {w.shape}"
                )
            self.params[k] = self._ops.to_device(w, self.dtype)

    def _set_ops(self, ops: Any) -> None:
        """Move parameters to the ops module's device (model.to)."""
        host = {k: np.array(self._ops.to_host(v)) for k, v in self.params.items()}
        self._ops = ops
        self.params = {k: ops.to_device(v, self.dtype) for k, v in host.items()}
        self.grads = {}

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError(
                f"layer {self.name or self.type_name!r} is not built: call build(input_shape, rng) "
                "or use it inside a Sequential model"
            )

    def __repr__(self) -> str:
        return f"<{self.type_name} {self.name!r}>"


class _Weighted(Layer):
    """Shared parts of Conv2D and Dense: kernel + bias, fused activation."""

    def __init__(self, activation: Any, use_bias: bool, kernel_initializer: Any, **kw: Any):
        super().__init__(**kw)
        self.activation = _activation(activation)
        self.use_bias = bool(use_bias)
        initializers.get(kernel_initializer)
        self.kernel_initializer = kernel_initializer
        self._x: Any = None
        self._y: Any = None

    def _init(self, shape: tuple[int, ...], fan_in: int, fan_out: int, n_out: int, rng: np.random.Generator) -> None:
        """Kernel from the initializer, bias zeros (Keras' defaults)."""
        kernel = initializers.get(self.kernel_initializer)(shape, fan_in, fan_out, rng, self.dtype)
        self.params = {"kernel": self._ops.to_device(kernel, self.dtype)}
        if self.use_bias:
            self.params["bias"] = self._ops.to_device(np.zeros(n_out, dtype=self.dtype), self.dtype)
        self.grads = {}

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "activation": self.activation,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
        }

    def forward(self, x: Any, training: bool = False) -> Any:
        """act(linear(x)); the output is kept for the activation's backward."""
        self._y = self._ops.activation_forward(self.activation, self.linear_forward(x, training))
        return self._y

    def backward(self, grad: Any) -> Any:
        if self._y is None:
            raise RuntimeError(f"layer {self.name!r}: backward called before forward")
        return self.linear_backward(self._ops.activation_backward(self.activation, grad, self._y))

    # The pre-activation halves, for the fused steps (nn/steps.py) that apply the
    # activation elsewhere: softmax inside the loss, ReLU after a max pooling.
    def linear_forward(self, x: Any, training: bool = False) -> Any:
        """The layer's output before its activation (keeps what ``linear_backward`` needs)."""
        raise NotImplementedError

    def linear_backward(self, grad: Any) -> Any:
        """Gradients w.r.t. the pre-activation output -> ``grads`` filled, input gradient returned."""
        raise NotImplementedError

    def _require_forward(self) -> None:
        if self._x is None:
            raise RuntimeError(f"layer {self.name!r}: backward called before forward")


class Conv2D(_Weighted):
    """2-D convolution (cross-correlation), Keras' signature.

    Input (N, C, H, W), output (N, filters, OH, OW); padding "valid" or "same"
    (Keras' rule: output ceil(H/stride), odd extra pad bottom/right).
    ``padding_mode`` (``torch.nn.Conv2d``'s; not a Keras argument): what the
    "same" padding holds, "zeros" (default), "reflect", "replicate" or "circular".
    """

    def __init__(
        self,
        filters: int,
        kernel_size: Any,
        strides: Any = 1,
        padding: str = "valid",
        dilation_rate: Any = 1,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        input_shape: Any = None,
        name: str | None = None,
        padding_mode: str = "zeros",
    ):
        super().__init__(activation, use_bias, kernel_initializer, input_shape=input_shape, name=name)
        self.filters = _positive_int(filters, "Conv2D filters")
        self.kernel_size = pair(kernel_size, "Conv2D kernel_size", 1)
        self.strides = pair(strides, "Conv2D strides", 1)
        self.padding = _padding(padding, "Conv2D")
        self.dilation_rate = pair(dilation_rate, "Conv2D dilation_rate", 1)
        self.padding_mode = check_padding_mode(padding_mode)
        # keeps what its forward prepared (the CPU kernels' padded copy of x) for the backward
        self._op = fastconv.Conv2dOp(self.strides, self.padding, self.dilation_rate)

    def _build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ValueError(
                f"Conv2D {self.name!r} needs image input (height, width, channels), got "
                f"per-sample shape {keras_shape(input_shape)}"
            )
        c, h, w = input_shape
        kh, kw = self.kernel_size
        try:
            p = conv2d_params(
                (1, c, h, w), (self.filters, c, kh, kw), None, self.strides, self.padding, self.dilation_rate, 1
            )
            explicit_pads(p, self.padding_mode)
        except ValueError as exc:
            raise ValueError(f"Conv2D {self.name!r} on input {keras_shape(input_shape)}: {exc}") from None
        self._init((self.filters, c, kh, kw), c * kh * kw, self.filters * kh * kw, self.filters, rng)
        return (self.filters, p.oh, p.ow)

    def linear_forward(self, x, training=False):
        self._require_built()
        if self.padding_mode != "zeros":  # an explicit pad in the functional API
            self._x = x
            z = fastconv.conv2d(
                x,
                self.params["kernel"],
                self.params.get("bias"),
                self.strides,
                self.padding,
                self.dilation_rate,
                padding_mode=self.padding_mode,
            )
            return z
        # training: the op keeps x (this layer's input, never modified in
        # between) and what it prepared from it for the backward
        z = self._op.forward(x, self.params["kernel"], self.params.get("bias"), keep_for_backward=training)
        self._x = x
        return z

    def linear_backward(self, gz):
        self._require_forward()
        if self.padding_mode != "zeros":
            gx, gw, gb = fastconv.conv2d_backward(
                gz,
                self._x,
                self.params["kernel"],
                self.strides,
                self.padding,
                self.dilation_rate,
                need_input_grad=self.need_input_grad,
                padding_mode=self.padding_mode,
            )
        else:
            gx, gw, gb = self._op.backward(gz, need_input_grad=self.need_input_grad)
        self.grads["kernel"] = gw
        if self.use_bias:
            self.grads["bias"] = gb
        return gx

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "dilation_rate": list(self.dilation_rate),
            **({"padding_mode": self.padding_mode} if self.padding_mode != "zeros" else {}),
        }

    def get_weights(self):
        w = super().get_weights()
        w[0] = np.ascontiguousarray(w[0].transpose(2, 3, 1, 0))  # (K, C, R, S) -> Keras (R, S, C, K)
        return w

    def set_weights(self, weights):
        weights = list(weights)
        if weights:
            weights[0] = np.asarray(weights[0]).transpose(3, 2, 0, 1)  # Keras (R, S, C, K) -> (K, C, R, S)
        super().set_weights(weights)


class MaxPooling2D(Layer):
    """Max pooling, Keras' signature.  ``strides`` defaults to ``pool_size``.

    padding="same" is Keras' rule (output ceil(H/stride), the odd extra pad at
    the bottom/right) and exact: padded cells are -inf and never win.  When the
    pad is symmetric and at most half the window, the kernel pads implicitly;
    otherwise the batch is padded with -inf explicitly (one copy) and the
    gradient cropped.
    """

    def __init__(
        self,
        pool_size: Any = 2,
        strides: Any = None,
        padding: str = "valid",
        input_shape: Any = None,
        name: str | None = None,
    ):
        super().__init__(input_shape=input_shape, name=name)
        self.pool_size = pair(pool_size, "MaxPooling2D pool_size", 1)
        self.strides = self.pool_size if strides is None else pair(strides, "MaxPooling2D strides", 1)
        self.padding = _padding(padding, "MaxPooling2D")
        self._pads = (0, 0, 0, 0)
        self._implicit = (0, 0)
        self._op: Any = None  # fastconv.MaxPool2dOp, made by _build: keeps the forward's argmax indices

    def _build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ValueError(
                f"MaxPooling2D {self.name!r} needs image input (height, width, channels), got "
                f"per-sample shape {keras_shape(input_shape)}"
            )
        c, h, w = input_shape
        (kh, kw), (sh, sw) = self.pool_size, self.strides
        if self.padding == "same":
            oh, ow = -(-h // sh), -(-w // sw)
            th, tw = max(0, (oh - 1) * sh + kh - h), max(0, (ow - 1) * sw + kw - w)
            self._pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
            top, bottom, left, right = self._pads
            if top == bottom and left == right and top <= kh // 2 and left <= kw // 2:
                self._implicit, self._pads = (top, left), (0, 0, 0, 0)
            self._op = fastconv.MaxPool2dOp(self.pool_size, self.strides, self._implicit)
            return (c, oh, ow)
        try:
            p = pool2d_params((1, c, h, w), self.pool_size, self.strides, 0)
        except ValueError as exc:
            raise ValueError(f"MaxPooling2D {self.name!r} on input {keras_shape(input_shape)}: {exc}") from None
        self._op = fastconv.MaxPool2dOp(self.pool_size, self.strides, self._implicit)
        return (c, p.oh, p.ow)

    def forward(self, x, training=False):
        self._require_built()
        if any(self._pads):
            top, bottom, left, right = self._pads
            x = self._ops.pad_value(x, top, bottom, left, right, -np.inf)
        y = self._op.forward(x, need_backward=training)  # training: keeps the argmax indices
        return y

    def backward(self, grad):
        if self._op is None or self._op.indices is None:
            raise RuntimeError(f"layer {self.name!r}: backward needs a forward(x, training=True) first")
        # the op's own indices: no range-check pass
        gx = self._op.backward(grad)
        if any(self._pads):
            _, h, w = self.input_shape
            gx = self._ops.crop(gx, self._pads[0], self._pads[2], h, w)
        return gx if self.need_input_grad else None

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding,
        }


MaxPool2D = MaxPooling2D


class Flatten(Layer):
    """(N, C, H, W) -> (N, H*W*C) in Keras' channels-last order; (N, F) passes through."""

    def _build(self, input_shape, rng):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=False):
        self._require_built()
        self._xshape = tuple(x.shape)
        return self._ops.flatten_forward(x) if x.ndim == 4 else x

    def backward(self, grad):
        if len(self._xshape) != 4:
            return grad
        return self._ops.flatten_backward(grad, self._xshape) if self.need_input_grad else None


class Dense(_Weighted):
    """y = act(x @ kernel + bias); x (N, F), kernel (F, units) as in Keras."""

    def __init__(
        self,
        units: int,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        input_shape: Any = None,
        name: str | None = None,
    ):
        super().__init__(activation, use_bias, kernel_initializer, input_shape=input_shape, name=name)
        self.units = _positive_int(units, "Dense units")

    def _build(self, input_shape, rng):
        if len(input_shape) != 1:
            raise ValueError(
                f"Dense {self.name!r} needs a flat input (features,), got per-sample shape "
                f"{keras_shape(input_shape)}: add a Flatten() layer before it"
            )
        self._init((input_shape[0], self.units), input_shape[0], self.units, self.units, rng)
        return (self.units,)

    def linear_forward(self, x, training=False):
        self._require_built()
        self._x = x
        return self._ops.dense_forward(x, self.params["kernel"], self.params.get("bias"))

    def _fused(self, op: str) -> Any:
        """The device's one-launch dense op with the activation inside, when there is one."""
        return None if self.activation == "softmax" else getattr(self._ops, op, None)

    def forward(self, x, training=False):
        fused = self._fused("dense_act_forward")
        if fused is None:
            return super().forward(x, training)
        self._require_built()
        self._x = x
        self._y = fused(x, self.params["kernel"], self.params.get("bias"), self.activation)
        return self._y

    def backward(self, grad):
        fused = self._fused("dense_act_backward")
        if fused is None:
            return super().backward(grad)
        if self._y is None:
            raise RuntimeError(f"layer {self.name!r}: backward called before forward")
        self._require_forward()
        gx, gw, gb = fused(
            grad, self._x, self.params["kernel"], self._y, self.activation, self.need_input_grad, self.use_bias
        )
        self.grads["kernel"] = gw
        if self.use_bias:
            self.grads["bias"] = gb
        return gx

    def linear_backward(self, gz):
        self._require_forward()
        gx, gw, gb = self._ops.dense_backward(gz, self._x, self.params["kernel"], self.need_input_grad, self.use_bias)
        self.grads["kernel"] = gw
        if self.use_bias:
            self.grads["bias"] = gb
        return gx

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class Dropout(Layer):
    """Inverted dropout: in training, zero a fraction ``rate`` and scale the rest by
    1/(1-rate); identity at inference.  The model seeds its generator (fit(seed=))."""

    def __init__(self, rate: float, input_shape: Any = None, name: str | None = None):
        super().__init__(input_shape=input_shape, name=name)
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise TypeError(f"Dropout rate must be a number in [0, 1), got {rate!r}") from None
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate!r}")
        self.rate = rate
        self.rng: np.random.Generator | None = None
        self._mask: Any = None

    def forward(self, x, training=False):
        self._require_built()
        if not training or self.rate == 0:
            self._mask = None
            return x
        if self.rng is None:
            self.rng = np.random.default_rng()
        self._mask = self._ops.dropout_mask(self.rng, tuple(x.shape), self.rate, self.dtype)
        return self._ops.multiply(x, self._mask)

    def backward(self, grad):
        if not self.need_input_grad:
            return None
        return grad if self._mask is None else self._ops.multiply(grad, self._mask)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class ReLU(Layer):
    """max(x, 0) as a layer (same as activation="relu" on the previous layer)."""

    def forward(self, x, training=False):
        self._require_built()
        self._y = self._ops.activation_forward("relu", self._ops.copy(x))
        return self._y

    def backward(self, grad):
        if not self.need_input_grad:
            return None
        return self._ops.activation_backward("relu", self._ops.copy(grad), self._y)


def _same_axis(size: int, k: int, s: int) -> tuple[int, bool, int]:
    """Keras "same" along one axis as torch avg_pool2d arguments: (padding,
    ceil_mode needed, leading outputs to drop).  Keras pads total =
    (ceil(size/s) - 1)*s + k - size <= k - 1, split top = total // 2 and
    bottom = top or top + 1.  The odd extra pad at the end is a ceil_mode
    overhang for stride >= 2; at stride 1 (an even kernel) it is padding
    top + 1 on both sides with the first output dropped."""
    out = -(-size // s)
    total = max(0, (out - 1) * s + k - size)
    top = total // 2
    if total % 2 == 0:
        return top, False, 0
    return (top, True, 0) if s >= 2 else (top + 1, False, 1)


class AveragePooling2D(Layer):
    """Average pooling, Keras' signature and defaults: ``pool_size`` (2, 2),
    ``strides`` = pool_size, ``padding`` "valid" or "same".

    "same" is Keras'/TensorFlow's: output ceil(H/stride), and a window's
    average is over its cells inside the input only (padding never counts),
    which is ``fastconv.avg_pool2d(..., count_include_pad=False)`` with the
    padding and ceil_mode of ``_same_axis``.
    """

    def __init__(
        self,
        pool_size: Any = 2,
        strides: Any = None,
        padding: str = "valid",
        input_shape: Any = None,
        name: str | None = None,
    ):
        super().__init__(input_shape=input_shape, name=name)
        self.pool_size = pair(pool_size, "AveragePooling2D pool_size", 1)
        self.strides = self.pool_size if strides is None else pair(strides, "AveragePooling2D strides", 1)
        self.padding = _padding(padding, "AveragePooling2D")
        self._args: dict[str, Any] = {}
        self._drop = (0, 0)
        self._xshape: tuple[int, ...] | None = None

    def _build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ValueError(
                f"AveragePooling2D {self.name!r} needs image input (height, width, channels), got "
                f"per-sample shape {keras_shape(input_shape)}"
            )
        c, h, w = input_shape
        (kh, kw), (sh, sw) = self.pool_size, self.strides
        pads, ceil, drop = (0, 0), False, (0, 0)
        if self.padding == "same":
            (ph, ch, dh), (pw, cw, dw) = _same_axis(h, kh, sh), _same_axis(w, kw, sw)
            pads, ceil, drop = (ph, pw), ch or cw, (dh, dw)
        self._args = dict(
            kernel_size=self.pool_size, stride=self.strides, padding=pads, ceil_mode=ceil, count_include_pad=False
        )
        self._drop = drop
        try:
            p = avg_pool2d_params((1, c, h, w), **self._args)
        except ValueError as exc:
            raise ValueError(f"AveragePooling2D {self.name!r} on input {keras_shape(input_shape)}: {exc}") from None
        return (c, p.oh - drop[0], p.ow - drop[1])

    def forward(self, x, training=False):
        self._require_built()
        self._xshape = tuple(x.shape)
        y = fastconv.avg_pool2d(x, **self._args)
        if any(self._drop):
            _, oh, ow = self.output_shape
            y = self._ops.crop(y, self._drop[0], self._drop[1], oh, ow)
        return y

    def backward(self, grad):
        if self._xshape is None:
            raise RuntimeError(f"layer {self.name!r}: backward needs a forward first")
        if not self.need_input_grad:
            return None
        if any(self._drop):
            grad = self._ops.pad_value(grad, self._drop[0], 0, self._drop[1], 0, 0.0)
        return fastconv.avg_pool2d_backward(grad, self._xshape, **self._args)

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": self.padding,
        }


AvgPool2D = AveragePooling2D


class GlobalAveragePooling2D(Layer):
    """The mean over height and width of each channel: (N, C, H, W) -> (N, C), Keras' layer."""

    def _build(self, input_shape, rng):
        if len(input_shape) != 3:
            raise ValueError(
                f"GlobalAveragePooling2D {self.name!r} needs image input (height, width, channels), "
                f"got per-sample shape {keras_shape(input_shape)}"
            )
        return (input_shape[0],)

    def forward(self, x, training=False):
        self._require_built()
        self._xshape = tuple(x.shape)
        n, c, h, w = self._xshape
        return fastconv.avg_pool2d(x, (h, w)).reshape(n, c)

    def backward(self, grad):
        if not self.need_input_grad:
            return None
        n, c, h, w = self._xshape
        return fastconv.avg_pool2d_backward(grad.reshape(n, c, 1, 1), self._xshape, (h, w))


LAYER_CLASSES = {
    c.__name__: c
    for c in (Conv2D, MaxPooling2D, Flatten, Dense, Dropout, ReLU, AveragePooling2D, GlobalAveragePooling2D)
}
