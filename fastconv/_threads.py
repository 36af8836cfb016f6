"""Thread pools: one knob for fastconv's threads, and the guards that keep BLAS
worker threads off the cores while fastconv's kernels run.

Why the guards exist: after a multi-threaded call, OpenBLAS's (pthreads) worker
threads keep spinning for a while (2**28 CPU cycles by default) before they
sleep.  On a machine with as many cores as Numba threads, a spinning worker
takes a core from the next Numba parallel region, whose threads then wait for
each other at every barrier.  Lowering OpenBLAS's thread count does not stop a
worker that already spins, and OpenBLAS reads its spin timeout only when it
starts.  What does stop it is ``blas_thread_shutdown_``, the routine OpenBLAS
itself runs before every ``fork``: the idle workers exit, and OpenBLAS starts
them again, lazily, at its next multi-threaded call (or thread-count change).

- ``guarded`` (the functional ops, which call no BLAS): stops the idle workers
  of every OpenBLAS pool that has more than one thread; changes no count.
- ``blas_limited`` (``fastconv.nn``'s fit/evaluate/predict/train_on_batch, whose
  Dense layers call BLAS): sets every BLAS pool with more than one thread to one
  thread, so those calls wake no worker, then stops the idle workers; restores
  every count it changed when the call ends (also after an exception), so code
  outside fastconv keeps its BLAS threads.  Concurrent calls from several
  Python threads share one limit: the first one in sets it, the last one out
  restores it.

Workers are stopped only while the process runs a single Python thread: then no
other BLAS call can be in flight.

The other direction: Numba's OpenMP threads (GNU libgomp, the ``omp`` threading
layer) spin after each parallel region for ``GOMP_SPINCOUNT`` iterations before
they sleep.  Between fastconv's own regions that spin saves a wake-up; but when
the user's code calls a multi-threaded BLAS between fastconv calls, the spinning
Numba worker holds the core the BLAS worker needs, and the user's matmul waits
for a time slice.  libgomp reads the spin count once, when it loads, so the
choice is made once, by ``start_numba_threads``, before fastconv's first kernel
(when the first call picks the CPU backend, ``fastconv._dispatch.backend``;
not at import, so a process that forks before its first call stays fork-safe):

- if a BLAS pool runs more than one thread at that moment (a script without
  ``OPENBLAS_NUM_THREADS=1`` that calls a functional op first): a short spin,
  ``GOMP_SPINCOUNT`` set only while Numba loads libgomp, the environment
  restored at once, so no library loaded later sees it;
- otherwise (BLAS on one thread: the tuned environment, or inside
  ``fastconv.nn``'s fit/evaluate/predict, which limit BLAS first): libgomp's
  default spin, which is what fastconv's back-to-back regions want;
- a user's own ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` wins, and a pool that
  other code started first is left as it is.

Measurements: ``benchmarks/results/default-env-*.md``.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import platform
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numba
import numpy as np
import threadpoolctl

F = TypeVar("F", bound=Callable[..., Any])

# Stop OpenBLAS's idle workers on entry; a switch for measuring the limit alone.
STOP_IDLE_BLAS_WORKERS = True

_lock = threading.Lock()
_active = 0  # blas_limited calls in flight, all Python threads
_restore: list[tuple[Any, int]] = []  # (library controller, count) set by the outermost entry
_pools: list[Any] = []  # BLAS library controllers, cached
_stoppable: list[tuple[Any, Any]] = []  # (controller, blas_thread_shutdown_) of OpenBLAS pthreads pools
_pools_key = -1  # len(sys.modules) when _pools was built

# Long enough to bridge the gaps between the parallel regions of one fastconv
# call, short enough to free the core before the user's next BLAS call
# (benchmarks/results/default-env-*.md compares it with libgomp's default).
NUMBA_OPENMP_SPINCOUNT = "10000"
_USER_SPIN_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_numba_start = ""  # how Numba's pool was started: "" until start_numba_threads ran


# --------------------------------------------------------------------------- the loaded pools


def _controller() -> threadpoolctl.ThreadpoolController:
    return threadpoolctl.ThreadpoolController()


def _shutdown_routine(lib: Any) -> Any:
    if lib.internal_api != "openblas" or getattr(lib, "threading_layer", None) != "pthreads":
        return None
    return getattr(lib.dynlib, "blas_thread_shutdown_", None)


def _blas_pools() -> list[Any]:
    """The BLAS library controllers of the process, cached: scanning the loaded
    libraries costs far more than a fastconv call's bookkeeping should, and a
    new BLAS library only arrives with an import, which grows sys.modules."""
    global _pools, _stoppable, _pools_key
    key = len(sys.modules)
    if key != _pools_key:
        _pools = [lib for lib in _controller().lib_controllers if lib.user_api == "blas"]
        _stoppable = [(lib, f) for lib in _pools if (f := _shutdown_routine(lib)) is not None]
        _pools_key = key
    return _pools


def stop_idle_blas_workers() -> None:
    """Let the idle workers of every multi-threaded OpenBLAS (pthreads) pool exit,
    if this process runs a single Python thread; OpenBLAS restarts them lazily."""
    if not STOP_IDLE_BLAS_WORKERS or threading.active_count() != 1:
        return
    _blas_pools()
    for lib, shutdown in _stoppable:
        if lib.get_num_threads() > 1:
            shutdown()


# --------------------------------------------------------------------------- Numba's pool


def start_numba_threads() -> None:
    """Start Numba's thread pool, once, with a short OpenMP spin (see the module
    docstring); a no-op after the first call."""
    global _numba_start
    if _numba_start:
        return
    with _lock:
        if not _numba_start:
            _numba_start = _start_numba_pool()


def _start_numba_pool() -> str:
    from numba.np.ufunc import parallel

    if parallel._is_initialized:
        return "started before fastconv's first call (its settings stand)"
    user = [v for v in _USER_SPIN_VARS if v in os.environ]
    if user:
        _launch_numba_threads(parallel)
        return "started by fastconv with the environment's " + ", ".join(f"{v}={os.environ[v]}" for v in user)
    if not any((lib.get_num_threads() or 1) > 1 for lib in _blas_pools()):
        _launch_numba_threads(parallel)
        return "started by fastconv with OpenMP's default spin (BLAS on one thread at the start)"
    os.environ["GOMP_SPINCOUNT"] = NUMBA_OPENMP_SPINCOUNT
    try:
        _launch_numba_threads(parallel)
    finally:
        del os.environ["GOMP_SPINCOUNT"]
    return (
        f"started by fastconv with a short spin, GOMP_SPINCOUNT={NUMBA_OPENMP_SPINCOUNT} (OpenMP layer; "
        "multi-threaded BLAS at the start)"
    )


def _launch_numba_threads(parallel: Any) -> None:
    try:
        parallel._launch_threads()
    except Exception:  # noqa: S110 -- the first kernel raises Numba's own error, as it would without fastconv
        pass


# --------------------------------------------------------------------------- the guards


def guarded(fn: F) -> F:
    """Decorator for functions that call no BLAS: stop idle OpenBLAS workers first."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stop_idle_blas_workers()
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _enter() -> None:
    global _active, _restore
    with _lock:
        _active += 1
        if _active > 1:
            return
        restore = []
        for lib in _blas_pools():
            n = lib.get_num_threads()
            if n is not None and n > 1:
                lib.set_num_threads(1)
                restore.append((lib, n))
        _restore = restore
        # after the limit: a count change restarts stopped workers
        if restore and STOP_IDLE_BLAS_WORKERS and threading.active_count() == 1:
            for lib, shutdown in _stoppable:
                if any(lib is r for r, _ in restore):
                    shutdown()


