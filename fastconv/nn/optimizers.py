"""Optimizers with Keras' update rules and defaults (``keras.optimizers``).

Each ``apply(params, grads, decay_mask)`` updates the parameter arrays in place
from same-ordered gradient arrays; the per-parameter state is created on the
first call with the parameters' shape, dtype and device.  ``weight_decay`` is
classic coupled L2 (``g += weight_decay * w``, as convnetjs' ``l2_decay`` and
torch's ``weight_decay``), applied to kernels only, never to biases (convnetjs'
rule), and not added to the reported loss.

Defaults are Keras': SGD lr 0.01; RMSprop lr 1e-3, rho 0.9, eps 1e-7; Adam lr 1e-3,
beta 0.9/0.999, eps 1e-7; Adadelta lr 1e-3, rho 0.95, eps 1e-7.  convnetjs'
Adadelta trainer (no learning rate, i.e. 1.0; eps 1e-8) is
``Adadelta(learning_rate=1.0, epsilon=1e-8)`` (``zoo.convnetjs_mnist``).

The state (``iterations`` and the slot arrays, e.g. Adam's m and v) can be read
with ``get_state()`` and put back with ``set_state()``: ``Sequential.save``
stores it so that training resumes exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "Adadelta", "get", "NAMES"]


class Optimizer:
    name = ""

    def __init__(self, learning_rate: float, weight_decay: float = 0.0):
        self.learning_rate = _nonneg(learning_rate, "learning_rate")
        self.weight_decay = _nonneg(weight_decay, "weight_decay")
        self.iterations = 0
        self._state: list[list[Any]] | None = None
        self._ops: Any = None

    # -- what subclasses define
    def _slots(self) -> int:
        return 0

    def _update(self, p: Any, g: Any, state: list[Any]) -> None:
        raise NotImplementedError

    def update_args(self) -> tuple[Any, ...]:
        """The rule's coefficients for this step (after ``iterations`` is advanced), as the
        fused device update takes them (``_ops_cuda.update_all``)."""
        raise NotImplementedError

    # -- shared
    def get_config(self) -> dict[str, Any]:
        cfg = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "iterations"}
        return {"name": self.name, **cfg}

    def apply(self, params: list[Any], grads: list[Any], decay: list[bool], ops: Any) -> None:
        """One step: params[i] -= update(grads[i]); ``decay[i]`` marks kernels for L2."""
        if self._state is None or len(self._state) != len(params) or ops is not self._ops:
            self._ops = ops
            self._state = [[ops.zeros_like(p) for _ in range(self._slots())] for p in params]
        self.iterations += 1
        update_all = getattr(ops, "update_all", None)
        if update_all is not None:  # the device: every parameter in one launch
            wds = [self.weight_decay if d else 0.0 for d in decay]
            update_all(self.name, params, grads, self._state, wds, self.update_args())
            return
        for p, g, d, st in zip(params, grads, decay, self._state):
            if d and self.weight_decay:
                ops.axpy(self.weight_decay, p, g)  # g += wd * p
            self._update(p, g, st)

    def reset(self) -> None:
        self._state = None
        self.iterations = 0

    def get_state(self) -> tuple[int, list[list[np.ndarray]] | None]:
        """(iterations, host copies of the slot arrays per parameter; None before the first step)."""
        if self._state is None:
            return self.iterations, None
        return self.iterations, [[np.array(self._ops.to_host(s)) for s in st] for st in self._state]

    def set_state(self, iterations: int, slots: list[list[Any]] | None, ops: Any, dtype: Any) -> None:
        """Put back a state from ``get_state`` (slots on the host; moved to ``ops``' device)."""
        self.iterations = int(iterations)
        self._ops = ops
        self._state = None if slots is None else [[ops.to_device(s, dtype) for s in st] for st in slots]

    def slot_count(self) -> int:
        """Arrays of state per parameter."""
        return self._slots()

    def move_to(self, ops: Any, dtype: Any) -> None:
        """Keep the state when the model moves to another device."""
        if self._state is not None and ops is not self._ops:
            _, slots = self.get_state()
            self.set_state(self.iterations, slots, ops, dtype)


def _nonneg(v: Any, name: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {v!r}") from None
    if not np.isfinite(f) or f < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return f


def _unit(v: Any, name: str) -> float:
    f = _nonneg(v, name)
    if f >= 1:
        raise ValueError(f"{name} must be in [0, 1), got {v!r}")
    return f


class SGD(Optimizer):
    """v = momentum*v - lr*g;  p += v  (nesterov: p += momentum*v - lr*g)."""

    name = "sgd"

    def __init__(
        self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0
    ):
        super().__init__(learning_rate, weight_decay)
        self.momentum = _unit(momentum, "momentum")
        self.nesterov = bool(nesterov)

    def _slots(self) -> int:
        return 1 if self.momentum else 0

    def _update(self, p, g, st):
        self._ops.sgd(p, g, st[0] if st else None, self.learning_rate, self.momentum, self.nesterov)

    def update_args(self):
        return self.learning_rate, self.momentum, self.nesterov


class RMSprop(Optimizer):
    """a = rho*a + (1-rho)*g^2;  p -= lr * g / (sqrt(a) + eps)."""

    name = "rmsprop"

    def __init__(
        self, learning_rate: float = 0.001, rho: float = 0.9, epsilon: float = 1e-7, weight_decay: float = 0.0
    ):
        super().__init__(learning_rate, weight_decay)
        self.rho = _unit(rho, "rho")
        self.epsilon = _nonneg(epsilon, "epsilon")

    def _slots(self) -> int:
        return 1

    def _update(self, p, g, st):
        self._ops.rmsprop(p, g, st[0], *self.update_args())

    def update_args(self):
        return self.learning_rate, self.rho, self.epsilon


class Adam(Optimizer):
    """m += (g-m)(1-b1); v += (g^2-v)(1-b2); p -= lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps)."""

    name = "adam"

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        weight_decay: float = 0.0,
    ):
        super().__init__(learning_rate, weight_decay)
        self.beta_1 = _unit(beta_1, "beta_1")
        self.beta_2 = _unit(beta_2, "beta_2")
        self.epsilon = _nonneg(epsilon, "epsilon")

    def _slots(self) -> int:
        return 2

    def _update(self, p, g, st):
        self._ops.adam(p, g, st[0], st[1], *self.update_args())

    def update_args(self):
        t = self.iterations
        alpha = self.learning_rate * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        return alpha, self.beta_1, self.beta_2, self.epsilon


class Adadelta(Optimizer):
    """a = rho*a + (1-rho)g^2; d = sqrt(b+eps)/sqrt(a+eps)*g; b = rho*b + (1-rho)d^2; p -= lr*d.

    Keras' defaults (lr 1e-3, rho 0.95, eps 1e-7). convnetjs' trainer, the algorithm as
    published, is ``Adadelta(learning_rate=1.0, epsilon=1e-8)`` (examples/train_mnist.py).
    """

    name = "adadelta"

    def __init__(
        self, learning_rate: float = 0.001, rho: float = 0.95, epsilon: float = 1e-7, weight_decay: float = 0.0
    ):
        super().__init__(learning_rate, weight_decay)
        self.rho = _unit(rho, "rho")
        self.epsilon = _nonneg(epsilon, "epsilon")

    def _slots(self) -> int:
        return 2

    def _update(self, p, g, st):
        self._ops.adadelta(p, g, st[0], st[1], *self.update_args())

    def update_args(self):
        return self.learning_rate, self.rho, self.epsilon


_ALL = {c.name: c for c in (SGD, RMSprop, Adam, Adadelta)}
NAMES = tuple(_ALL)


def get(opt: Any) -> Optimizer:
    if isinstance(opt, Optimizer):
        return opt
    if isinstance(opt, str) and opt.lower() in _ALL:
        return _ALL[opt.lower()]()
    raise ValueError(
        f"unknown optimizer {opt!r}; expected one of {NAMES} or an optimizer object "
        "(fastconv.nn.SGD, RMSprop, Adam, Adadelta)"
    )


def from_config(cfg: dict[str, Any]) -> Optimizer:
    cfg = dict(cfg)
    return _ALL[cfg.pop("name")](**cfg)
