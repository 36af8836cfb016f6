"""fastconv.nn saving and loading: atomic writes, optimizer state and exact resume, strict loading.

The models and data are tiny (8x8 images, 4 classes) so every case runs in well
under a second once the kernels are compiled.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat

import numpy as np
import pytest

from fastconv.nn import (SGD, Adadelta, Adam, Conv2D, Dense, Dropout, Flatten, MaxPool2D, RMSprop, Sequential,
                         load_model, persistence)
from tests.helpers import quadrant_blobs


def toy_data(n=40, seed=0):
    return quadrant_blobs(n, seed)


def toy_model(optimizer=None, dtype="float32", seed=1):
    m = Sequential([Conv2D(3, 3, activation="relu", input_shape=(8, 8, 1)), MaxPool2D(2), Flatten(),
                    Dropout(0.25), Dense(4, activation="softmax")], dtype=dtype, seed=seed)
    m.compile(optimizer if optimizer is not None else Adam(0.01), "sparse_categorical_crossentropy")
    return m


def same_weights(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))


# --------------------------------------------------------------------------- exact resume

OPTIMIZERS = {
    "sgd": lambda: SGD(0.05),
    "sgd-nesterov": lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "rmsprop": lambda: RMSprop(0.01),
    "adam": lambda: Adam(0.01),
    "adadelta": lambda: Adadelta(1.0, epsilon=1e-6, weight_decay=1e-3),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_resume_is_bit_identical(tmp_path, dtype, opt):
    """2 epochs in one run == 1 epoch + save + load + 1 epoch (initial_epoch=1): weights,
    optimizer state, shuffling and dropout masks all continue exactly."""
    x, y = toy_data()
    kw = dict(batch_size=8, verbose=0, validation_split=0.2)
    straight = toy_model(OPTIMIZERS[opt](), dtype)
    h_straight = straight.fit(x, y, epochs=2, seed=5, **kw)

    first = toy_model(OPTIMIZERS[opt](), dtype)
    first.fit(x, y, epochs=1, seed=5, **kw)
    resumed = load_model(first.save(tmp_path / "ckpt.npz"))
    assert resumed.optimizer.iterations == first.optimizer.iterations == 4
    h_resumed = resumed.fit(x, y, epochs=2, initial_epoch=1, **kw)

    assert same_weights(resumed, straight)
    assert h_resumed.epoch == [1] and h_resumed.history["loss"] == h_straight.history["loss"][1:]
    _, a = resumed.optimizer.get_state()
    _, b = straight.optimizer.get_state()
    assert all(np.array_equal(u, v) for su, sv in zip(a, b) for u, v in zip(su, sv))


def test_resume_in_memory_and_explicit_seed(tmp_path):
    """Without a save the model keeps its own generators; a new seed starts fresh ones."""
    x, y = toy_data()
    straight, split = toy_model(), toy_model()
    straight.fit(x, y, epochs=2, batch_size=8, verbose=0, seed=2)
    split.fit(x, y, epochs=1, batch_size=8, verbose=0, seed=2)
    split.fit(x, y, epochs=2, initial_epoch=1, batch_size=8, verbose=0)
    assert same_weights(split, straight)
    reseeded = toy_model()
    reseeded.fit(x, y, epochs=1, batch_size=8, verbose=0, seed=2)
    reseeded.fit(x, y, epochs=2, initial_epoch=1, batch_size=8, verbose=0, seed=3)
    assert not same_weights(reseeded, straight)


def test_save_without_optimizer_state(tmp_path):
    x, y = toy_data(16)
    m = toy_model()
    m.fit(x, y, epochs=1, batch_size=8, verbose=0, seed=0)
    with np.load(m.save(tmp_path / "full.npz")) as f:
        assert any(k.startswith("optimizer/") for k in f.files)
    with np.load(m.save(tmp_path / "lean.npz", include_optimizer=False)) as f:
        assert not any(k.startswith("optimizer/") for k in f.files)
    lean = load_model(tmp_path / "lean.npz")
    assert lean.optimizer.iterations == 0 and lean.optimizer.get_state()[1] is None
    np.testing.assert_array_equal(lean.predict(x), m.predict(x))


# --------------------------------------------------------------------------- atomic save


def _failing_after(real, calls, exc):
    count = [0]

    def writer(*args):
        count[0] += 1
        if count[0] > calls:
            raise exc
        return real(*args)

    return writer


@pytest.mark.parametrize("exc", [RuntimeError("injected failure"), OSError(errno.ENOSPC, "No space left on device")],
                         ids=["exception", "enospc"])
def test_failed_save_keeps_previous_file(tmp_path, monkeypatch, exc):
    """A failure after some arrays are written leaves the old file byte for byte, and no
    temporary file behind; the same for a first save (nothing is created)."""
    x, y = toy_data(16)
    m = toy_model()
    path = m.save(tmp_path / "model.npz")
    before = open(path, "rb").read()
    m.fit(x, y, epochs=1, batch_size=8, verbose=0, seed=0)
    monkeypatch.setattr(persistence, "_write_member", _failing_after(persistence._write_member, 2, exc))
    with pytest.raises(type(exc), match=str(exc.args[-1])):
        m.save(path)
    assert open(path, "rb").read() == before
    with pytest.raises(type(exc)):
        m.save(tmp_path / "new.npz")
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    np.testing.assert_array_equal(load_model(path).predict(x), toy_model().predict(x))


class _FullDisk(io.BufferedWriter):
    """A file whose writes fail with ENOSPC once ``limit`` bytes are in."""

    limit = 1500

    def write(self, data):
        if self.tell() + len(data) > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_full_disk_during_save(tmp_path, monkeypatch):
    m = toy_model()
    path = m.save(tmp_path / "model.npz")
    before = open(path, "rb").read()
    assert len(before) > _FullDisk.limit
    monkeypatch.setattr(persistence, "_open_fd", lambda fd: _FullDisk(io.FileIO(fd, "wb")))
    m.layers[0].set_weights([w + 1 for w in m.layers[0].get_weights()])
    with pytest.raises(OSError, match="No space left"):
        m.save(path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["model.npz"]


def test_saved_file_is_an_ordinary_file(tmp_path):
    path = toy_model().save(tmp_path / "m")  # no extension appended
    mask = os.umask(0)
    os.umask(mask)
    assert path.endswith("m") and stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask


# --------------------------------------------------------------------------- strict loading


def _arrays(path):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return arrays, json.loads(str(arrays["__fastconv_model__"]))


def _write(path, arrays, cfg=None):
    if cfg is not None:
        arrays = {**arrays, "__fastconv_model__": np.array(json.dumps(cfg))}
    np.savez(path, **arrays)
    return path


@pytest.fixture
def trained(tmp_path):
    x, y = toy_data(16)
    m = toy_model()
    m.fit(x, y, epochs=1, batch_size=8, verbose=0, seed=0)
    return m, _arrays(m.save(tmp_path / "good.npz"))


def test_load_checks_every_array(tmp_path, trained):
    _, (arrays, cfg) = trained
    cases = {
        "shape": ({**arrays, "4/dense/kernel": np.zeros((5, 4), np.float32)},
                  r"array '4/dense/kernel' has float32 \(5, 4\), expected float32 \(27, 4\)"),
        "dtype": ({**arrays, "0/conv2d/bias": arrays["0/conv2d/bias"].astype(np.float64)},
                  r"array '0/conv2d/bias' has float64 \(3,\), expected float32 \(3,\)"),
        "extra": ({**arrays, "5/dense_1/kernel": np.zeros(3, np.float32)}, r"unexpected array '5/dense_1/kernel'"),
        "slot-shape": ({**arrays, "optimizer/0/conv2d/kernel/1": np.zeros(3, np.float32)},
                       r"array 'optimizer/0/conv2d/kernel/1' has float32 \(3,\), expected float32 \(3, 1, 3, 3\)"),
        "slot-missing": ({k: v for k, v in arrays.items() if k != "optimizer/4/dense/bias/0"},
                         r"optimizer slot 'optimizer/4/dense/bias/0' is missing"),
        "renamed": ({("0/conv/kernel" if k == "0/conv2d/kernel" else k): v for k, v in arrays.items()},
                    r"unexpected array '0/conv/kernel'"),
    }
    for name, (bad, message) in cases.items():
        path = _write(tmp_path / f"{name}.npz", bad)
        with pytest.raises(ValueError, match=message):
            load_model(path)


def test_load_checks_version_and_state(tmp_path, trained):
    _, (arrays, cfg) = trained
    with pytest.raises(ValueError, match=r"format version 3, newer than the version 2 this fastconv reads"):
        load_model(_write(tmp_path / "newer.npz", arrays, {**cfg, "version": 3}))
    with pytest.raises(ValueError, match=r"malformed fastconv model file \(format version 'two'\)"):
        load_model(_write(tmp_path / "v.npz", arrays, {**cfg, "version": "two"}))
    bad_rng = {**cfg, "training": {**cfg["training"], "rng": {"bit_generator": "os.system"}}}
    with pytest.raises(ValueError, match=r"malformed training state.*unknown random generator state 'os.system'"):
        load_model(_write(tmp_path / "rng.npz", arrays, bad_rng))
    no_dropout_state = {**cfg, "training": {**cfg["training"], "layer_rngs": {}}}
    with pytest.raises(ValueError, match=r"malformed training state.*dropout generator states"):
        load_model(_write(tmp_path / "drop.npz", arrays, no_dropout_state))
    not_a_dict = {**cfg, "training": {**cfg["training"], "layer_rngs": [1]}}
    with pytest.raises(ValueError, match=r"malformed training state"):
        load_model(_write(tmp_path / "list.npz", arrays, not_a_dict))
    with pytest.raises(ValueError, match=r"malformed fastconv model architecture"):
        load_model(_write(tmp_path / "layers.npz", arrays, {**cfg, "layers": 3}))
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"single\.npy is not a fastconv model file \(a single \.npy array"):
        load_model(tmp_path / "single.npy")
    assert load_model(tmp_path / "good.npz").optimizer.iterations == 2


def test_version_1_files_still_load(tmp_path, trained):
    """The format before optimizer state (written here by hand, as fastconv wrote it):
    weights only; the model comes back compiled with a fresh optimizer."""
    m, (arrays, cfg) = trained
    v1 = {k: cfg[k] for k in ("format", "name", "dtype", "input_shape", "layers", "compile")}
    v1["version"] = 1
    weights = {k: v for k, v in arrays.items() if not k.startswith("optimizer/") and k != "__fastconv_model__"}
    old = load_model(_write(tmp_path / "v1.npz", weights, v1))
    x, _ = toy_data(8)
    np.testing.assert_array_equal(old.predict(x), m.predict(x))
    assert old.optimizer.name == "adam" and old.optimizer.iterations == 0 and old._train_state is None


def test_save_and_load_weights(tmp_path, trained):
    m, _ = trained
    path = m.save_weights(tmp_path / "w.npz")
    fresh = toy_model(seed=9)
    assert not same_weights(fresh, m)
    fresh.load_weights(path)
    assert same_weights(fresh, m)
    other = Sequential([Conv2D(5, 3, activation="relu", input_shape=(8, 8, 1)), MaxPool2D(2), Flatten(),
                        Dropout(0.25), Dense(4, activation="softmax")])
    with pytest.raises(ValueError, match=r"array '0/conv2d/kernel' has float32 \(3, 1, 3, 3\), expected float32 "
                                         r"\(5, 1, 3, 3\)"):
        other.load_weights(path)
    dense_only = Sequential([Dense(4, input_shape=(3,))])
    with pytest.raises(ValueError, match=r"unexpected array '0/conv2d/kernel'"):
        dense_only.load_weights(path)