def _exit() -> None:
    global _active, _restore
    with _lock:
        _active -= 1
        if _active:
            return
        for lib, n in _restore:
            lib.set_num_threads(n)
        _restore = []


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """Context: BLAS pools at one thread and OpenBLAS's idle workers stopped;
    every changed count restored on exit (see the module docstring)."""
    _enter()
    try:
        yield
    finally:
        _exit()


def blas_limited(fn: F) -> F:
    """Decorator: run ``fn`` inside ``single_thread_blas()``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _enter()
        try:
            return fn(*args, **kwargs)
        finally:
            _exit()

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- the public knob


def _check_threads(n: Any) -> int:
    limit = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    if isinstance(n, bool):
        raise TypeError(f"n must be a positive int, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be a positive int, got {type(n).__name__} {n!r}") from None
    if not 1 <= n <= limit:
        raise ValueError(
            f"n must be between 1 and {limit} (Numba's NUMBA_NUM_THREADS, fixed when "
            f"Numba starts its thread pool), got {n}"
        )
    return n


def _torch() -> Any:
    """torch if the program already imported it (fastconv never imports it)."""
    return sys.modules.get("torch")


def _counts() -> tuple[int, list[tuple[Any, int]], int | None]:
    """(numba threads, [(BLAS controller, threads)], torch threads or None)."""
    blas = [(lib, lib.get_num_threads()) for lib in _blas_pools()]
    torch = _torch()
    return numba.get_num_threads(), blas, None if torch is None else torch.get_num_threads()


def _apply(numba_n: int, blas: list[tuple[Any, int]], torch_n: int | None) -> None:
    numba.set_num_threads(numba_n)
    for lib, n in blas:
        if n is not None:
            lib.set_num_threads(n)
    torch = _torch()
    if torch is not None and torch_n is not None:
        torch.set_num_threads(torch_n)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads: Numba's (fastconv's CPU kernels; Numba keeps this per
    Python thread), every loaded BLAS library's and, if the program has imported
    torch, torch's intra-op threads.  ``1 <= n <= numba.config.NUMBA_NUM_THREADS``.

    fastconv still runs BLAS on one thread during its own calls (and restores
    ``n`` afterwards); see ``fastconv._threads``.
    """
    n = _check_threads(n)
    _apply(n, [(lib, n) for lib in _blas_pools()], n)


