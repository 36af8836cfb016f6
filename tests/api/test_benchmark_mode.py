"""fastconv.set_benchmark / FASTCONV_BENCHMARK=1: the measured ``auto``.

Timing happens only inside the feature; no test asserts on a time.  Every
test points the cache at its own tmp_path (FASTCONV_CACHE_DIR) and resets
the mode and the in-memory winners.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import spy_calls

import fastconv
from fastconv import _benchmark_mode as bm

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ((2, 4, 9, 9), (8, 4, 3, 3))


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FASTCONV_BENCHMARK", raising=False)
    monkeypatch.setattr(bm, "_enabled", None)
    bm.clear_memory()
    yield tmp_path
    bm.clear_memory()


def _inputs(rng, xs=SHAPES[0], ws=SHAPES[1]):
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    return x, w, b


def _entries(tmp_path):
    data = json.loads((tmp_path / bm.FILE_NAME).read_text())
    assert data["format"] == bm.FORMAT
    return data["entries"]


def test_off_by_default_and_switches():
    assert not bm.benchmark_enabled()
    fastconv.set_benchmark(True)
    assert bm.benchmark_enabled()
    fastconv.set_benchmark(False)
    assert not bm.benchmark_enabled()
    with pytest.raises(TypeError, match="set_benchmark needs a bool"):
        fastconv.set_benchmark("yes")


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("FASTCONV_BENCHMARK", "1")
    assert bm.benchmark_enabled()
    fastconv.set_benchmark(False)  # the call wins over the variable
    assert not bm.benchmark_enabled()


def test_cache_dir_rules(monkeypatch, tmp_path):
    assert bm.cache_dir() == tmp_path
    monkeypatch.delenv("FASTCONV_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bm.cache_dir() == tmp_path / "xdg" / "fastconv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert bm.cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "fastconv"


def test_measured_plan_runs_the_winners(rng, isolated, monkeypatch):
    fastconv.set_benchmark(True)
    timed = spy_calls(monkeypatch, bm, "_measure")
    x, w, b = _inputs(rng)
    plan = fastconv.plan_conv2d(x.shape, w.shape)
    assert plan.measured and repr(plan).startswith("ConvPlan(measured: ")
    assert plan.reason("algorithm").startswith("measured")
    assert {plan.algorithm, plan.backward_algorithm} <= set(bm.candidates(plan.params))
    op = fastconv.Conv2dOp()
    y = op.forward(x, w, b)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    grads = op.backward(gy)
    assert op.plan == plan and len(timed) == 1  # timed once, then from memory
    # bit-identical to the chosen algorithms run by name
    np.testing.assert_array_equal(y, fastconv.conv2d(x, w, b, algorithm=plan.algorithm))
    for g, want in zip(grads, fastconv.conv2d_backward(gy, x, w, algorithm=plan.backward_algorithm)):
        np.testing.assert_array_equal(g, want)
    (entry,) = _entries(isolated).values()
    assert (entry["forward"], entry["backward"]) == (plan.algorithm, plan.backward_algorithm)
    assert "winograd" in entry["ms"]  # 3x3, stride 1: Winograd was timed too
    bm.clear_memory()  # a new process: the file answers, nothing is timed
    assert fastconv.plan_conv2d(x.shape, w.shape) == plan and len(timed) == 1


def test_off_means_the_rule(rng, monkeypatch):
    timed = spy_calls(monkeypatch, bm, "_measure")
    x, w, b = _inputs(rng)
    fastconv.conv2d(x, w, b)
    assert not fastconv.plan_conv2d(x.shape, w.shape).measured and not timed


@pytest.mark.parametrize("content", ["{not json", '{"hello": 1}', "[1, 2, 3]",
                                     '{"format": "someone-else", "entries": {}}', ""])
def test_corrupt_or_foreign_file_is_ignored_and_rewritten(content, rng, isolated):
    (isolated / bm.FILE_NAME).write_text(content)
    fastconv.set_benchmark(True)
    x, w, b = _inputs(rng)
    with pytest.warns(RuntimeWarning, match="corrupt or not fastconv's"):
        y = fastconv.conv2d(x, w, b)
    plan = fastconv.plan_conv2d(x.shape, w.shape)
    np.testing.assert_array_equal(y, fastconv.conv2d(x, w, b, algorithm=plan.algorithm))
    assert len(_entries(isolated)) == 1


def test_invalid_entry_is_measured_again(rng, isolated, monkeypatch):
    fastconv.set_benchmark(True)
    x, w, _ = _inputs(rng)
    fastconv.plan_conv2d(x.shape, w.shape)
    entries = _entries(isolated)
    key = next(iter(entries))
    entries[key]["forward"] = "fft"  # not an algorithm fastconv has
    (isolated / bm.FILE_NAME).write_text(json.dumps({"format": bm.FORMAT, "entries": entries}))
    bm.clear_memory()
    timed = spy_calls(monkeypatch, bm, "_measure")
    assert fastconv.plan_conv2d(x.shape, w.shape).algorithm in bm.candidates(fastconv.plan_conv2d(
        x.shape, w.shape, algorithm="direct").params)
    assert len(timed) == 1 and _entries(isolated)[key]["forward"] != "fft"


def test_unwritable_cache_keeps_the_choice_in_memory(rng, isolated, monkeypatch):
    blocker = isolated / "file"
    blocker.write_text("")
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(blocker / "sub"))  # a directory below a file
    fastconv.set_benchmark(True)
    x, w, _ = _inputs(rng)
    with pytest.warns(RuntimeWarning, match="kept in memory only"):
        plan = fastconv.plan_conv2d(x.shape, w.shape)
    assert plan.measured and fastconv.plan_conv2d(x.shape, w.shape) == plan


_CHILD = """
import sys
import numpy as np
import fastconv
fastconv.set_benchmark(True)
c = int(sys.argv[1])
for k in (4, 8):
    fastconv.conv2d(np.ones((1, c, 6, 6), np.float32), np.ones((k, c, 3, 3), np.float32))
"""


def test_two_processes_write_concurrently(isolated):
    """Both processes' winners end up in one valid file (lock + merge + atomic replace)."""
    env = dict(os.environ, FASTCONV_CACHE_DIR=str(isolated), PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(c)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in (2, 3)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    entries = _entries(isolated)
    assert len(entries) == 4, sorted(entries)
    assert not [f for f in os.listdir(isolated) if f.endswith(".tmp")]


def test_dilated_layers_time_winograd_too():
    """A dilated 3×3 stride-1 layer can run Winograd (on its sub-sampled grids): a candidate."""
    dilated = fastconv.plan_conv2d((2, 16, 20, 20), (16, 16, 3, 3), padding=2, dilation=2).params
    assert bm.candidates(dilated) == ("direct", "im2col", "winograd")
    strided = fastconv.plan_conv2d((2, 16, 20, 20), (16, 16, 3, 3), stride=2, dilation=2).params
    assert "winograd" not in bm.candidates(strided)
