"""``Sequential``: a Keras-style stack of layers trained with mini-batch gradients.

Data layout: ``fit``/``evaluate``/``predict`` take Keras' channels-last arrays,
(N, H, W, C) -- or (N, H, W) for one channel -- and (N, features) for a model
that starts with Dense.  Each batch is converted once to the NCHW layout the
kernels use (a transpose-copy; free when C == 1) and to the model's dtype
(float32 by default; integer/uint8 input is cast, not rescaled, as in Keras).

Losses: when the last layer has ``activation="softmax"`` and the loss is a
cross-entropy on probabilities (the Keras idiom), training and ``evaluate``
feed the last layer's logits to the loss in log-sum-exp form and backpropagate
``softmax - onehot`` directly; ``predict`` returns the softmax probabilities.
Accuracy is always tracked (both losses are classification losses):
``History.history`` has "loss" and "accuracy", plus "val_loss" and
"val_accuracy" with validation data.

Reproducibility: weights are initialised from ``Sequential(seed=...)`` or, if
that is None and the model is first built inside ``fit``, from ``fit(seed=...)``;
shuffling and dropout draw from ``fit(seed=...)``.  The same seeds give the
same weights, losses and predictions on the same machine and thread count.

Device: ``Sequential(..., device="cuda")`` or ``model.to("cuda")`` keeps the
parameters on the GPU (numba device arrays) and runs conv/pool through the
fastconv CUDA backend, the small ops through ``_ops_cuda``; batches are copied
over once each.  It needs ``fastconv.cuda.is_available()``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import zipfile
from typing import Any, Callable

import numpy as np

from .. import _threads
from . import _ops_cpu, losses, optimizers
from .layers import LAYER_CLASSES, Conv2D, Layer, MaxPooling2D, _Weighted, internal_shape, keras_shape

__all__ = ["Sequential", "History", "load_model", "to_categorical"]

_FORMAT = "fastconv.nn.Sequential"
_FORMAT_VERSION = 1
_ARCH_KEY = "__fastconv_model__"


class History:
    """What ``fit`` returns: ``history[metric]`` lists one value per epoch;
    ``epoch_times`` the wall time of each epoch's training pass (seconds, without
    validation); ``batch_loss``/``batch_accuracy`` one value per training batch."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {"loss": [], "accuracy": []}
        self.epoch: list[int] = []
        self.epoch_times: list[float] = []
        self.batch_loss: list[float] = []
        self.batch_accuracy: list[float] = []
        self.params: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"History({self.history})"


