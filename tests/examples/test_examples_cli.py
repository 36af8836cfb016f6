"""The examples' command lines: a user error is one line on stderr, exit status 2, no traceback.

Each case runs the example as a subprocess (as a user would), with
FASTCONV_OFFLINE set so nothing is downloaded; every case fails before any
kernel runs, so these take the time of an interpreter start each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "train_mnist.py"
DEMO = ROOT / "examples" / "conv_demo.py"


def _run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FASTCONV_OFFLINE="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=300)


def _assert_user_error(proc: subprocess.CompletedProcess, prog: str, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--epochs", "0"], ["--epochs", "must be >= 1, got 0"]),
    (["--epochs", "two"], ["--epochs", "expected a positive integer, got 'two'"]),
    (["--batch-size", "-4"], ["--batch-size", "must be >= 1"]),
    (["--limit", "0"], ["--limit", "must be >= 1"]),
    (["--model", "resnet"], ["--model", "invalid choice: 'resnet'"]),
    (["--device", "tpu"], ["--device", "invalid choice"]),
    (["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
], ids=["epochs-0", "epochs-text", "batch-negative", "limit-0", "model", "device", "unknown-flag"])
def test_train_mnist_bad_flags(tmp_path, args, needles):
    _assert_user_error(_run(TRAIN, *args, "--out", str(tmp_path / "out"), cwd=tmp_path), "train_mnist.py", *needles)


def test_train_mnist_missing_data_path(tmp_path):
    proc = _run(TRAIN, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    _assert_user_error(proc, "train_mnist.py", "does not exist", "--data")


def test_train_mnist_data_dir_without_mnist(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _run(TRAIN, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    _assert_user_error(proc, "train_mnist.py", "holds no MNIST file")


def test_train_mnist_corrupt_data_file(tmp_path):
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"not a zip file")
    proc = _run(TRAIN, "--data", str(bad), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_train_mnist_unwritable_out(tmp_path):
    """--out below a regular file can never be created (whoever runs the test, root included);
    the error comes before MNIST is loaded, so no training run is lost."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = _run(TRAIN, "--out", str(blocker / "sub"), "--data", str(tmp_path / "nowhere"), cwd=tmp_path)
    _assert_user_error(proc, "train_mnist.py", "--out", "is not a writable directory")


def test_train_mnist_cuda_without_gpu(tmp_path):
    import fastconv.cuda

    if fastconv.cuda.is_available():
        pytest.skip("a GPU (or the simulator) is available here: --device cuda is not an error")
    proc = _run(TRAIN, "--device", "cuda", "--out", str(tmp_path / "out"), cwd=tmp_path)
    _assert_user_error(proc, "train_mnist.py", "--device cuda", "use --device cpu")
    # the reason from fastconv.cuda is shown, not lost
    assert "numba" in proc.stderr or "GPU" in proc.stderr.split("here", 1)[1], proc.stderr


@pytest.mark.parametrize("args, needles", [
    (["--dtype", "int8"], ["--dtype", "invalid choice"]),
    (["--frobnicate"], ["unrecognized arguments"]),
])
def test_conv_demo_bad_flags(tmp_path, args, needles):
    _assert_user_error(_run(DEMO, *args, cwd=tmp_path), "conv_demo.py", *needles)
