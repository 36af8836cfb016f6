"""Saving and loading ``Sequential`` models: one ``.npz`` file, written atomically.

The file is a NumPy ``.npz`` (a zip of ``.npy`` arrays, never pickles):

- ``__fastconv_model__``: the architecture and compile settings as JSON, with
  ``"format"`` and ``"version"``;
- ``{i}/{layer}/{param}``: every weight, in the layout the layers keep;
- version 2 adds, with ``include_optimizer=True`` on a compiled model,
  ``optimizer/{i}/{layer}/{param}/{slot}`` (the optimizer's slot arrays) and,
  in the JSON, the optimizer's iteration count and the training state
  (epochs completed, the shuffling generator's state, each Dropout layer's
  generator state), so that ``fit(..., initial_epoch=k)`` continues exactly.

Saving writes a temporary file in the target's directory, flushes and fsyncs
it, then ``os.replace``-s it over the target: a crash, a full disk or an
exception leaves the previous file as it was (and no temporary file behind).

Loading is strict: the format version (newer ones are refused, naming both),
and every array against the architecture (names, count, shapes, dtypes); a
mismatch is a ``ValueError`` naming the array.  Version 1 files (weights only)
still load.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from typing import IO, Any, Iterator

import numpy as np

from . import losses, optimizers
from .layers import LAYER_CLASSES, keras_shape

__all__ = ["save_model", "load_model", "save_weights", "load_weights", "atomic_write", "FORMAT_VERSION"]

FORMAT = "fastconv.nn.Sequential"
FORMAT_VERSION = 2
ARCH_KEY = "__fastconv_model__"
_OPT_PREFIX = "optimizer/"


# --------------------------------------------------------------------------- atomic files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` only if the ``with`` block finishes.

    The data go to a temporary file in the same directory (so ``os.replace``
    is a rename within one file system), which is flushed and fsynced before
    the rename; on any exception it is removed and ``path`` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with _open_fd(fd) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a saved model is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _open_fd(fd: int) -> IO[bytes]:
    return os.fdopen(fd, "wb")


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX; not possible on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_member(zf: zipfile.ZipFile, key: str, array: np.ndarray) -> None:
    with zf.open(key + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez``'s file format, written atomically, one member at a time."""
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, array in arrays.items():
            _write_member(zf, key, array)


# --------------------------------------------------------------------------- saving


def _weight_keys(model: Any) -> list[tuple[str, Any, str]]:
    """(file key, layer, param name) for every weight, in the model's order."""
    return [(f"{i}/{layer.name}/{k}", layer, k) for i, layer in enumerate(model.layers) for k in layer.params]


def model_config(model: Any, include_optimizer: bool) -> dict[str, Any]:
    cfg = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": model.name,
        "dtype": model.dtype.name,
        "input_shape": list(keras_shape(model.input_shape)),
        "layers": [{"class": type(layer).__name__, "config": layer.get_config()} for layer in model.layers],
        "compile": None
        if model.loss is None
        else {"loss": model.loss.get_config(), "optimizer": model.optimizer.get_config()},
        "optimizer_state": None,
        "training": None,
    }
    if include_optimizer and model.optimizer is not None:
        iterations, slots = model.optimizer.get_state()
        cfg["optimizer_state"] = {"iterations": iterations, "has_slots": slots is not None}
        cfg["training"] = model._train_state
    return cfg


def _arrays(model: Any, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays = {ARCH_KEY: np.array(json.dumps(cfg))}
    keys = _weight_keys(model)
    for key, layer, k in keys:
        arrays[key] = np.array(model._ops.to_host(layer.params[k]))
    state = cfg["optimizer_state"]
    if state is not None and state["has_slots"]:
        _, slots = model.optimizer.get_state()
        for (key, _, _), per_param in zip(keys, slots):
            for s, array in enumerate(per_param):
                arrays[f"{_OPT_PREFIX}{key}/{s}"] = array
    return arrays


def save_model(model: Any, path: str | os.PathLike[str], include_optimizer: bool = True) -> str:
    model._require_built("save")
    path = os.fspath(path)
    write_npz(path, _arrays(model, model_config(model, include_optimizer)))
    return path


def save_weights(model: Any, path: str | os.PathLike[str]) -> str:
    return save_model(model, path, include_optimizer=False)


# --------------------------------------------------------------------------- loading


def _read(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(architecture JSON, every other array) from a model file, or a ValueError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path}")
    unreadable = f"{path} is not a readable fastconv model file"
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} is not a fastconv model file (a single .npy array, not an .npz)")
        with loaded as f:
            if ARCH_KEY not in f.files:
                raise ValueError(
                    f"{path} is not a fastconv model file (no architecture entry; arrays: "
                    f"{f.files[:5]}{'...' if len(f.files) > 5 else ''})"
                )
            cfg = json.loads(str(f[ARCH_KEY]))
            arrays = {k: f[k] for k in f.files if k != ARCH_KEY}
    except ValueError as exc:
        if "is not a fastconv model file" in str(exc):
            raise
        raise ValueError(f"{unreadable} ({type(exc).__name__}: {exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{unreadable} ({type(exc).__name__}: {exc})") from None
    _check_format(path, cfg)
    return cfg, arrays


