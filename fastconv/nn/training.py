"""The training loop behind ``Sequential.fit``: epochs, steps, callbacks, Ctrl-C, divergence.

Seeds and exact resume: ``fit(seed=s)`` draws the shuffling order and each
Dropout layer's generator from ``default_rng(s)``.  The model keeps that state
as of the end of the last completed epoch (``model._train_state``, saved by
``save``); ``fit(..., initial_epoch=k)`` without a seed continues from it, so
1 epoch + save + load + 1 epoch equals 2 epochs, bit for bit.

Ctrl-C (SIGINT, main thread only): the current batch finishes, the model keeps
the weights of that last completed step, ``fit`` prints one line saying where
it stopped and returns the History of the completed epochs; a second Ctrl-C
raises ``KeyboardInterrupt`` at once.

Divergence: a NaN or infinite batch loss makes ``fit`` warn once (epoch and
batch), unless a ``TerminateOnNaN`` callback is there to stop it.

The device loss (CUDA, softmax folded into the cross-entropy): each step's
summed loss and correct count stay on the device in a per-epoch array that the
host reads at the epoch's end -- or after every step when a user callback is
given, since callbacks see each batch's logs -- so a plain ``fit`` makes one
device-to-host copy per epoch, and its live progress line shows the loss and
accuracy only at the epoch's end (see ``_Tally``).
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .callbacks import CallbackList, History, TerminateOnNaN
from .progress import Progress

__all__ = [
    "FitConfig",
    "Data",
    "run_fit",
    "train_step",
    "train_batch",
    "evaluate_arrays",
    "generator_state",
    "generator_from",
]

_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


@dataclass
class Data:
    """Validated arrays: channels-last inputs, loss targets, integer labels (for accuracy)."""

    x: np.ndarray
    targets: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def rows(self, idx: Any) -> "Data":
        return Data(self.x[idx], self.targets[idx], self.labels[idx])


@dataclass
class FitConfig:
    epochs: int
    initial_epoch: int
    batch_size: int
    shuffle: bool
    verbose: int
    seed: int | None


# --------------------------------------------------------------------------- generators (exact resume)


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    return dict(rng.bit_generator.state)


def generator_from(state: Any) -> np.random.Generator:
    """A Generator in the saved ``state`` (a bit generator's ``.state`` dict), or a ValueError."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _GENERATORS:
        raise ValueError(f"unknown random generator state {name!r}")
    bit_generator = getattr(np.random, name)()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _dropouts(model: Any) -> list[Any]:
    return [layer for layer in model.layers if hasattr(layer, "rng")]


def snapshot(model: Any, rng: np.random.Generator, epoch: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "rng": generator_state(rng),
        "layer_rngs": {layer.name: generator_state(layer.rng) for layer in _dropouts(model)},
    }


def _start_rng(model: Any, cfg: FitConfig) -> np.random.Generator:
    """Resume the saved generators (initial_epoch > 0, no new seed), else seed fresh ones."""
    state = model._train_state
    if cfg.initial_epoch > 0 and cfg.seed is None and state is not None:
        for layer in _dropouts(model):
            layer.rng = generator_from(state["layer_rngs"][layer.name])
        return generator_from(state["rng"])
    rng = np.random.default_rng(cfg.seed)
    for layer in _dropouts(model):
        layer.rng = np.random.default_rng(rng.integers(2**63))
    return rng


# --------------------------------------------------------------------------- Ctrl-C


class _CtrlC:
    """While active: the first SIGINT asks the loop to stop after the current batch,
    a second one raises KeyboardInterrupt.  Only the main thread can own signals;
    elsewhere (and where SIGINT is not Python's default handler) it does nothing."""

    def __init__(self, model: Any):
        self.model, self.pressed = model, False
        self._previous: Any = None

    def __enter__(self) -> "_CtrlC":
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        self.model.stop_training = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# --------------------------------------------------------------------------- steps and epochs


def device_loss(model: Any, pipeline: Any) -> bool:
    """True when the loss runs on the device (``_ops_cuda.xent_logits``): a softmax folded
    into the cross-entropy, on a device whose ops have the kernel."""
    return getattr(model._ops, "xent_logits", None) is not None and bool(getattr(pipeline.loss, "from_logits", False))


def loss_sink(model: Any, steps: int) -> Any:
    """Device array (steps, 2): each step's summed loss and correct count, read by the host
    when it needs them (``read_sink``), not after every step."""
    return model._ops.empty((steps, 2), np.float64)  # each step writes its row before it is read


def read_sink(model: Any, sink: Any) -> np.ndarray:
    return np.asarray(model._ops.to_host(sink))


def train_step(model: Any, pipeline: Any, batch: Data, sink: Any = None, slot: int = 0) -> tuple[float, int] | None:
    """Forward, loss, backward and one optimizer update; (loss, correct predictions).

    With a ``sink`` (the device loss, ``device_loss``) the step's summed loss and correct
    count go to ``sink[slot]`` on the device and None is returned: no host round trip."""
    ops = model._ops
    out = pipeline.forward(model._batch(batch.x), True)
    result = None
    if sink is not None:
        targets = pipeline.loss.targets(batch.targets, out.shape[1], model.dtype)
        g = ops.xent_logits(out, targets, sink, slot)
    else:
        host = ops.to_host(out)
        loss, grad = pipeline.loss(host, batch.targets)
        result = loss, int(np.count_nonzero(np.argmax(host, axis=1) == batch.labels))
        g = ops.to_device(grad, model.dtype)
    pipeline.backward(g)
    params, grads, decay = [], [], []
    for layer in model.layers:
        for k, p in layer.params.items():
            params.append(p)
            grads.append(layer.grads[k])
            decay.append(k == "kernel")
    model.optimizer.apply(params, grads, decay, ops)
    return result


def train_batch(model: Any, pipeline: Any, batch: Data) -> tuple[float, int]:
    """``train_step`` with the step's (loss, correct) on the host (``train_on_batch``)."""
    if not device_loss(model, pipeline):
        result = train_step(model, pipeline, batch)
        assert result is not None
        return result
    sink = loss_sink(model, 1)
    train_step(model, pipeline, batch, sink, 0)
    total, correct = read_sink(model, sink)[0]
    return float(total) / len(batch), int(correct)


def evaluate_arrays(model: Any, pipeline: Any, data: Data, batch_size: int) -> tuple[float, float]:
    """(mean loss, accuracy) over ``data`` in inference mode."""
    total, correct = 0.0, 0
    for lo in range(0, len(data), batch_size):
        part = data.rows(slice(lo, lo + batch_size))
        out = model._ops.to_host(pipeline.forward(model._batch(part.x), False))
        loss, _ = pipeline.loss(out, part.targets)
        total += loss * len(part)
        correct += int(np.count_nonzero(np.argmax(out, axis=1) == part.labels))
    return total / len(data), correct / len(data)


class _Loop:
    """State of one ``fit`` call (see ``run_fit``)."""

    def __init__(self, model: Any, data: Data, val: Data | None, cfg: FitConfig, callbacks: Any):
        self.model, self.data, self.val, self.cfg = model, data, val, cfg
        self.steps = math.ceil(len(data) / cfg.batch_size)
        self.history = History()
        self.history.params = {
            "epochs": cfg.epochs,
            "steps": self.steps,
            "batch_size": cfg.batch_size,
            "samples": len(data),
        }
        if val is not None:
            self.history.history.update(val_loss=[], val_accuracy=[])
        self.callbacks = CallbackList([self.history, *callbacks], model, self.history.params)
        self.batch_logs = bool(callbacks)  # a user callback reads every batch's logs
        self.pipeline = model._pipeline(with_loss=True)
        self.warned_nan = TerminateOnNaN in self.callbacks  # it reports divergence itself
        self.stopped_at: tuple[int, int] | None = None  # (epoch, completed steps) of an interrupted epoch

    def _warn_nonfinite(self, loss: float, epoch: int, step: int) -> None:
        if not self.warned_nan and not math.isfinite(loss):
            self.warned_nan = True
            warnings.warn(
                f"fit: the loss is {loss} at epoch {epoch + 1}, batch {step + 1} (training goes on; "
                "pass callbacks=[TerminateOnNaN()] to stop on divergence)",
                RuntimeWarning,
                stacklevel=5,
            )

    def epoch(self, epoch: int, rng: np.random.Generator) -> dict[str, float] | None:
        """Train one epoch; its logs, or None if it was stopped before its last batch."""
        cfg, n = self.cfg, len(self.data)
        order = rng.permutation(n) if cfg.shuffle else None
        bar = Progress(cfg.verbose, epoch + 1, cfg.epochs, self.steps)
        self.callbacks.on_epoch_begin(epoch)
        tally = _Tally(self, epoch)
        for step in range(self.steps):
            lo, hi = step * cfg.batch_size, min(n, (step + 1) * cfg.batch_size)
            self.callbacks.on_batch_begin(step)
            batch = self.data.rows(order[lo:hi] if order is not None else slice(lo, hi))
            tally.add(hi - lo, train_step(self.model, self.pipeline, batch, tally.sink, step))
            if tally.sink is None or self.batch_logs or step + 1 == self.steps:
                tally.read(step + 1)
            bar.update(step + 1, tally.logs)
            self.callbacks.on_batch_end(step, tally.logs)
            if self.model.stop_training and step + 1 < self.steps:
                tally.read(step + 1)
                bar.interrupt()
                self.stopped_at = (epoch, step + 1)
                return None
        self.history.epoch_times.append(time.perf_counter() - tally.t0)
        logs = tally.logs
        if self.val is not None:
            logs["val_loss"], logs["val_accuracy"] = evaluate_arrays(
                self.model, self.pipeline, self.val, cfg.batch_size
            )
        bar.close(logs, self.history.epoch_times[-1])
        return logs


class _Tally:
    """An epoch's batch losses and correct counts.  On the host path each step's values
    arrive with the step; with the device loss they accumulate on the device (``sink``)
    and are read when the host needs them: after every step when a user callback is
    given (callbacks see each batch's logs, as in Keras), otherwise at the epoch's end
    (or an interruption) -- one device-to-host copy per epoch.  Until then the progress
    line shows no loss."""

    def __init__(self, loop: _Loop, epoch: int):
        self.loop, self.epoch = loop, epoch
        self.t0 = time.perf_counter()
        self.sink = loss_sink(loop.model, loop.steps) if device_loss(loop.model, loop.pipeline) else None
        self.sizes: list[int] = []
        self.values: list[tuple[float, int]] = []
        self.done = 0  # steps whose values reached History
        self.total_loss, self.total_correct, self.seen = 0.0, 0, 0
        self.logs: dict[str, float] = {}

    def add(self, size: int, values: tuple[float, int] | None) -> None:
        self.sizes.append(size)
        if values is not None:
            self.values.append(values)

    def read(self, steps: int) -> None:
        """Move the values of steps [done, steps) into History and the running logs."""
        if self.done >= steps:
            return
        if self.sink is not None:
            rows = read_sink(self.loop.model, self.sink)
            self.values = [(float(rows[i, 0]) / self.sizes[i], int(rows[i, 1])) for i in range(steps)]
        history = self.loop.history
        for i in range(self.done, steps):
            loss, correct = self.values[i]
            self.loop._warn_nonfinite(loss, self.epoch, i)
            history.batch_loss.append(loss)
            history.batch_accuracy.append(correct / self.sizes[i])
            self.total_loss += loss * self.sizes[i]
            self.total_correct += correct
            self.seen += self.sizes[i]
        self.done = steps
        self.logs = {"loss": self.total_loss / self.seen, "accuracy": self.total_correct / self.seen}


def run_fit(model: Any, data: Data, val: Data | None, cfg: FitConfig, callbacks: list[Any]) -> History:
    """Train ``model`` (built and compiled) and return the History (also ``model.history``)."""
    loop = _Loop(model, data, val, cfg, callbacks)
    model.history = loop.history
    model.stop_training = False
    rng = _start_rng(model, cfg)
    model._train_state = snapshot(model, rng, cfg.initial_epoch)
    loop.callbacks.on_train_begin()
    with _CtrlC(model) as ctrl_c:
        for epoch in range(cfg.initial_epoch, cfg.epochs):
            logs = loop.epoch(epoch, rng)
            if logs is None:
                break
            model._train_state = snapshot(model, rng, epoch + 1)
            loop.callbacks.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
    loop.callbacks.on_train_end()
    if ctrl_c.pressed:
        print(_interrupt_message(loop, cfg), flush=True)
    return loop.history


def _interrupt_message(loop: _Loop, cfg: FitConfig) -> str:
    done = len(loop.history.epoch)
    if loop.stopped_at is None:
        where = f"at the end of epoch {cfg.initial_epoch + done}/{cfg.epochs}"
    else:
        epoch, step = loop.stopped_at
        where = f"in epoch {epoch + 1}/{cfg.epochs} after batch {step}/{loop.steps}"
    return (
        f"fit: interrupted (Ctrl-C) {where}; the model holds the weights of that last step, "
        f"the History has {done} completed epoch(s)"
    )
