"""fastconv.nn training loop: Ctrl-C during fit (in process and in a real subprocess)
and the fit arguments added for resuming.

The subprocess tests synchronise on lines the child prints (never on sleeps):
the child prints READY from a callback after some batches, the test sends
SIGINT, the child finishes the batch, saves model and history, prints DONE.
Every wait is bounded; the child is killed if a bound is hit.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastconv.nn import Adam, Conv2D, Dense, Flatten, MaxPool2D, Sequential, load_model
from fastconv.nn.callbacks import Callback

ROOT = Path(__file__).resolve().parents[2]
CHILD_SECONDS = 420  # import + kernel compilation (cold cache, loaded 2-core CI machine) + a few batches

CHILD = r'''
import json, sys, time
import numpy as np
from fastconv.nn import Adam, Conv2D, Dense, Flatten, MaxPool2D, Sequential
from fastconv.nn.callbacks import Callback

mode, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (64, 8, 8)).astype(np.float32)
y = rng.integers(0, 4, 64)
model = Sequential([Conv2D(3, 3, activation="relu", input_shape=(8, 8, 1)), MaxPool2D(2), Flatten(),
                    Dense(4, activation="softmax")], seed=1)
model.compile(Adam(0.01), "sparse_categorical_crossentropy")


class Watch(Callback):
    """Keeps the weights after every step; READY once training is under way."""

    def __init__(self):
        super().__init__()
        self.steps, self.weights = 0, None

    def on_batch_end(self, batch, logs=None):
        self.steps += 1
        self.weights = self.model.get_weights()
        if self.steps == 20:
            print("READY", flush=True)
        if mode == "twice" and self.model.stop_training:
            print("FIRST", flush=True)
            while True:  # a second Ctrl-C must break out of anything
                time.sleep(0.01)


watch = Watch()
history = model.fit(x, y, epochs=10**6, batch_size=8, verbose=0, seed=0, callbacks=[watch])
model.save(out + "/model.npz")
same = all(np.array_equal(a, b) for a, b in zip(model.get_weights(), watch.weights))
json.dump({"epochs": history.epoch, "loss": history.history["loss"], "batches": len(history.batch_loss),
           "steps": watch.steps, "same_as_last_step": same}, open(out + "/history.json", "w"))
print("DONE", flush=True)
'''


class Child:
    """The training subprocess, read line by line with a deadline."""

    def __init__(self, tmp_path: Path, mode: str):
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, str(script), mode, str(tmp_path)], cwd=str(ROOT), env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.deadline = time.monotonic() + CHILD_SECONDS
        self.lines: list[str] = []

    def wait_for(self, text: str) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                self.kill()
                pytest.fail(f"no {text!r} line from the training subprocess in {CHILD_SECONDS} s: {self.lines}")
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read()
                pytest.fail(f"the training subprocess ended before {text!r}: {self.lines}\n{err}")
            self.lines.append(line.rstrip("\n"))
            if line.strip() == text:
                return

    def finish(self) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the training subprocess did not end in {CHILD_SECONDS} s: {self.lines}")
        self.lines += out.splitlines()
        return self.proc.returncode, "\n".join(self.lines), err

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate()


posix_only = pytest.mark.skipif(os.name != "posix", reason="sends SIGINT to a subprocess (POSIX signals)")


@posix_only
def test_ctrl_c_stops_after_the_batch_and_returns_history(tmp_path):
    child = Child(tmp_path, "once")
    child.wait_for("READY")
    child.proc.send_signal(signal.SIGINT)
    code, out, err = child.finish()
    assert code == 0, err
    assert "Traceback" not in err
    notes = [line for line in out.splitlines() if line.startswith("fit: interrupted (Ctrl-C)")]
    assert len(notes) == 1, out
    result = json.loads((tmp_path / "history.json").read_text())
    assert result["same_as_last_step"] and result["batches"] == result["steps"] >= 20
    assert result["epochs"] == list(range(len(result["loss"])))  # only completed epochs are in the History
    assert f"after batch {result['steps'] - 8 * len(result['epochs'])}/8" in notes[0] or \
        "at the end of epoch" in notes[0]
    model = load_model(tmp_path / "model.npz")
    assert model.optimizer.iterations == result["steps"]
    assert model._train_state["epoch"] == len(result["epochs"])


@posix_only
def test_second_ctrl_c_aborts_at_once(tmp_path):
    child = Child(tmp_path, "twice")
    child.wait_for("READY")
    child.proc.send_signal(signal.SIGINT)
    child.wait_for("FIRST")  # the first one was seen; the child now waits in a callback
    child.proc.send_signal(signal.SIGINT)
    code, out, err = child.finish()
    assert code != 0 and "KeyboardInterrupt" in err
    assert "DONE" not in out and not (tmp_path / "model.npz").exists()


class _CtrlCAt(Callback):
    """Raises SIGINT in this process from a batch end (once, or twice in a row)."""

    def __init__(self, batch, times=1):
        super().__init__()
        self.batch, self.times = batch, times

    def on_batch_end(self, batch, logs=None):
        if batch == self.batch:
            for _ in range(self.times):
                signal.raise_signal(signal.SIGINT)


def _model():
    m = Sequential([Conv2D(3, 3, activation="relu", input_shape=(8, 8, 1)), MaxPool2D(2), Flatten(),
                    Dense(4, activation="softmax")], seed=1)
    m.compile(Adam(0.01), "sparse_categorical_crossentropy")
    return m


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="SIGINT is not Python's default handler in this process")
def test_ctrl_c_in_process(capsys):
    x, y = np.random.default_rng(0).uniform(0, 1, (32, 8, 8)), np.arange(32) % 4
    m = _model()
    h = m.fit(x, y, epochs=3, batch_size=8, verbose=0, seed=0, callbacks=[_CtrlCAt(batch=1)])
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["fit: interrupted (Ctrl-C) in epoch 1/3 after batch 2/4; the model holds the weights of "
                   "that last step, the History has 0 completed epoch(s)"]
    assert h.epoch == [] and len(h.batch_loss) == 2 and m.optimizer.iterations == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    with pytest.raises(KeyboardInterrupt):
        _model().fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[_CtrlCAt(batch=1, times=2)])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_fit_argument_errors():
    x, y = np.zeros((8, 8, 8)), np.zeros(8, int)
    with pytest.raises(ValueError, match=r"initial_epoch must be an int >= 0, got -1"):
        _model().fit(x, y, initial_epoch=-1, verbose=0)
    h = _model().fit(x, y, epochs=2, initial_epoch=2, verbose=0)
    assert h.epoch == [] and h.history["loss"] == []
