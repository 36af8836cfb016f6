"""The steps ``Sequential`` runs: its layers, with two fusions made explicit.

A *pipeline* is the list of steps for one kind of pass plus the loss that ends
a training or evaluation pass.  Every step has ``forward(x, training)`` and
``backward(grad)``, like a layer; most steps are one layer as it is
(``LayerStep``).  Two are fused:

- ``ConvReLUPool``: a ``Conv2D(activation="relu")`` followed by a
  ``MaxPooling2D`` (that is not the model's last layer) runs the ReLU *after*
  the pooling.  Max pooling commutes with the monotone ReLU, so values and
  gradients are those of pool(relu(conv(x))) (the argmax may differ only
  inside windows with no positive value, whose gradient ReLU zeroes either
  way -- unless the incoming gradient is already NaN/Inf there: then the NaN
  lands on another element of that window), with a quarter of the
  elementwise work for 2x2 pooling.  ``tests/nn/test_layers_and_model.py``
  checks bit-equality with the plain order.  On CUDA the pooling kernel applies the ReLU itself
  (and its backward the ReLU's gradient): one launch each way.
- ``ReLUFlatten``: a ``Conv2D(activation="relu")`` followed by a ``Flatten``
  (not the last layer) applies the ReLU while flattening where the device has
  that op (CUDA: one launch each way instead of two; the same values and
  gradients, elementwise); on the CPU it runs the two layers as they are.
  When a Dense (not the last layer, not softmax) follows, the three become
  ``ReLUFlattenDense``: on CUDA the Dense kernels read the conv output through
  the ReLU and the flattening themselves (no launch of their own).
- ``SoftmaxCrossEntropy``: a last layer with ``activation="softmax"`` under a
  cross-entropy on probabilities (the Keras idiom) hands its pre-softmax
  values to the loss, which works in log-sum-exp form and returns
  ``(softmax - onehot) / N`` directly: no division by a probability, no
  overflow.  ``predict`` has no loss and runs the plain layer (probabilities).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import losses
from .layers import Conv2D, Dense, Flatten, Layer, MaxPooling2D, _Weighted

__all__ = [
    "LayerStep",
    "ConvReLUPool",
    "ReLUFlatten",
    "ReLUFlattenDense",
    "SoftmaxCrossEntropy",
    "Pipeline",
    "build_pipeline",
]

LossFn = Callable[[np.ndarray, np.ndarray], "tuple[float, np.ndarray]"]


class LayerStep:
    """One layer, run as it is."""

    def __init__(self, layer: Layer):
        self.layer = layer

    def forward(self, x: Any, training: bool) -> Any:
        return self.layer.forward(x, training)

    def backward(self, grad: Any) -> Any:
        return self.layer.backward(grad)

    def __repr__(self) -> str:
        return f"LayerStep({self.layer.name})"


class ConvReLUPool:
    """Conv2D(relu) -> MaxPooling2D with the ReLU applied to the pooled output.

    On the CPU, where its plan (``fastconv._plan.plan_conv_pool``) says so,
    the conv and the pooling run as one forward kernel
    (``fastconv/cpu/conv_pool.py``): the conv output is never written.  The
    backward of a first layer with few products per output sums grad_weight
    from the windows' winner codes; any other scatters the pooled gradient by
    the codes and runs the conv's own backward."""

    def __init__(self, conv: Conv2D, pool: MaxPooling2D, fused_kernels: bool = True):
        self.conv, self.pool = conv, pool
        self.fused_kernels = fused_kernels
        self._y: Any = None
        self._fused: Any = None  # (indices, pool params) of a one-launch device forward
        self._kept: Any = None  # (window codes, x as read, plan, x) of a fused CPU training forward
        self._plans: dict[Any, Any] = {}

    def forward(self, x: Any, training: bool) -> Any:
        plan = self._cpu_plan(x)
        self._fused = self._kept = None
        if plan is not None:
            p = self.conv.params
            y, codes, xp = self.conv._ops.conv_max_pool_forward(x, p["kernel"], p.get("bias"), plan, training)
            self._kept = (codes, xp, plan, x) if training else None
            self._y = self.conv._ops.activation_forward("relu", y)
            return self._y
        z = self.conv.linear_forward(x, training)
        fused = getattr(self.conv._ops, "max_pool_relu_forward", None)
        if fused is not None and not any(self.pool._pads):  # the device: pooling and ReLU in one launch
            pool = self.pool
            self._y, idx, p = fused(z, pool.pool_size, pool.strides, pool._implicit, training)
            self._fused = (idx, p)
            return self._y
        self._y = self.conv._ops.activation_forward("relu", self.pool.forward(z, training))
        return self._y

    def _cpu_plan(self, x: Any) -> Any:
        """The fused CPU plan for this input, or None (another device, a layer setting the
        fused kernels lack, or a plan that keeps the two ops)."""
        conv, pool = self.conv, self.pool
        ops = conv._ops
        if not self.fused_kernels or getattr(ops, "conv_max_pool_forward", None) is None:
            return None
        if conv.padding_mode != "zeros":
            return None
        if any(pool._pads) or getattr(x, "dtype", None) != conv.params["kernel"].dtype:  # implicit pads: the plan
            return None
        key = (tuple(x.shape), conv.need_input_grad, ops.threads())
        if key not in self._plans:
            self._plans[key] = ops.conv_pool_plan(x, conv, pool)
        plan = self._plans[key]
        return plan if plan.fused else None

    def backward(self, grad: Any) -> Any:
        if self._y is None:
            raise RuntimeError(f"fused step {self.conv.name!r}+{self.pool.name!r}: backward called before forward")
        if self._kept is not None:
            return self._fused_backward(grad)
        if self._fused is not None:
            idx, p = self._fused
            if idx is None:
                raise RuntimeError(f"layer {self.pool.name!r}: backward needs a forward(x, training=True) first")
            return self.conv.linear_backward(self.conv._ops.max_pool_relu_backward(grad, self._y, idx, p))
        grad = self.conv._ops.activation_backward("relu", grad, self._y)
        return self.conv.linear_backward(self.pool.backward(grad))

    def _fused_backward(self, grad: Any) -> Any:
        codes, xp, plan, x = self._kept
        conv, ops = self.conv, self.conv._ops
        grad = ops.activation_backward("relu", grad, self._y)
        gx = None
        if plan.grad_x:
            gz = ops.conv_max_pool_scatter(grad, codes, plan)
            gx, gw, gb = conv._op.backward_from(gz, x, conv.params["kernel"], need_input_grad=conv.need_input_grad)
        else:
            gw, gb = ops.conv_max_pool_backward(grad, codes, xp, plan)
        conv.grads["kernel"] = gw
        if conv.use_bias:
            conv.grads["bias"] = gb
        return gx

    def __repr__(self) -> str:
        return f"ConvReLUPool({self.conv.name}, {self.pool.name})"


