"""fastconv.nn callbacks: Keras' names, hook order and semantics (ModelCheckpoint,
EarlyStopping, TerminateOnNaN, CSVLogger, History, model.stop_training)."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from fastconv.nn import Adam, Conv2D, Dense, Flatten, MaxPool2D, Sequential, load_model
from fastconv.nn.callbacks import Callback, CSVLogger, EarlyStopping, History, ModelCheckpoint, TerminateOnNaN
from tests.helpers import quadrant_blobs


def toy_data(n=32, seed=0):
    return quadrant_blobs(n, seed)


def toy_model(seed=1):
    m = Sequential([Conv2D(3, 3, activation="relu", input_shape=(8, 8, 1)), MaxPool2D(2), Flatten(),
                    Dense(4, activation="softmax")], seed=seed)
    m.compile(Adam(0.01), "sparse_categorical_crossentropy")
    return m


class Recorder(Callback):
    """Logs every hook call and the weights at each epoch end."""

    def __init__(self, stop_at_batch=None):
        super().__init__()
        self.calls, self.weights, self.stop_at_batch = [], [], stop_at_batch

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end",))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, tuple(sorted(logs))))
        self.weights.append(self.model.get_weights())

    def on_batch_begin(self, batch, logs=None):
        self.calls.append(("batch_begin", batch))

    def on_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, tuple(sorted(logs))))
        if batch == self.stop_at_batch:
            self.model.stop_training = True


def test_hook_order_params_and_history():
    x, y = toy_data(16)
    m, rec = toy_model(), Recorder()
    h = m.fit(x, y, epochs=2, batch_size=8, verbose=0, seed=0, validation_data=(x, y), callbacks=[rec])
    batch = [("batch_begin", 0), ("batch_end", 0, ("accuracy", "loss")),
             ("batch_begin", 1), ("batch_end", 1, ("accuracy", "loss"))]
    epoch_logs = ("accuracy", "loss", "val_accuracy", "val_loss")
    assert rec.calls == [("train_begin",), ("epoch_begin", 0), *batch, ("epoch_end", 0, epoch_logs),
                         ("epoch_begin", 1), *batch, ("epoch_end", 1, epoch_logs), ("train_end",)]
    assert rec.params == {"epochs": 2, "steps": 2, "batch_size": 8, "samples": 16} and rec.model is m
    assert isinstance(h, History) and m.history is h and h.epoch == [0, 1] and len(h.batch_loss) == 4


def test_stop_training_ends_after_the_batch():
    x, y = toy_data(32)
    m, rec = toy_model(), Recorder(stop_at_batch=1)
    h = m.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[rec])
    assert rec.calls[-2:] == [("batch_end", 1, ("accuracy", "loss")), ("train_end",)]
    assert h.epoch == [] and len(h.batch_loss) == 2 and m.stop_training


def test_callbacks_argument_is_checked():
    x, y = toy_data(8)
    with pytest.raises(TypeError, match=r"callbacks must be a list of fastconv.nn.callbacks.Callback objects"):
        toy_model().fit(x, y, verbose=0, callbacks=EarlyStopping())
    with pytest.raises(TypeError, match=r"callbacks must be Callback objects.*got str"):
        toy_model().fit(x, y, verbose=0, callbacks=["early"])


def test_model_checkpoint_formats_and_saves_every_epoch(tmp_path):
    x, y = toy_data(16)
    m = toy_model()
    pattern = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.4f}.npz")
    h = m.fit(x, y, epochs=3, batch_size=8, verbose=0, seed=0, validation_data=(x, y),
              callbacks=[ModelCheckpoint(pattern)])
    names = [f"ckpt-{e + 1:02d}-{v:.4f}.npz" for e, v in enumerate(h.history["val_loss"])]
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    last = load_model(tmp_path / names[-1])
    assert all(np.array_equal(a, b) for a, b in zip(last.get_weights(), m.get_weights()))
    assert last._train_state["epoch"] == 3 and last.optimizer.iterations == 6
    with pytest.raises(ValueError, match=r"cannot format filepath.*'val_auc'.*\['accuracy', 'loss'\]"):
        toy_model().fit(x, y, epochs=1, verbose=0, callbacks=[ModelCheckpoint(str(tmp_path / "{val_auc}.npz"))])


@pytest.mark.parametrize("monitor,mode", [("val_loss", "auto"), ("val_accuracy", "auto"), ("loss", "max")])
def test_model_checkpoint_save_best_only(tmp_path, monitor, mode):
    """The file holds the weights of the best epoch for `monitor` (weights only here)."""
    x, y = toy_data(16)
    m, rec = toy_model(), Recorder()
    path = tmp_path / "best.npz"
    h = m.fit(x, y, epochs=4, batch_size=8, verbose=0, seed=0, validation_data=(x[:8], y[:8]),
              callbacks=[rec, ModelCheckpoint(path, monitor=monitor, mode=mode, save_best_only=True,
                                              save_weights_only=True)])
    values = h.history[monitor]
    best = int(np.argmax(values) if (mode == "max" or "acc" in monitor) else np.argmin(values))
    fresh = toy_model(seed=5)
    fresh.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(fresh.get_weights(), rec.weights[best]))


def test_model_checkpoint_without_the_monitored_value(tmp_path):
    x, y = toy_data(8)
    with pytest.warns(RuntimeWarning, match=r"can save the best model only with val_loss available"):
        toy_model().fit(x, y, epochs=1, verbose=0, callbacks=[ModelCheckpoint(tmp_path / "m.npz",
                                                                              save_best_only=True)])
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match=r'ModelCheckpoint mode must be "auto", "min" or "max"'):
        ModelCheckpoint("m.npz", mode="up")


class _StubModel:
    """What EarlyStopping touches: weights, stop_training."""

    def __init__(self):
        self.stop_training, self.w = False, 0

    def get_weights(self):
        return [np.array(self.w)]

    def set_weights(self, weights):
        self.w = int(weights[0])


def _early(values, **kw):
    """Feed `values` as the monitored metric epoch by epoch; (stopped epoch or None, callback, model)."""
    cb, model = EarlyStopping(**kw), _StubModel()
    cb.set_model(model)
    cb.on_train_begin()
    for epoch, v in enumerate(values):
        model.w = epoch
        cb.on_epoch_end(epoch, {"val_loss": v, "val_accuracy": v})
        if model.stop_training:
            return epoch, cb, model
    return None, cb, model


def test_early_stopping_semantics():
    assert _early([1.0, 0.9, 0.95, 0.96, 0.97], patience=2)[0] == 3
    assert _early([1.0, 1.1], patience=0)[0] == 1  # never in the first epoch (Keras: epoch > 0)
    assert _early([1.0, 0.99, 0.98, 0.97], patience=1, min_delta=0.05)[0] == 1  # 0.01 steps are no improvement
    assert _early([1.0, 0.9, 0.8], patience=1, monitor="val_accuracy")[0] == 1  # accuracy: higher is better
    assert _early([1.0, 0.9, 0.8], patience=1, mode="max")[0] == 1
    assert _early([1.0, 0.9, 0.8, 0.7], patience=1, baseline=0.5)[0] == 1  # never beats the baseline
    assert _early([1.0, 0.9, 0.8, 0.7], patience=1, baseline=0.95)[0] is None
    stopped, cb, model = _early([1.0, 0.5, 0.7, 0.8, 0.9], patience=2, restore_best_weights=True)
    assert stopped == 3 and cb.best_epoch == 1 and model.w == 1
    stopped, _, model = _early([1.0, 0.5, 0.7, 0.8, 0.9], patience=2)
    assert stopped == 3 and model.w == 3


def test_early_stopping_in_fit(capsys):
    x, y = toy_data(16)
    h = toy_model().fit(x, y, epochs=10, batch_size=8, verbose=0, seed=0,
                        callbacks=[EarlyStopping(monitor="loss", min_delta=10.0, verbose=1)])
    assert h.epoch == [0, 1] and "Epoch 2: early stopping" in capsys.readouterr().out


def test_terminate_on_nan(capsys):
    """A NaN input in the second batch gives a NaN loss there: training stops after
    that batch with one message naming epoch and batch."""
    x, y = toy_data(32)
    x[9, 0, 0] = np.nan
    m = toy_model()
    h = m.fit(x, y, epochs=3, batch_size=8, verbose=0, shuffle=False, callbacks=[TerminateOnNaN()])
    err = capsys.readouterr().err
    assert "TerminateOnNaN: the loss is nan at epoch 1, batch 2: training stopped" in err
    assert h.epoch == [] and len(h.batch_loss) == 2 and np.isnan(h.batch_loss[1])


def test_nan_loss_warns_once_without_terminate_on_nan():
    x, y = toy_data(32)
    x[9, 0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match=r"the loss is nan at epoch 1, batch 2") as record:
        h = toy_model().fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    assert len([w for w in record if "the loss is" in str(w.message)]) == 1
    assert h.epoch == [0, 1]


def test_csv_logger(tmp_path):
    x, y = toy_data(16)
    path = tmp_path / "log.csv"
    m = toy_model()
    m.fit(x, y, epochs=2, batch_size=8, verbose=0, seed=0, validation_data=(x, y), callbacks=[CSVLogger(path)])
    m.fit(x, y, epochs=3, initial_epoch=2, batch_size=8, verbose=0, validation_data=(x, y),
          callbacks=[CSVLogger(path, append=True)])
    rows = list(csv.reader(open(path, newline="")))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert float(rows[3][2]) == m.history.history["loss"][0]
    m.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[CSVLogger(path, separator=";")])
    assert open(path).read().splitlines()[0] == "epoch;accuracy;loss"