def get_num_threads() -> int:
    """The number of threads fastconv's CPU kernels use (Numba's, for this Python thread)."""
    return numba.get_num_threads()


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """``with fastconv.threads(n):`` -- ``set_num_threads(n)`` inside the block; the
    previous Numba, BLAS and torch counts come back when it ends (also after an
    exception).  Blocks nest."""
    n = _check_threads(n)
    saved = _counts()
    set_num_threads(n)
    try:
        yield
    finally:
        _apply(*saved)


# --------------------------------------------------------------------------- show_config


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _threading_layer() -> str:
    """Numba's threading layer, started (as fastconv's first call would) if no
    parallel region has started it yet."""
    try:
        start_numba_threads()
        return numba.threading_layer()
    except Exception as e:  # the report must print whatever Numba's state
        return f"unknown ({type(e).__name__}: {e})"


def _cuda_line() -> str:
    try:
        from . import cuda

        reason = cuda._unavailable_reason()
    except Exception as e:  # an import failure is itself the answer
        reason = f"{type(e).__name__}: {e}"
    return "available" if reason is None else f"not available ({reason})"


def _pool_lines() -> list[str]:
    lines = []
    for info in threadpoolctl.threadpool_info():
        extra = f", {info['threading_layer']}" if info.get("threading_layer") else ""
        lines.append(
            f"  {info['user_api']:<7} {info['internal_api']} {info.get('version') or '?'}{extra}: "
            f"{info['num_threads']} threads  ({info['filepath']})"
        )
    return lines or ["  (none loaded)"]


def config_lines() -> list[str]:
    """The lines ``show_config`` prints."""
    from ._version import __version__

    torch = _torch()
    lines = [
        f"fastconv {__version__}",
        f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
        f"threadpoolctl {threadpoolctl.__version__}"
        + (f", torch {torch.__version__} (intra-op threads {torch.get_num_threads()})" if torch else ""),
        f"CPU: {_cpu_name()}, {_usable_cpus()} usable of {os.cpu_count()}",
        f"numba threading layer: {_threading_layer()}; threads {numba.get_num_threads()} "
        f"(NUMBA_NUM_THREADS {numba.config.NUMBA_NUM_THREADS})",  # type: ignore[attr-defined]
        f"numba thread pool: {_numba_start or 'not started by fastconv yet'}",
        "thread pools (threadpoolctl):",
        *_pool_lines(),
        "fastconv: stops idle OpenBLAS workers before its kernels"
        + ("" if STOP_IDLE_BLAS_WORKERS else " (off)")
        + "; fastconv.nn runs BLAS on 1 thread during fit/evaluate/predict (counts restored after)",
        f"CUDA: {_cuda_line()}",
    ]
    env = {
        v: os.environ[v]
        for v in sorted(os.environ)
        if v.endswith("_NUM_THREADS")
        or v in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT")
    }
    lines.append("environment: " + (", ".join(f"{k}={v}" for k, v in env.items()) or "no thread variables set"))
    return lines


def show_config(file: Any = None) -> None:
    """Print versions, CPU, Numba's threading layer, every thread pool in effect
    and whether CUDA is available -- the first thing a bug report needs."""
    print("\n".join(config_lines()), file=file if file is not None else sys.stdout)