class ReLUFlatten:
    """Conv2D(relu) -> Flatten with the ReLU applied while flattening, where the device
    has that op (one launch each way instead of two); elsewhere the two layers as they are."""

    def __init__(self, conv: Conv2D, flatten: Flatten):
        self.conv, self.flatten = conv, flatten
        self._y: Any = None
        self._shape: tuple[int, ...] = ()

    def forward(self, x: Any, training: bool) -> Any:
        fused = getattr(self.conv._ops, "flatten_relu_forward", None)
        if fused is None:
            self._y = None
            return self.flatten.forward(self.conv.forward(x, training), training)
        z = self.conv.linear_forward(x, training)
        self._shape = tuple(z.shape)
        self._y = fused(z)
        return self._y

    def backward(self, grad: Any) -> Any:
        if self._y is None:
            return self.conv.backward(self.flatten.backward(grad))
        return self.conv.linear_backward(self.conv._ops.flatten_relu_backward(grad, self._y, self._shape))

    def __repr__(self) -> str:
        return f"ReLUFlatten({self.conv.name}, {self.flatten.name})"


class ReLUFlattenDense:
    """Conv2D(relu) -> Flatten -> Dense where the device's dense kernels read the conv
    output through the ReLU and the flattening on the fly (and write the input gradient
    back in its layout through the ReLU's gradient): the Dense's launches only.  Elsewhere
    (the CPU) a ``ReLUFlatten`` step and the Dense as they are."""

    def __init__(self, conv: Conv2D, flatten: Flatten, dense: Dense):
        self.conv, self.flatten, self.dense = conv, flatten, dense
        self._head = ReLUFlatten(conv, flatten)
        self._z: Any = None  # the conv output, when the fused path ran

    def forward(self, x: Any, training: bool) -> Any:
        fused = getattr(self.conv._ops, "dense_act_forward", None)
        if fused is None:
            self._z = None
            return self.dense.forward(self._head.forward(x, training), training)
        self._z = self.conv.linear_forward(x, training)
        d = self.dense
        d._x = None
        d._y = fused(self._z, d.params["kernel"], d.params.get("bias"), d.activation, relu_in=True)
        return d._y

    def backward(self, grad: Any) -> Any:
        if self._z is None:
            return self._head.backward(self.dense.backward(grad))
        d = self.dense
        gx, gw, gb = d._ops.dense_act_backward(
            grad, self._z, d.params["kernel"], d._y, d.activation, True, d.use_bias, relu_in=True
        )
        d.grads["kernel"] = gw
        if d.use_bias:
            d.grads["bias"] = gb
        return self.conv.linear_backward(gx)

    def __repr__(self) -> str:
        return f"ReLUFlattenDense({self.conv.name}, {self.flatten.name}, {self.dense.name})"


