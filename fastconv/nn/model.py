"""``Sequential``: a Keras-style stack of layers trained with mini-batch gradients.

Data layout: ``fit``/``evaluate``/``predict`` take Keras' channels-last arrays,
(N, H, W, C) -- or (N, H, W) for one channel -- and (N, features) for a model
that starts with Dense.  Each batch is converted once to the NCHW layout the
kernels use (a transpose-copy; free when C == 1) and to the model's dtype
(float32 by default; integer/uint8 input is cast, not rescaled, as in Keras).

Passes: the model runs its layers as the steps of ``nn/steps.py``, where two
fusions are explicit: a Conv2D's ReLU moved after the MaxPooling2D that follows
it, and a last softmax layer folded into the cross-entropy (log-sum-exp form,
``softmax - onehot`` backpropagated directly); ``predict`` returns the softmax
probabilities.  Accuracy is always tracked (both losses are classification losses):
``History.history`` has "loss" and "accuracy", plus "val_loss" and
"val_accuracy" with validation data.

Reproducibility: weights are initialised from ``Sequential(seed=...)`` or, if
that is None and the model is first built inside ``fit``, from ``fit(seed=...)``;
shuffling and dropout draw from ``fit(seed=...)``.  The same seeds give the
same weights, losses and predictions on the same machine and thread count.

Training (``nn/training.py``): callbacks (``nn/callbacks.py``), Ctrl-C stops
after the current batch, exact resume with ``fit(..., initial_epoch=k)``.
Saving and loading (``nn/persistence.py``): atomic, with the optimizer state,
strictly checked on load.  Progress output: ``nn/progress.py``.

Device: ``Sequential(..., device="cuda")`` or ``model.to("cuda")`` keeps the
parameters on the GPU (numba device arrays) and runs conv/pool through the
fastconv CUDA backend, the small ops through ``_ops_cuda``; batches are copied
over once each.  It needs ``fastconv.cuda.is_available()``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from .. import _threads
from . import _ops_cpu, losses, optimizers, persistence, training
from .callbacks import Callback, History, check_callbacks
from .layers import Layer, internal_shape, keras_shape
from .steps import Pipeline, build_pipeline

__all__ = ["Sequential", "History", "load_model", "to_categorical"]


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
        reason = getattr(fc_cuda, "unavailable_reason", None) or getattr(fc_cuda, "_unavailable_reason", None)
        why = reason() if callable(reason) else None
        raise RuntimeError(
            "device='cuda' but no GPU can be used here" + (f": {why}" if why else "") + "; use device='cpu'"
        )
    from . import _ops_cuda

    return _ops_cuda


class Sequential:
    """A linear stack of layers (see the module docstring for layout and seeds).

    ``Sequential(layers=None, device="cpu", *, name="sequential", dtype="float32", seed=None)``.
    """

    def __init__(
        self,
        layers: list[Layer] | None = None,
        device: str = "cpu",
        *,
        name: str = "sequential",
        dtype: Any = "float32",
        seed: int | None = None,
    ):
        self.name = name
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
        self.seed = seed
        self._layers: list[Layer] = []
        self._names: set[str] = set()
        self._counts: dict[str, int] = {}
        self.built = False
        self.input_shape: Any = None  # per sample, internal layout (a tuple once built)
        self.optimizer: optimizers.Optimizer | None = None
        self.loss: Any = None
        self.device = "cpu"
        self._ops: Any = _ops_cpu
        self.stop_training = False
        self.history: History | None = None
        # the shuffling/dropout generators as of the last completed epoch (exact resume)
        self._train_state: dict[str, Any] | None = None
        self._fuse_conv_pool = True  # ConvReLUPool steps (tests compare with the plain order)
        self._fused_kernels = True  # a conv + its pooling as one CPU kernel (tests compare with the two ops)
        for layer in layers or []:
            self.add(layer)
        self.to(device)

    # ------------------------------------------------------------------ structure
    @property
    def layers(self) -> list[Layer]:
        return list(self._layers)

    def add(self, layer: Layer) -> None:
        if not isinstance(layer, Layer):
            raise TypeError(
                f"Sequential.add expects a fastconv.nn layer (Conv2D, MaxPool2D, Flatten, Dense, "
                f"Dropout, ReLU), got {type(layer).__name__}"
            )
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
            raise RuntimeError(
                "the model is not built yet (its input shape is unknown): give the first layer "
                "input_shape=..., call model.build((None, H, W, C)) or fit the model first"
            )
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
                self.optimizer.move_to(ops, self.dtype)
        self._ops, self.device = ops, device
        return self

    def _require_built(self, what: str) -> None:
        if not self.built:
            if self._layers and self._layers[0].input_shape_arg is not None:
                self.build()
                return
            raise RuntimeError(
                f"{what}: the model is not built yet (its input shape is unknown): give the first "
                "layer input_shape=..., call model.build((None, H, W, C)) or fit the model first"
            )

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
                hint = (
                    (
                        " -- this looks like NCHW; fastconv.nn takes Keras' channels-last layout, pass "
                        "x.transpose(0, 2, 3, 1)"
                    )
                    if x.ndim == 4 and x.shape[1:] == shape
                    else ""
                )
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
                raise ValueError(
                    f"{what} must be integer class labels of shape (N,) for {self.loss.name}, got shape "
                    f"{y.shape}; for one-hot labels use loss='categorical_crossentropy'"
                )
            if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0)):
                raise ValueError(f"{what} must hold integer class labels for {self.loss.name}, got dtype {y.dtype}")
            lo, hi = y.min(), y.max()
            if lo < 0 or hi >= classes:
                raise ValueError(
                    f"{what} labels must lie in [0, {classes}) (the model has {classes} outputs), "
                    f"got values in [{lo:g}, {hi:g}]"
                )
            labels = y.astype(np.int64)
            return labels, labels
        if y.ndim != 2 or y.shape[1] != classes:
            hint = (
                (
                    " -- these look like integer labels: use to_categorical(y, num_classes) or "
                    "loss='sparse_categorical_crossentropy'"
                )
                if y.ndim == 1
                else ""
            )
            raise ValueError(
                f"{what} must be one-hot targets of shape (N, {classes}) for {self.loss.name}, "
                f"got shape {y.shape}{hint}"
            )
        if y.dtype.kind not in "iuf":
            raise TypeError(f"{what} must be numeric, got dtype {y.dtype}")
        return y, np.argmax(y, axis=1)

    def _check_output(self) -> None:
        if len(self._layers[-1].output_shape) != 1:
            raise ValueError(
                f"{self.loss.name} needs a model output of shape (None, classes), but the last layer "
                f"{self._layers[-1].name!r} gives {self.output_shape}: end the model with "
                "Flatten()/Dense(classes, activation='softmax')"
            )

    def _batch(self, x: np.ndarray) -> Any:
        """One channels-last host batch -> contiguous NCHW of the model dtype, on the model's device."""
        if x.ndim == 4:
            x = x.transpose(0, 3, 1, 2)
        elif x.ndim == 3:
            x = x[:, None]
        return self._ops.to_device(x, self.dtype)

    # ------------------------------------------------------------------ passes
    def _pipeline(self, with_loss: bool) -> Pipeline:
        """The steps of a pass (fusions explicit, see nn/steps.py); ``with_loss``: ending in the loss."""
        return build_pipeline(self._layers, self.loss if with_loss else None, self._fuse_conv_pool, self._fused_kernels)

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

    def _data(self, x: Any, y: Any, what: str = "") -> training.Data:
        x = self._check_x(x, f"{what}x".strip())
        targets, labels = self._check_y(y, len(x), f"{what}y".strip())
        return training.Data(x, targets, labels)

    def _validation(
        self, data: training.Data, validation_data: Any, validation_split: Any
    ) -> tuple[training.Data, training.Data | None]:
        """(training data, validation data or None): ``validation_data`` wins; a split takes the last samples."""
        split_fraction = _fraction(validation_split)
        if validation_data is not None:
            try:
                vx, vy = validation_data
            except (TypeError, ValueError):
                raise TypeError("validation_data must be a tuple (x_val, y_val)") from None
            return data, self._data(vx, vy, "validation_data ")
        if split_fraction == 0:
            return data, None
        split = int(len(data) * (1.0 - split_fraction))
        if split == 0 or split == len(data):
            raise ValueError(
                f"validation_split={split_fraction} leaves an empty training or validation set for {len(data)} samples"
            )
        return data.rows(slice(0, split)), data.rows(slice(split, None))

    def _ensure_compiled(self, what: str) -> None:
        if self.optimizer is None or self.loss is None:
            raise RuntimeError(f"{what}: call model.compile(optimizer, loss) first")

    @_threads.blas_limited
    def train_on_batch(self, x: Any, y: Any) -> list[float]:
        """One optimizer step on (x, y); returns [loss, accuracy] of that batch (before the step)."""
        self._ensure_compiled("train_on_batch")
        self._build_from(x, None)
        self._check_output()
        data = self._data(x, y)
        loss, correct = training.train_batch(self, self._pipeline(with_loss=True), data)
        return [loss, correct / len(data)]

    @_threads.blas_limited
    def fit(
        self,
        x: Any,
        y: Any,
        epochs: int = 1,
        batch_size: int = 32,
        validation_data: Any = None,
        validation_split: float = 0.0,
        shuffle: bool = True,
        verbose: int = 1,
        seed: int | None = None,
        callbacks: list[Callback] | None = None,
        initial_epoch: int = 0,
    ) -> History:
        """Train for epochs ``initial_epoch .. epochs-1`` over (x, y) in batches; returns a History.

        ``validation_split`` holds out the *last* fraction of x/y before shuffling (Keras'
        rule); ``validation_data=(x_val, y_val)`` takes precedence.  ``shuffle`` reshuffles
        every epoch from ``seed``.  ``callbacks``: ``fastconv.nn.callbacks`` objects.
        ``initial_epoch=k`` with no ``seed`` continues the shuffling and dropout
        generators where the last fit (or the loaded file) left them: exact resume.
        Ctrl-C stops after the current batch (see ``nn/training.py``).
        """
        self._ensure_compiled("fit")
        cfg = training.FitConfig(
            epochs=_int_arg(epochs, "epochs", 0),
            initial_epoch=_int_arg(initial_epoch, "initial_epoch", 0),
            batch_size=_int_arg(batch_size, "batch_size", 1),
            shuffle=bool(shuffle),
            verbose=verbose,
            seed=seed,
        )
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        _fraction(validation_split)
        callbacks = check_callbacks(callbacks)
        self._build_from(x, seed)
        self._check_output()
        data, val = self._validation(self._data(x, y), validation_data, validation_split)
        return training.run_fit(self, data, val, cfg, callbacks)

    @_threads.blas_limited
    def evaluate(self, x: Any, y: Any, batch_size: int = 32, verbose: int = 0) -> list[float]:
        """[loss, accuracy] over (x, y), in inference mode (no dropout)."""
        self._ensure_compiled("evaluate")
        self._require_built("evaluate")
        self._check_output()
        batch_size = _int_arg(batch_size, "batch_size", 1)
        loss, acc = training.evaluate_arrays(self, self._pipeline(with_loss=True), self._data(x, y), batch_size)
        if verbose:
            print(f"loss: {loss:.4f} - accuracy: {acc:.4f}")
        return [loss, acc]

    @_threads.blas_limited
    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        """Model outputs for x (probabilities after a softmax layer), as a host array."""
        self._require_built("predict")
        batch_size = _int_arg(batch_size, "batch_size", 1)
        x = self._check_x(x)
        pipeline = self._pipeline(with_loss=False)
        outs = []
        for lo in range(0, len(x), batch_size):
            out = pipeline.forward(self._batch(x[lo : lo + batch_size]), False)
            outs.append(np.array(self._ops.to_host(out)))
        y = np.concatenate(outs)
        return y.transpose(0, 2, 3, 1).copy() if y.ndim == 4 else y  # image outputs back to channels-last

    def activations(self, x: Any, batch_size: int = 32) -> list[Any]:
        """Every layer's output for ``x`` (``predict``'s input), in layer order, as host arrays
        in channels-last layout: a list of ``LayerOutput(name, type_name, shape, output)`` with
        the names and shapes ``summary()`` prints (see ``fastconv.nn.explain``)."""
        from ._activations import layer_activations

        return layer_activations(self, x, batch_size)

    # ------------------------------------------------------------------ save / load
    def get_config(self) -> dict[str, Any]:
        self._require_built("save")
        return persistence.model_config(self, include_optimizer=False)

    def save(self, path: str | os.PathLike[str], include_optimizer: bool = True) -> str:
        """Write one ``.npz`` atomically: the architecture as JSON, every weight array and,
        with ``include_optimizer`` (a compiled model), the optimizer's state and the
        training state (epochs done, generators) for an exact resume.  Returns the path
        (unchanged: no extension is appended).  See ``nn/persistence.py``."""
        return persistence.save_model(self, path, include_optimizer)

    def save_weights(self, path: str | os.PathLike[str]) -> str:
        """``save`` without the optimizer and training state."""
        return persistence.save_weights(self, path)

    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Weights from a file saved by a model of the same architecture (checked strictly)."""
        persistence.load_weights(self, path)

    def _set_train_state(self, state: Any) -> None:
        """The training state of a loaded file (validated: it becomes generators on resume)."""
        if state is None:
            self._train_state = None
            return
        training.generator_from(state["rng"])
        names = {str(layer.name) for layer in self._layers if hasattr(layer, "rng")}
        if set(state["layer_rngs"]) != names:
            raise ValueError(f"dropout generator states for {sorted(state['layer_rngs'])}, expected {sorted(names)}")
        for layer_state in state["layer_rngs"].values():
            training.generator_from(layer_state)
        self._train_state = {"epoch": int(state["epoch"]), "rng": state["rng"], "layer_rngs": state["layer_rngs"]}


def _int_arg(v: Any, name: str, minimum: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def _fraction(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"validation_split must be a number in [0, 1), got {v!r}") from None
    if not 0.0 <= f < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {v!r}")
    return f


def load_model(path: str | os.PathLike[str], device: str = "cpu") -> Sequential:
    """Rebuild a model written by ``Sequential.save`` (never unpickles anything).

    Its predictions are bit-identical to the saved model's; a compiled model
    comes back compiled, with the optimizer state and training state when they
    were saved (``fit(..., initial_epoch=k)`` then continues exactly)."""
    return persistence.load_model(path, device, model_class=Sequential)