def to_categorical(y: Any, num_classes: int | None = None, dtype: Any = "float32") -> np.ndarray:
    """Integer labels (N,) -> one-hot (N, num_classes), as ``keras.utils.to_categorical``."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"to_categorical expects integer labels of shape (N,), got shape {y.shape}")
    if y.size and (y.dtype.kind not in "iuf" or not np.all(np.equal(np.mod(y, 1), 0))):
        raise ValueError(f"to_categorical expects integer labels, got dtype {y.dtype}")
    yi = y.astype(np.int64)
    if num_classes is None:
        num_classes = int(yi.max()) + 1 if yi.size else 0
    if yi.size and (yi.min() < 0 or yi.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{yi.min()}, {yi.max()}]")
    out = np.zeros((len(yi), num_classes), dtype=dtype)
    out[np.arange(len(yi)), yi] = 1
    return out


def _cuda_ops() -> Any:
    """The CUDA ops module, or a RuntimeError saying why the GPU cannot be used."""
    try:
        import fastconv.cuda as fc_cuda
    except ImportError as exc:
        raise RuntimeError(f"device='cuda' needs the fastconv CUDA backend, which cannot be imported: {exc}") from None
    if not fc_cuda.is_available():
        why = getattr(fc_cuda, "unavailable_reason", lambda: "")()
        raise RuntimeError("device='cuda' but fastconv.cuda.is_available() is False"
                           + (f" ({why})" if why else "") + "; use device='cpu'")
    from . import _ops_cuda

    return _ops_cuda


class _Progress:
    """verbose=1: a tqdm bar per epoch (loss, accuracy, ETA), or a plain \\r line if
    tqdm is missing; verbose=2: one line per epoch; verbose=0: nothing."""

    def __init__(self, verbose: int, epoch: int, epochs: int, steps: int):
        self.verbose, self.steps, self.bar = verbose, steps, None
        self.prefix = f"Epoch {epoch}/{epochs}"
        self.t0 = self.last = time.perf_counter()
        if verbose == 1:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=steps, desc=self.prefix, unit="batch", file=sys.stdout,
                                dynamic_ncols=True, leave=True)
            except ImportError:
                self.bar = None

    def update(self, step: int, loss: float, acc: float) -> None:
        if self.verbose != 1:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss={loss:.4f} accuracy={acc:.4f}", refresh=False)
            self.bar.update(1)
            return
        now = time.perf_counter()
        if now - self.last >= 0.5 or step == self.steps:
            self.last = now
            eta = (now - self.t0) / step * (self.steps - step)
            print(f"\r{self.prefix} {step}/{self.steps} - ETA {eta:.0f}s - loss: {loss:.4f} - accuracy: {acc:.4f}",
                  end="", flush=True)

    def close(self, logs: dict[str, float], seconds: float) -> None:
        text = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
        if self.verbose == 1 and self.bar is not None:
            self.bar.set_postfix_str(text.replace(": ", "=").replace(" - ", " "), refresh=True)
            self.bar.close()
        elif self.verbose == 1:
            print(f"\r{self.prefix} {self.steps}/{self.steps} - {seconds:.1f}s - {text}", flush=True)
        elif self.verbose == 2:
            print(f"{self.prefix} - {seconds:.1f}s - {text}", flush=True)


class Sequential:
    """A linear stack of layers (see the module docstring for layout and seeds).

    ``Sequential(layers=None, device="cpu", *, name="sequential", dtype="float32", seed=None)``.
    """

    def __init__(self, layers: list[Layer] | None = None, device: str = "cpu", *, name: str = "sequential",
                 dtype: Any = "float32", seed: int | None = None):
        self.name = name
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
        self.seed = seed
        self._layers: list[Layer] = []
        self._names: set[str] = set()
        self._counts: dict[str, int] = {}
        self.built = False
        self.input_shape: tuple[int, ...] | None = None  # per sample, internal layout
        self.optimizer: optimizers.Optimizer | None = None
        self.loss: Any = None
        self.device = "cpu"
        self._ops: Any = _ops_cpu
        self.stop_training = False
        for layer in layers or []:
            self.add(layer)
        self.to(device)

    # ------------------------------------------------------------------ structure
    @property
    def layers(self) -> list[Layer]:
        return list(self._layers)

    def add(self, layer: Layer) -> None:
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a fastconv.nn layer (Conv2D, MaxPool2D, Flatten, Dense, "
                            f"Dropout, ReLU), got {type(layer).__name__}")
        if layer.name is None:
            base = layer.default_name
            k = self._counts.get(base, 0)
            while (f"{base}_{k}" if k else base) in self._names:
                k += 1
            layer.name = f"{base}_{k}" if k else base
            self._counts[base] = k + 1
        elif layer.name in self._names:
            raise ValueError(f"layer names must be unique in a model; {layer.name!r} is already used")
        if self._layers and layer.input_shape_arg is not None:
            raise ValueError(f"input_shape is only allowed on the first layer, got it on {layer.name!r}")
        self._names.add(layer.name)
        layer._ops = self._ops
        self._layers.append(layer)
        if self.built:  # like Keras: a layer added to a built model is built right away
            layer.build(self._layers[-2].output_shape, np.random.default_rng(self.seed), self.dtype)
            layer.need_input_grad = True

    def build(self, input_shape: Any = None, *, _seed: int | None = None) -> None:
        """Create the weights.  ``input_shape`` is Keras' (None, H, W, C) / (None, H, W) /
        (None, features), or omitted when the first layer has ``input_shape``."""
        if self.built:
            return
        if not self._layers:
            raise RuntimeError("the model has no layers: add some before building it")
        if input_shape is not None:
            shape = tuple(input_shape)
            shape = internal_shape(shape[1:] if len(shape) >= 2 else shape, "build input_shape (with batch dim)")
        elif self._layers[0].input_shape_arg is not None:
            shape = self._layers[0].input_shape_arg
        else:
            raise RuntimeError("the model is not built yet (its input shape is unknown): give the first layer "
                               "input_shape=..., call model.build((None, H, W, C)) or fit the model first")
        rng = np.random.default_rng(self.seed if self.seed is not None else _seed)
        self.input_shape = shape
        for i, layer in enumerate(self._layers):
            layer._ops = self._ops
            shape = layer.build(shape, rng, self.dtype)
            layer.need_input_grad = i > 0  # the first layer's input gradient is never used
        self.built = True

    def count_params(self) -> int:
        self._require_built("count_params")
        return sum(layer.count_params() for layer in self._layers)

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        self._require_built("output_shape")
        return (None, *keras_shape(self._layers[-1].output_shape))

    def get_weights(self) -> list[np.ndarray]:
        """All weights as host arrays in Keras' layouts, layer by layer."""
        self._require_built("get_weights")
        return [w for layer in self._layers for w in layer.get_weights()]

    def set_weights(self, weights: list[Any]) -> None:
        self._require_built("set_weights")
        weights = list(weights)
        need = sum(len(layer.params) for layer in self._layers)
        if len(weights) != need:
            raise ValueError(f"set_weights expects {need} arrays, got {len(weights)}")
        for layer in self._layers:
            k = len(layer.params)
            layer.set_weights(weights[:k])
            weights = weights[k:]

    def to(self, device: str) -> "Sequential":
        """Move the parameters (and future batches) to "cpu" or "cuda"; returns self."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f'device must be "cpu" or "cuda", got {device!r}')
        ops = _ops_cpu if device == "cpu" else _cuda_ops()
        if ops is not self._ops:
            for layer in self._layers:
                layer._set_ops(ops)
            if self.optimizer is not None:
                self.optimizer.reset()
        self._ops, self.device = ops, device
        return self

    def _require_built(self, what: str) -> None:
        if not self.built:
            if self._layers and self._layers[0].input_shape_arg is not None:
                self.build()
                return
            raise RuntimeError(f"{what}: the model is not built yet (its input shape is unknown): give the first "
                               "layer input_shape=..., call model.build((None, H, W, C)) or fit the model first")

    # ------------------------------------------------------------------ summary
    def summary(self, print_fn: Callable[[str], Any] | None = None) -> None:
        """Print layers, output shapes and parameter counts like Keras' ``summary()``."""
        self._require_built("summary")
        out = print_fn or print
        widths = (33, 27, 12)
        rule = "_" * sum(widths)

        def row(cells: tuple[str, ...]) -> str:
            return "".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        out(f'Model: "{self.name}"')
        out(rule)
        out(row((" Layer (type)", "Output Shape", "Param #")))
        out("=" * sum(widths))
        for i, layer in enumerate(self._layers):
            shape = str((None, *keras_shape(layer.output_shape)))
            out(row((f" {layer.name} ({layer.type_name})", shape, f"{layer.count_params():,}")))
            if i < len(self._layers) - 1:
                out("")
        out("=" * sum(widths))
        total = self.count_params()
        out(f"Total params: {total:,}")
        out(f"Trainable params: {total:,}")
        out("Non-trainable params: 0")
        out(rule)

    # ------------------------------------------------------------------ compile / data checks
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, metrics: Any = None) -> None:
        """optimizer: name ("sgd", "rmsprop", "adam", "adadelta") or object; loss:
        "categorical_crossentropy" or "sparse_categorical_crossentropy" (or a loss object);
        metrics: None or ["accuracy"] (accuracy is always tracked)."""
        if loss is None:
            raise ValueError(f"compile needs a loss: one of {losses.NAMES}")
        self.loss = losses.get(loss)
        self.optimizer = optimizers.get(optimizer)
        if metrics is not None:
            if isinstance(metrics, str) or not all(m in ("accuracy", "acc") for m in metrics):
                raise ValueError(f"metrics must be None or a list containing only 'accuracy', got {metrics!r}")

    def _fused(self) -> bool:
        last = self._layers[-1]
        return not self.loss.from_logits and isinstance(last, _Weighted) and last.activation == "softmax"

    def _check_x(self, x: Any, what: str = "x") -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{what} must be a real numeric array, got dtype {x.dtype}")
        shape = self.input_shape
        if len(shape) == 3:
            c, h, w = shape
            ok = (x.ndim == 4 and x.shape[1:] == (h, w, c)) or (c == 1 and x.ndim == 3 and x.shape[1:] == (h, w))
            if not ok:
                expect = f"(N, {h}, {w}, {c})" + (f" or (N, {h}, {w})" if c == 1 else "")
                hint = (" -- this looks like NCHW; fastconv.nn takes Keras' channels-last layout, pass "
                        "x.transpose(0, 2, 3, 1)") if x.ndim == 4 and x.shape[1:] == shape else ""
                raise ValueError(f"{what} must have shape {expect} (channels-last, as in Keras), got {x.shape}{hint}")
        elif x.ndim != 2 or x.shape[1] != shape[0]:
            raise ValueError(f"{what} must have shape (N, {shape[0]}), got {x.shape}")
        if len(x) == 0:
            raise ValueError(f"{what} is empty (0 samples)")
        return x

    def _check_y(self, y: Any, n: int, what: str = "y") -> tuple[np.ndarray, np.ndarray]:
        """Validated targets for the loss, and the integer labels for accuracy."""
        y = np.asarray(y)
        classes = self._layers[-1].output_shape[0]
        if len(y) != n:
            raise ValueError(f"x and {what} must have the same number of samples, got {n} and {len(y)}")
        if self.loss.sparse:
            if y.ndim == 2 and y.shape[1] == 1:
                y = y[:, 0]
            if y.ndim != 1:
                raise ValueError(f"{what} must be integer class labels of shape (N,) for {self.loss.name}, got shape "
                                 f"{y.shape}; for one-hot labels use loss='categorical_crossentropy'")
            if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0)):
                raise ValueError(f"{what} must hold integer class labels for {self.loss.name}, got dtype {y.dtype}")
            lo, hi = y.min(), y.max()
            if lo < 0 or hi >= classes:
                raise ValueError(f"{what} labels must lie in [0, {classes}) (the model has {classes} outputs), "
                                 f"got values in [{lo:g}, {hi:g}]")
            labels = y.astype(np.int64)
            return labels, labels
        if y.ndim != 2 or y.shape[1] != classes:
            hint = (" -- these look like integer labels: use to_categorical(y, num_classes) or "
                    "loss='sparse_categorical_crossentropy'") if y.ndim == 1 else ""
            raise ValueError(f"{what} must be one-hot targets of shape (N, {classes}) for {self.loss.name}, "
                             f"got shape {y.shape}{hint}")
        if y.dtype.kind not in "iuf":
            raise TypeError(f"{what} must be numeric, got dtype {y.dtype}")
        return y, np.argmax(y, axis=1)

    def _check_output(self) -> None:
        if len(self._layers[-1].output_shape) != 1:
            raise ValueError(f"{self.loss.name} needs a model output of shape (None, classes), but the last layer "
                             f"{self._layers[-1].name!r} gives {self.output_shape}: end the model with "
                             "Flatten()/Dense(classes, activation='softmax')")

    def _batch(self, x: np.ndarray) -> Any:
        """One channels-last host batch -> contiguous NCHW of the model dtype, on the model's device."""
        if x.ndim == 4:
            x = x.transpose(0, 3, 1, 2)
        elif x.ndim == 3:
            x = x[:, None]
        return self._ops.to_device(x, self.dtype)

    # ------------------------------------------------------------------ passes
    def _relu_pools(self) -> frozenset[int]:
        """Indices i of Conv2D(activation="relu") layers followed by a
        MaxPooling2D that is not the last layer: the passes run that ReLU
        after the pooling instead (``MaxPooling2D.forward(relu=True)``: same
        values and gradients, a quarter of the elementwise work)."""
        ls = self._layers
        return frozenset(i for i in range(len(ls) - 2)
                         if isinstance(ls[i], Conv2D) and ls[i].activation == "relu"
                         and isinstance(ls[i + 1], MaxPooling2D))

    def _forward(self, xb: Any, training: bool, logits: bool) -> Any:
        moved = self._relu_pools()
        for i, layer in enumerate(self._layers[:-1]):
            if i in moved:
                xb = layer.forward(xb, training, logits=True)  # ReLU moved to the pooling
            elif i - 1 in moved:
                xb = layer.forward(xb, training, relu=True)
            else:
                xb = layer.forward(xb, training)
        last = self._layers[-1]
        return last.forward(xb, training, logits=True) if logits else last.forward(xb, training)

    def _backward(self, g: Any, logits: bool) -> None:
        moved = self._relu_pools()
        last = self._layers[-1]
        g = last.backward(g, logits=True) if logits else last.backward(g)
        for i in range(len(self._layers) - 2, -1, -1):
            layer = self._layers[i]
            if i in moved:
                g = layer.backward(g, logits=True)
            elif i - 1 in moved:
                g = layer.backward(g, relu=True)
            else:
                g = layer.backward(g)

    def _loss_fn(self, fused: bool) -> Any:
        return losses.from_config({**self.loss.get_config(), "from_logits": True}) if fused else self.loss

    def _build_from(self, x: Any, seed: int | None) -> None:
        """Build on first use: from the first layer's input_shape, else from the data (as Keras)."""
        if self.built:
            return
        if self._layers and self._layers[0].input_shape_arg is None:
            xs = np.asarray(x).shape
            if len(xs) < 2:
                raise ValueError(f"x must be (N, H, W, C), (N, H, W) or (N, features), got shape {xs}")
            self.build((None, *xs[1:]), _seed=seed)
        else:
            self.build(_seed=seed)

    @_threads.blas_limited
    def train_on_batch(self, x: Any, y: Any) -> list[float]:
        """One optimizer step on (x, y); returns [loss, accuracy] of that batch (before the step)."""
        self._ensure_compiled("train_on_batch")
        self._build_from(x, None)
        self._check_output()
        x = self._check_x(x)
        targets, labels = self._check_y(y, len(x))
        loss, correct = self._step(self._batch(x), targets, labels, self._fused())
        return [loss, correct / len(x)]

    def _step(self, xb: Any, targets: np.ndarray, labels: np.ndarray, fused: bool) -> tuple[float, int]:
        out = self._ops.to_host(self._forward(xb, True, fused))
        loss, g = self._loss_fn(fused)(out, targets)
        correct = int(np.count_nonzero(np.argmax(out, axis=1) == labels))
        self._backward(self._ops.to_device(g, self.dtype), fused)
        params, grads, decay = [], [], []
        for layer in self._layers:
            for k, p in layer.params.items():
                params.append(p)
                grads.append(layer.grads[k])
                decay.append(k == "kernel")
        self.optimizer.apply(params, grads, decay, self._ops)
        return loss, correct

    def _ensure_compiled(self, what: str) -> None:
        if self.optimizer is None or self.loss is None:
            raise RuntimeError(f"{what}: call model.compile(optimizer, loss) first")

    @_threads.blas_limited
    def fit(self, x: Any, y: Any, epochs: int = 1, batch_size: int = 32, validation_data: Any = None,
            validation_split: float = 0.0, shuffle: bool = True, verbose: int = 1, seed: int | None = None) -> History:
        """Train for ``epochs`` passes over (x, y) in batches; returns a History.

        ``validation_split`` holds out the *last* fraction of x/y before shuffling (Keras'
        rule); ``validation_data=(x_val, y_val)`` takes precedence.  ``shuffle`` reshuffles
        every epoch from ``seed``.
        """
        self._ensure_compiled("fit")
        epochs = _int_arg(epochs, "epochs", 0)
        batch_size = _int_arg(batch_size, "batch_size", 1)
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        try:
            validation_split = float(validation_split)
        except (TypeError, ValueError):
            raise TypeError(f"validation_split must be a number in [0, 1), got {validation_split!r}") from None
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        self._build_from(x, seed)
        self._check_output()
        x = self._check_x(x)
        targets, labels = self._check_y(y, len(x))
        if validation_data is not None:
            try:
                vx, vy = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data must be a tuple (x_val, y_val)") from None
            vx = self._check_x(vx, "validation_data x")
            vt, vl = self._check_y(vy, len(vx), "validation_data y")
        elif validation_split > 0:
            split = int(len(x) * (1.0 - validation_split))
            if split == 0 or split == len(x):
                raise ValueError(f"validation_split={validation_split} leaves an empty training or validation "
                                 f"set for {len(x)} samples")
            vx, vt, vl = x[split:], targets[split:], labels[split:]
            x, targets, labels = x[:split], targets[:split], labels[:split]
        else:
            vx = None

        rng = np.random.default_rng(seed)
        for layer in self._layers:
            if hasattr(layer, "rng"):
                layer.rng = np.random.default_rng(rng.integers(2**63))
        fused = self._fused()
        n = len(x)
        steps = math.ceil(n / batch_size)
        hist = History()
        hist.params = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "samples": n}
        if vx is not None:
            hist.history.update(val_loss=[], val_accuracy=[])
        self.stop_training = False
        for epoch in range(epochs):
            order = rng.permutation(n) if shuffle else None
            bar = _Progress(verbose, epoch + 1, epochs, steps)
            t0 = time.perf_counter()
            total_loss, total_correct, seen = 0.0, 0, 0
            for step in range(steps):
                lo, hi = step * batch_size, min(n, (step + 1) * batch_size)
                idx = order[lo:hi] if order is not None else slice(lo, hi)
                loss, correct = self._step(self._batch(x[idx]), targets[idx], labels[idx], fused)
                if not math.isfinite(loss) and verbose:
                    print(f"\nwarning: loss is {loss} at epoch {epoch + 1}, batch {step + 1}", file=sys.stderr)
                hist.batch_loss.append(loss)
                hist.batch_accuracy.append(correct / (hi - lo))
                total_loss += loss * (hi - lo)
                total_correct += correct
                seen += hi - lo
                bar.update(step + 1, total_loss / seen, total_correct / seen)
            seconds = time.perf_counter() - t0
            logs = {"loss": total_loss / n, "accuracy": total_correct / n}
            if vx is not None:
                logs["val_loss"], logs["val_accuracy"] = self._evaluate(vx, vt, vl, batch_size, fused)
            for k, v in logs.items():
                hist.history[k].append(v)
            hist.epoch.append(epoch)
            hist.epoch_times.append(seconds)
            bar.close(logs, seconds)
            if self.stop_training:
                break
        return hist

    def _evaluate(self, x: np.ndarray, targets: np.ndarray, labels: np.ndarray, batch_size: int,
                  fused: bool) -> tuple[float, float]:
        lossfn = self._loss_fn(fused)
        total, correct = 0.0, 0
        for lo in range(0, len(x), batch_size):
            hi = min(len(x), lo + batch_size)
            out = self._ops.to_host(self._forward(self._batch(x[lo:hi]), False, fused))
            loss, _ = lossfn(out, targets[lo:hi])
            total += loss * (hi - lo)
            correct += int(np.count_nonzero(np.argmax(out, axis=1) == labels[lo:hi]))
        return total / len(x), correct / len(x)

    @_threads.blas_limited
    def evaluate(self, x: Any, y: Any, batch_size: int = 32, verbose: int = 0) -> list[float]:
        """[loss, accuracy] over (x, y), in inference mode (no dropout)."""
        self._ensure_compiled("evaluate")
        self._require_built("evaluate")
        self._check_output()
        batch_size = _int_arg(batch_size, "batch_size", 1)
        x = self._check_x(x)
        targets, labels = self._check_y(y, len(x))
        loss, acc = self._evaluate(x, targets, labels, batch_size, self._fused())
        if verbose:
            print(f"loss: {loss:.4f} - accuracy: {acc:.4f}")
        return [loss, acc]

    @_threads.blas_limited
    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        """Model outputs for x (probabilities after a softmax layer), as a host array."""
        self._require_built("predict")
        batch_size = _int_arg(batch_size, "batch_size", 1)
        x = self._check_x(x)
        outs = []
        for lo in range(0, len(x), batch_size):
            out = self._forward(self._batch(x[lo:lo + batch_size]), False, False)
            outs.append(np.array(self._ops.to_host(out)))
        y = np.concatenate(outs)
        return y.transpose(0, 2, 3, 1).copy() if y.ndim == 4 else y  # image outputs back to channels-last

    # ------------------------------------------------------------------ save / load
    def get_config(self) -> dict[str, Any]:
        self._require_built("save")
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "name": self.name,
            "dtype": self.dtype.name,
            "input_shape": list(keras_shape(self.input_shape)),
            "layers": [{"class": type(layer).__name__, "config": layer.get_config()} for layer in self._layers],
            "compile": None if self.loss is None else {
                "loss": self.loss.get_config(), "optimizer": self.optimizer.get_config()},
        }

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write one ``.npz``: the architecture as JSON plus every weight array.
        Returns the path (unchanged: no extension is appended).  Optimizer state is not saved."""
        arrays = {_ARCH_KEY: np.array(json.dumps(self.get_config()))}
        for i, layer in enumerate(self._layers):
            for k, v in layer.params.items():
                arrays[f"{i}/{layer.name}/{k}"] = np.array(self._ops.to_host(v))
        path = os.fspath(path)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return path


def _int_arg(v: Any, name: str, minimum: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def load_model(path: str | os.PathLike[str], device: str = "cpu") -> Sequential:
    """Rebuild a model written by ``Sequential.save`` (never unpickles anything).

    Its predictions are bit-identical to the saved model's; a compiled model comes
    back compiled (fresh optimizer state).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            if _ARCH_KEY not in f.files:
                raise ValueError(f"{path} is not a fastconv model file (no architecture entry; arrays: "
                                 f"{f.files[:5]}{'...' if len(f.files) > 5 else ''})")
            cfg = json.loads(str(f[_ARCH_KEY]))
            weights = {k: f[k] for k in f.files if k != _ARCH_KEY}
    except ValueError as exc:
        if "is not a fastconv model file" in str(exc):
            raise
        raise ValueError(f"{path} is not a readable fastconv model file ({type(exc).__name__}: {exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path} is not a readable fastconv model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a fastconv model file (format tag {cfg.get('format') if isinstance(cfg, dict) else None!r})")
    if cfg.get("version") != _FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported fastconv model format version {cfg.get('version')!r} "
                         f"(this fastconv reads version {_FORMAT_VERSION})")
    try:
        layers = []
        for spec in cfg["layers"]:
            cls = LAYER_CLASSES.get(spec["class"])
            if cls is None:
                raise ValueError(f"{path}: unknown layer class {spec['class']!r} (known: {sorted(LAYER_CLASSES)})")
            layers.append(cls.from_config(dict(spec["config"])))
        model = Sequential(layers, name=cfg.get("name", "sequential"), dtype=cfg["dtype"])
        model.build((None, *cfg["input_shape"]))
        for i, layer in enumerate(model.layers):
            for k in list(layer.params):
                key = f"{i}/{layer.name}/{k}"
                if key not in weights:
                    raise ValueError(f"{path}: weight {key!r} is missing")
                w = weights[key]
                if w.shape != tuple(layer.params[k].shape) or w.dtype != model.dtype:
                    raise ValueError(f"{path}: weight {key!r} has {w.dtype} {w.shape}, expected "
                                     f"{model.dtype} {tuple(layer.params[k].shape)}")
                layer.params[k] = np.ascontiguousarray(w)
        if cfg.get("compile"):
            model.compile(optimizers.from_config(cfg["compile"]["optimizer"]),
                          losses.from_config(cfg["compile"]["loss"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: malformed fastconv model architecture ({type(exc).__name__}: {exc})") from None
    return model.to(device)
