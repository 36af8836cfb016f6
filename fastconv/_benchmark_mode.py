"""A measured ``auto`` (``fastconv.set_benchmark``, ``FASTCONV_BENCHMARK=1``).

The CPU counterpart of ``torch.backends.cudnn.benchmark``: the first CPU call
with ``algorithm="auto"`` for a given (shapes, options, dtype, thread count,
need_input_grad) times every applicable algorithm on random inputs of those
shapes (forward and backward separately), and the plan then runs the winners
(``ConvPlan.measured``; its repr starts with "measured:").  Winners are kept
in memory and in ``benchmark.json`` under the cache directory
(``FASTCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastconv``, else
``~/.cache/fastconv``), so later processes skip the timing.

The file is advisory: a corrupt or foreign file is ignored with a warning and
rewritten; writes take a lock (where ``fcntl`` exists), re-read and merge what
other processes wrote, and replace the file atomically (temp file in the same
directory, fsync, ``os.replace``); an unwritable directory leaves the winners
in memory only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._params import Conv2dParams
from ._plan import ConvPlan, build_plan, cpu_plan_for, dilated_winograd_geometry, winograd_geometry

__all__ = ["benchmark_enabled", "cache_dir", "candidates", "clear_memory", "measured_plan", "set_benchmark"]

FORMAT = "fastconv-benchmark-1"
FILE_NAME = "benchmark.json"
# C·R·S up to which Winograd's float32 error was measured <= 1e-5 (docs/winograd.md)
WINOGRAD_MAX_CRS = 4608
REPEATS = 2

_enabled: bool | None = None  # None: follow FASTCONV_BENCHMARK
_memory: dict[str, dict[str, Any]] = {}


def set_benchmark(enabled: bool) -> None:
    """Turn the measured ``auto`` on or off for this process (overrides
    ``FASTCONV_BENCHMARK``)."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"set_benchmark needs a bool, got {type(enabled).__name__}")
    _enabled = enabled


def benchmark_enabled() -> bool:
    if _enabled is not None:
        return _enabled
    return os.environ.get("FASTCONV_BENCHMARK", "0").strip() not in ("", "0", "false", "False")


def clear_memory() -> None:
    """Forget the winners held in memory (the file stays)."""
    _memory.clear()


def cache_dir() -> Path:
    """FASTCONV_CACHE_DIR, else $XDG_CACHE_HOME/fastconv, else ~/.cache/fastconv."""
    if os.environ.get("FASTCONV_CACHE_DIR"):
        return Path(os.environ["FASTCONV_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastconv"


def _key(p: Conv2dParams, dtype: np.dtype, threads: int, need_input_grad: bool) -> str:
    return (
        f"conv2d x{p.x_shape} w{p.weight_shape} s{(p.sh, p.sw)} p{(p.ph, p.pw, p.ph_end, p.pw_end)} "
        f"d{(p.dh, p.dw)} g{p.groups} {np.dtype(dtype).name} t{threads} gx{int(need_input_grad)}"
    )


def candidates(p: Conv2dParams) -> tuple[str, ...]:
    """The algorithms auto may choose between for these parameters."""
    algs = ["direct", "im2col"]
    if (winograd_geometry(p) or dilated_winograd_geometry(p)) and p.cg * 9 <= WINOGRAD_MAX_CRS:
        algs.append("winograd")
    return tuple(algs)


def _time(fn: Any) -> float:
    fn()  # warm-up (compilation, first-touch)
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _measure(p: Conv2dParams, dtype: np.dtype, threads: int, need_input_grad: bool) -> dict[str, Any]:
    """{"forward": winner, "backward": winner, "ms": {alg: [fwd, bwd]}} from timing every candidate."""
    from . import cpu

    rng = np.random.default_rng(0)
    x = rng.standard_normal(p.x_shape).astype(dtype)
    w = rng.standard_normal(p.weight_shape).astype(dtype)
    b = rng.standard_normal(p.k).astype(dtype)
    gy = rng.standard_normal(p.y_shape).astype(dtype)
    ms = {}
    for alg in candidates(p):
        plan = build_plan(p, dtype, "cpu", threads, need_input_grad, alg)
        fwd = _time(lambda plan=plan: cpu.conv2d_forward(x, w, b, plan))
        bwd = _time(lambda plan=plan: cpu.conv2d_backward(gy, x, w, plan))
        ms[alg] = [round(fwd * 1e3, 4), round(bwd * 1e3, 4)]
    return {"forward": min(ms, key=lambda a: ms[a][0]), "backward": min(ms, key=lambda a: ms[a][1]), "ms": ms}


def _valid(entry: Any, p: Conv2dParams) -> bool:
    ok = candidates(p)
    return isinstance(entry, dict) and entry.get("forward") in ok and entry.get("backward") in ok


def _read(path: Path) -> dict[str, Any]:
    """The file's entries; {} (with a warning) when it is corrupt or foreign."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        warnings.warn(
            f"fastconv: cannot read the benchmark cache {path} ({exc}); ignoring it", RuntimeWarning, stacklevel=4
        )
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("entries"), dict)):
        warnings.warn(
            f"fastconv: the benchmark cache {path} is corrupt or not fastconv's ({FORMAT}); ignoring it "
            f"(it will be rewritten)",
            RuntimeWarning,
            stacklevel=4,
        )
        return {}
    return data["entries"]


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the cache directory's lock file (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic replace only
        yield
        return
    with open(directory / (FILE_NAME + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write(key: str, entry: dict[str, Any]) -> None:
    """Merge ``key`` into the file under a lock and replace it atomically."""
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory):
            path = directory / FILE_NAME
            entries = _read(path)
            entries[key] = entry
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=FILE_NAME, suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump({"format": FORMAT, "entries": entries}, fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except OSError as exc:
        warnings.warn(
            f"fastconv: cannot write the benchmark cache in {directory} ({exc}); the measured choice "
            f"is kept in memory only",
            RuntimeWarning,
            stacklevel=3,
        )


def measured_plan(p: Conv2dParams, dtype: np.dtype, threads: int, need_input_grad: bool) -> ConvPlan:
    """The CPU plan whose algorithms won the timing for these parameters
    (timed now unless memory or the cache file already has the winners)."""
    key = _key(p, dtype, threads, need_input_grad)
    if key not in _memory:
        stored: Any = _read(cache_dir() / FILE_NAME).get(key)
        if not _valid(stored, p):
            stored = _measure(p, dtype, threads, need_input_grad)
            _write(key, stored)
        _memory[key] = stored
    return _plan_from(p, dtype, threads, need_input_grad, _memory[key])


def _plan_from(
    p: Conv2dParams, dtype: np.dtype, threads: int, need_input_grad: bool, entry: dict[str, Any]
) -> ConvPlan:
    times = entry.get("ms") or {}
    detail = ", ".join(f"{a} {v[0]:g}/{v[1]:g} ms" for a, v in times.items() if isinstance(v, list) and len(v) == 2)
    why = f"measured (fastconv.set_benchmark): fastest forward and backward of {detail or 'a cached timing'}"
    plan = cpu_plan_for(p, np.dtype(dtype), threads, need_input_grad, (entry["forward"], entry["backward"], why))
    return _replace_measured(plan)


def _replace_measured(plan: ConvPlan) -> ConvPlan:
    import dataclasses

    return dataclasses.replace(plan, measured=True)