class SoftmaxCrossEntropy:
    """The last layer's pre-softmax output, scored by the cross-entropy in logit form."""

    def __init__(self, layer: _Weighted, loss: Any):
        self.layer = layer
        self.loss = losses.from_config({**loss.get_config(), "from_logits": True})

    def forward(self, x: Any, training: bool) -> Any:
        return self.layer.linear_forward(x, training)

    def backward(self, grad: Any) -> Any:
        return self.layer.linear_backward(grad)

    def __repr__(self) -> str:
        return f"SoftmaxCrossEntropy({self.layer.name})"


class Pipeline:
    """Steps in order, and the loss of their output (None for ``predict``)."""

    def __init__(self, steps: list[Any], loss: LossFn | None):
        self.steps, self.loss = steps, loss

    def forward(self, x: Any, training: bool) -> Any:
        for step in self.steps:
            x = step.forward(x, training)
        return x

    def backward(self, grad: Any) -> None:
        for step in reversed(self.steps):
            grad = step.backward(grad)


def fuses_softmax(layers: list[Layer], loss: Any) -> bool:
    last = layers[-1]
    return loss is not None and not loss.from_logits and isinstance(last, _Weighted) and last.activation == "softmax"


def build_pipeline(
    layers: list[Layer], loss: Any = None, fuse_conv_pool: bool = True, fused_kernels: bool = True
) -> Pipeline:
    """The steps for ``layers``; with a ``loss``, the pass ends in it (fusing softmax when it can).
    ``fused_kernels``: ConvReLUPool steps may run their conv and pooling as one CPU kernel
    (their plan decides)."""
    steps: list[Any] = []
    i, last = 0, len(layers) - 1
    while i < last:
        layer, following = layers[i], layers[i + 1]
        if (
            fuse_conv_pool
            and i + 1 < last
            and isinstance(layer, Conv2D)
            and layer.activation == "relu"
            and isinstance(following, MaxPooling2D)
        ):
            steps.append(ConvReLUPool(layer, following, fused_kernels))
            i += 2
        elif (
            fuse_conv_pool
            and i + 1 < last
            and isinstance(layer, Conv2D)
            and layer.activation == "relu"
            and isinstance(following, Flatten)
        ):
            dense = layers[i + 2]
            if i + 2 < last and isinstance(dense, Dense) and dense.activation != "softmax":
                steps.append(ReLUFlattenDense(layer, following, dense))
                i += 3
            else:
                steps.append(ReLUFlatten(layer, following))
                i += 2
        else:
            steps.append(LayerStep(layer))
            i += 1
    if i == last:
        final = layers[last]
        if isinstance(final, _Weighted) and fuses_softmax(layers, loss):
            head = SoftmaxCrossEntropy(final, loss)
            steps.append(head)
            return Pipeline(steps, head.loss)
        steps.append(LayerStep(layers[last]))
    return Pipeline(steps, loss)
