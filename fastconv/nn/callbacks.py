"""Callbacks with Keras' names and semantics, passed as ``fit(callbacks=[...])``.

A callback sees ``self.model`` (the ``Sequential``) and ``self.params``
(epochs, steps, batch_size, samples) and gets these calls, in this order::

    on_train_begin(logs)
      on_epoch_begin(epoch, logs)
        on_batch_begin(batch, logs)  on_batch_end(batch, logs)   (per step)
      on_epoch_end(epoch, logs)
    on_train_end(logs)

``epoch`` and ``batch`` count from 0 (Keras' rule; messages show epoch + 1).
Batch logs hold the running means of the epoch so far ("loss",
"accuracy"); epoch logs hold "loss", "accuracy" and, with validation data,
"val_loss", "val_accuracy".  Setting ``self.model.stop_training = True``
ends training after the current batch.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import warnings
from typing import Any

import numpy as np

__all__ = [
    "Callback",
    "CallbackList",
    "check_callbacks",
    "History",
    "ModelCheckpoint",
    "EarlyStopping",
    "TerminateOnNaN",
    "CSVLogger",
]


class Callback:
    """Base class: override the hooks you need (all do nothing here)."""

    def __init__(self) -> None:
        self.model: Any = None
        self.params: dict[str, Any] = {}

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        pass

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        pass

    def on_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None:
        pass

    def on_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        pass

    # Keras 2.x names for the same hooks during fit
    def on_train_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self.on_batch_end(batch, logs)


def check_callbacks(callbacks: Any) -> list[Callback]:
    """``fit``'s ``callbacks`` argument as a list, or a TypeError saying what was expected."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise TypeError(
            f"callbacks must be a list of fastconv.nn.callbacks.Callback objects, got {type(callbacks).__name__}"
        )
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback objects (fastconv.nn.callbacks), got {type(cb).__name__}")
    return list(callbacks)


class CallbackList:
    """Forwards every hook to each callback in order (what ``fit`` talks to)."""

    def __init__(self, callbacks: list[Callback], model: Any, params: dict[str, Any]):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params(params)

    def __contains__(self, kind: type) -> bool:
        return any(isinstance(cb, kind) for cb in self.callbacks)

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_batch_begin(batch, logs)

    def on_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_batch_end(batch, logs)


class History(Callback):
    """What ``fit`` returns (and leaves in ``model.history``): ``history[metric]``
    lists one value per completed epoch, ``epoch`` the epoch indices;
    ``epoch_times`` the wall time of each epoch's training pass (seconds, without
    validation); ``batch_loss``/``batch_accuracy`` one value per training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[float]] = {"loss": [], "accuracy": []}
        self.epoch: list[int] = []
        self.epoch_times: list[float] = []
        self.batch_loss: list[float] = []
        self.batch_accuracy: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def __repr__(self) -> str:
        return f"History({self.history})"


def _monitor_op(mode: str, monitor: str, who: str) -> Any:
    """np.greater for metrics that grow (accuracy), np.less for losses (Keras' "auto")."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f'{who} mode must be "auto", "min" or "max", got {mode!r}')
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.startswith("fmeasure")) else "min"
    return np.greater if mode == "max" else np.less


class ModelCheckpoint(Callback):
    """Save the model at the end of every epoch (Keras' ``ModelCheckpoint``).

    ``filepath`` may hold ``str.format`` fields filled from the epoch number
    (from 1) and the epoch logs: ``"ckpt-{epoch:02d}-{val_loss:.4f}.npz"``.
    ``save_best_only``: save only when ``monitor`` improved (so an unformatted
    path always holds the best model).  ``save_weights_only``: ``save_weights``
    instead of ``save`` (no optimizer state).  Every save is atomic.
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
    ):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.monitor_op = _monitor_op(mode, monitor, "ModelCheckpoint")
        self.best = -np.inf if self.monitor_op is np.greater else np.inf

    def _path(self, epoch: int, logs: dict[str, float]) -> str:
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"ModelCheckpoint cannot format filepath {self.filepath!r} ({type(exc).__name__}: "
                f"{exc}); it can use {{epoch}} and the epoch logs {sorted(logs)}"
            ) from None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        path = self._path(epoch, logs)
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                warnings.warn(
                    f"ModelCheckpoint can save the best model only with {self.monitor} available "
                    f"(the logs have {sorted(logs)}), skipping",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return
            if not self.monitor_op(current, self.best):
                if self.verbose:
                    print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            if self.verbose:
                print(
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {current:.5f}, "
                    f"saving model to {path}"
                )
            self.best = current
        elif self.verbose:
            print(f"\nEpoch {epoch + 1}: saving model to {path}")
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs (Keras' ``EarlyStopping``).  ``baseline``: keep waiting
    until the monitored value beats it.  ``restore_best_weights``: when it stops,
    put back the weights of the best epoch."""

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
    ):
        super().__init__()
        self.monitor = monitor
        self.patience = int(patience)
        if self.patience < 0:
            raise ValueError(f"EarlyStopping patience must be >= 0, got {patience!r}")
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = bool(restore_best_weights)
        self.monitor_op = _monitor_op(mode, monitor, "EarlyStopping")
        # the improvement test is monitor_op(current - min_delta, best): min_delta counts against improving
        self.min_delta = abs(float(min_delta)) * (1 if self.monitor_op is np.greater else -1)
        self.on_train_begin()

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best = -np.inf if self.monitor_op is np.greater else np.inf
        self.best_weights: list[np.ndarray] | None = None
        self.best_epoch = 0

    def _improves(self, value: float, reference: float) -> bool:
        return bool(self.monitor_op(value - self.min_delta, reference))

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        current = (logs or {}).get(self.monitor)
        if current is None:
            warnings.warn(
                f"EarlyStopping conditioned on {self.monitor}, which is not available (the logs have "
                f"{sorted(logs or {})})",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if self._improves(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._improves(current, self.baseline):
                self.wait = 0
                return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.restore_best_weights and self.best_weights is not None:
                if self.verbose:
                    print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
                self.model.set_weights(self.best_weights)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch's loss is NaN or infinite, with one message
    naming the epoch and batch (the weights then hold that step's update)."""

    def __init__(self) -> None:
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._epoch = epoch

    def on_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(
                f"TerminateOnNaN: the loss is {loss} at epoch {self._epoch + 1}, batch {batch + 1}: training stopped",
                file=sys.stderr,
                flush=True,
            )
            self.model.stop_training = True


class CSVLogger(Callback):
    """One CSV row per epoch: "epoch" then the logs' keys in sorted order (Keras'
    ``CSVLogger``).  ``append=True`` continues an existing file (no second header)."""

    def __init__(self, filename: str | os.PathLike[str], separator: str = ",", append: bool = False):
        super().__init__()
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = bool(append)
        self._file: Any = None
        self._writer: Any = None
        self._keys: list[str] | None = None

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        has_rows = self.append and os.path.isfile(self.filename) and os.path.getsize(self.filename) > 0
        self._file = open(self.filename, "a" if self.append else "w", newline="", encoding="utf-8")
        self._writer, self._keys = None, None
        self._header_written = has_rows

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        if self._keys is None:
            self._keys = sorted(logs)
            self._writer = csv.DictWriter(self._file, fieldnames=["epoch", *self._keys], delimiter=self.sep)
            if not self._header_written:
                self._writer.writeheader()
        self._writer.writerow({"epoch": epoch, **{k: logs.get(k, "NA") for k in self._keys}})
        self._file.flush()

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