def _check_format(path: str, cfg: Any) -> None:
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        tag = cfg.get("format") if isinstance(cfg, dict) else None
        raise ValueError(f"{path} is not a fastconv model file (format tag {tag!r})")
    version = cfg.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: malformed fastconv model file (format version {version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has fastconv model format version {version}, newer than the version "
            f"{FORMAT_VERSION} this fastconv reads: upgrade fastconv to load it"
        )


def _expected(model: Any, cfg: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every array the file must hold: key -> (shape, dtype)."""
    expect = {key: (tuple(layer.params[k].shape), model.dtype) for key, layer, k in _weight_keys(model)}
    state = cfg.get("optimizer_state")
    if state and state.get("has_slots") and model.optimizer is not None:
        for key, (shape, dtype) in list(expect.items()):
            for s in range(model.optimizer.slot_count()):
                expect[f"{_OPT_PREFIX}{key}/{s}"] = (shape, dtype)
    return expect


def check_arrays(path: str, model: Any, cfg: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Names, count, shapes and dtypes of the file's arrays against the architecture."""
    expect = _expected(model, cfg)
    for key in arrays:
        if key not in expect:
            raise ValueError(
                f"{path}: unexpected array {key!r} (the architecture has {len(expect)} arrays, "
                f"e.g. {next(iter(expect), None)!r})"
            )
    for key, (shape, dtype) in expect.items():
        if key not in arrays:
            what = "optimizer slot" if key.startswith(_OPT_PREFIX) else "weight"
            raise ValueError(f"{path}: {what} {key!r} is missing")
        a = arrays[key]
        if a.shape != shape or a.dtype != dtype:
            raise ValueError(f"{path}: array {key!r} has {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape}")


def _build(path: str, cfg: dict[str, Any], model_class: Any) -> Any:
    try:
        layers = []
        for spec in cfg["layers"]:
            cls = LAYER_CLASSES.get(spec["class"])
            if cls is None:
                raise ValueError(f"{path}: unknown layer class {spec['class']!r} (known: {sorted(LAYER_CLASSES)})")
            layers.append(cls.from_config(dict(spec["config"])))
        model = model_class(layers, name=cfg.get("name", "sequential"), dtype=cfg["dtype"])
        model.build((None, *cfg["input_shape"]))
        if cfg.get("compile"):
            model.compile(
                optimizers.from_config(cfg["compile"]["optimizer"]), losses.from_config(cfg["compile"]["loss"])
            )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: malformed fastconv model architecture ({type(exc).__name__}: {exc})") from None
    return model


def _restore_training(path: str, model: Any, cfg: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    state = cfg.get("optimizer_state")
    if not state or model.optimizer is None:
        return
    try:
        iterations = int(state["iterations"])
        slots = None
        if state.get("has_slots"):
            count = model.optimizer.slot_count()
            slots = [[arrays[f"{_OPT_PREFIX}{key}/{s}"] for s in range(count)] for key, _, _ in _weight_keys(model)]
        model.optimizer.set_state(iterations, slots, model._ops, model.dtype)
        model._set_train_state(cfg.get("training"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: malformed training state ({type(exc).__name__}: {exc})") from None


def load_model(path: str | os.PathLike[str], device: str = "cpu", *, model_class: Any) -> Any:
    """Rebuild a model written by ``Sequential.save`` (never unpickles anything) as a
    ``model_class`` (``fastconv.nn.Sequential``, passed in by ``model.load_model``).

    Its predictions are bit-identical to the saved model's; a compiled model
    comes back compiled, with the optimizer state and training state when they
    were saved (``fit(..., initial_epoch=k)`` then continues exactly)."""
    path = os.fspath(path)
    cfg, arrays = _read(path)
    model = _build(path, cfg, model_class)
    check_arrays(path, model, cfg, arrays)
    for key, layer, k in _weight_keys(model):
        layer.params[k] = np.ascontiguousarray(arrays[key])
    _restore_training(path, model, cfg, arrays)
    return model.to(device)


def load_weights(model: Any, path: str | os.PathLike[str]) -> None:
    """Set ``model``'s weights from a file written by ``save``/``save_weights`` of a model
    with the same architecture (layer names, shapes and dtype are checked)."""
    path = os.fspath(path)
    model._require_built("load_weights")
    cfg, arrays = _read(path)
    weights = {k: v for k, v in arrays.items() if not k.startswith(_OPT_PREFIX)}
    check_arrays(path, model, {"optimizer_state": None}, weights)
    for key, layer, k in _weight_keys(model):
        layer.params[k] = model._ops.to_device(weights[key], model.dtype)
