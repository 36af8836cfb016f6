"""``python -m fastconv.warmup``: its task table, its scheduler, its command line, and
that after it the README's Quick start and the MNIST warm-up compile nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fastconv import warmup

ROOT = Path(__file__).resolve().parents[2]


def test_every_dependency_names_an_earlier_task():
    names = [t.name for t in warmup.TASKS]
    assert len(names) == len(set(names))
    for i, task in enumerate(warmup.TASKS):
        assert task.dtype in warmup.DTYPES
        assert task.op in warmup._OPS
        for dep in task.after:
            assert dep in names[:i], (task.name, dep)


def test_tasks_for_one_dtype_keeps_only_its_tasks_and_dependencies():
    tasks = warmup.tasks_for(("float64",))
    assert tasks and all(t.dtype == "float64" for t in tasks)
    assert all(dep.startswith("float64:") for t in tasks for dep in t.after)
    assert {t.op for t in warmup.tasks_for(("float32",))} == set(warmup._OPS)


def test_schedule_respects_dependencies_and_the_job_limit(monkeypatch):
    lock = threading.Lock()
    running, peak, finished = [0], [0], []

    def fake_child(names):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
            finished.append(names[0])
        return {"compiled": [], "seconds": 0.0, "wall": 0.02}

    monkeypatch.setattr(warmup, "_run_child", fake_child)
    tasks = warmup.tasks_for(warmup.DTYPES)
    reported = []
    warmup._schedule(tasks, 3, lambda task, res: reported.append(task.name))
    assert sorted(reported) == sorted(t.name for t in tasks)
    assert peak[0] <= 3
    for t in tasks:
        for dep in t.after:
            assert reported.index(dep) < reported.index(t.name), (dep, t.name)


def test_a_failing_task_is_one_message_and_exit_1(monkeypatch, capsys):
    def broken(names):
        raise RuntimeError("warm-up task float32:max-pool2d failed (exit 1):\nboom")

    monkeypatch.setattr(warmup, "_run_child", broken)
    assert warmup.main(["--dtype", "float32", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastconv.warmup: warm-up task float32:max-pool2d failed") and "Traceback" not in err


@pytest.mark.parametrize("args, needle", [
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
])
def test_bad_flags_exit_2(args, needle):
    proc = subprocess.run([sys.executable, "-m", "fastconv.warmup", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


_QUICK_START_AND_MNIST_WARMUP = r"""
import json, sys
from numba.core import event
compiled = []
class Count(event.Listener):
    def on_start(self, ev):
        fn = ev.data["dispatcher"].py_func
        compiled.append(f"{fn.__module__}.{fn.__qualname__}")
    def on_end(self, ev):
        pass
event.register("numba:compile", Count())
sys.path.insert(0, sys.argv[1])
from benchmarks.latency import quick_start_code
exec(quick_start_code(), {"__name__": "__main__"})
import numpy as np
from fastconv.nn import zoo
model, optimizer, batch = zoo.MODELS["keras"](device="cpu", seed=0)
model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
x = np.random.default_rng(0).random((batch, 28, 28), dtype=np.float32)
model.train_on_batch(x, np.arange(batch) % 10)
model.predict(x, batch_size=batch)
print(json.dumps([c for c in compiled if c.startswith("fastconv.")]))
"""


def test_after_warmup_the_quick_start_and_mnist_warmup_compile_nothing(tmp_path):
    """The end-to-end promise, in an empty cache of its own (float32: what both need)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    env.pop("FASTCONV_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "fastconv.warmup", "--dtype", "float32", "--jobs", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=1500)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every kernel loads from the cache" in proc.stdout, proc.stdout
    assert "[7/7]" in proc.stdout.replace("[ ", "["), proc.stdout
    assert "fastconv: compiling" not in proc.stderr  # the children's notice is off
    env["FASTCONV_COMPILE_NOTICE"] = "1"
    run = subprocess.run([sys.executable, "-c", _QUICK_START_AND_MNIST_WARMUP, str(ROOT)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=False, timeout=600)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
    assert "fastconv: compiling" not in run.stderr
