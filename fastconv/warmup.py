"""Compile fastconv's CPU kernels ahead of their first use: ``python -m fastconv.warmup``.

    python -m fastconv.warmup                    # float32 and float64, one process per core
    python -m fastconv.warmup --dtype float32 --jobs 2 --quiet

Numba compiles a kernel the first time it meets a new argument type and caches
the machine code on disk (see ``fastconv._cache`` for where).  This command does
those first calls now, in parallel processes, so no later program pays for them.

What to compile is found by calling the public API (``fastconv.conv2d`` and
friends, and a training step of each ``fastconv.nn.zoo`` model) on tiny inputs
for each dtype and algorithm: whatever kernels those calls reach get compiled,
however the CPU backend is organised inside.  Tasks that share kernels run one
after the other (``after``), the others in parallel.  A last pass runs every
selected task in one process and reports any kernel that still compiled
(two processes writing one kernel's cache index at once can drop an entry; that
pass fills it in), so when it reports 0 the cache is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TASKS", "Task", "main", "run_tasks_here", "tasks_for"]

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Task:
    """One group of first calls: ``name`` is ``<dtype>:<op>``; ``after``: tasks whose
    kernels this one reuses, so it starts only when they are cached."""

    name: str
    after: tuple[str, ...] = ()

    @property
    def dtype(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def op(self) -> str:
        return self.name.split(":", 1)[1]


def _rand(shape: tuple[int, ...], dtype: str) -> Any:
    import numpy as np

    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _conv_forward(dtype: str, algorithm: str) -> None:
    import fastconv

    w, b = _rand((8, 3, 3, 3), dtype), _rand((8,), dtype)
    fastconv.conv2d(_rand((2, 3, 9, 9), dtype), w, b, padding=1, algorithm=algorithm)
    fastconv.conv2d(_rand((2, 3, 9, 9), dtype), w, stride=2, padding="same", algorithm=algorithm)
    fastconv.conv2d(_rand((8, 3, 5, 5), dtype), w, algorithm=algorithm)  # small planes: batch-inner
    fastconv.conv2d(_rand((2, 4, 7, 7), dtype), _rand((4, 1, 3, 3), dtype), groups=4, algorithm=algorithm)


def _conv_backward(dtype: str, algorithm: str) -> None:
    import fastconv

    w = _rand((8, 3, 3, 3), dtype)
    for shape, stride, padding in (((2, 3, 9, 9), 1, 1), ((2, 3, 9, 9), 2, "same"), ((8, 3, 5, 5), 1, 0)):
        x = _rand(shape, dtype)
        gy = fastconv.conv2d(x, w, stride=stride, padding=padding, algorithm=algorithm)
        for need_input_grad in (True, False):
            fastconv.conv2d_backward(
                gy, x, w, stride=stride, padding=padding, algorithm=algorithm, need_input_grad=need_input_grad
            )
    x = _rand((2, 4, 7, 7), dtype)
    wg = _rand((4, 1, 3, 3), dtype)
    gy = fastconv.conv2d(x, wg, groups=4, algorithm=algorithm)
    fastconv.conv2d_backward(gy, x, wg, groups=4, algorithm=algorithm)
    # 64 x 64 channels: the pixel tiles (forward) and grad_weight by output-channel blocks
    # (standard and batch-inner layouts); unpadded small planes: grad_x by taps
    for shape, padding in (((2, 64, 6, 6), 1), ((8, 64, 5, 5), 1), ((64, 64, 5, 5), 0)):
        x, w64 = _rand(shape, dtype), _rand((64, 64, 3, 3), dtype)
        gy = fastconv.conv2d(x, w64, padding=padding, algorithm=algorithm)
        fastconv.conv2d_backward(gy, x, w64, padding=padding, algorithm=algorithm)


def _conv_winograd(dtype: str) -> None:
    """Winograd forward and backward, F(4×4, 3×3) and F(2×2, 3×3) (auto runs
    it on deep and wide 3×3 layers)."""
    import fastconv

    w, b = _rand((8, 3, 3, 3), dtype), _rand((8,), dtype)
    for shape, padding in (((2, 3, 9, 9), 1), ((1, 3, 4, 4), 0)):
        x = _rand(shape, dtype)
        gy = fastconv.conv2d(x, w, b, padding=padding, algorithm="winograd")
        fastconv.conv2d_backward(gy, x, w, padding=padding, algorithm="winograd")


def _pool(dtype: str) -> None:
    import fastconv

    x = _rand((2, 3, 12, 12), dtype)
    for kernel_size, stride, padding in ((2, 2, 0), (3, 2, 1), (3, 3, 0), (3, 1, 1)):
        fastconv.max_pool2d(x, kernel_size, stride, padding)
        y, idx = fastconv.max_pool2d(x, kernel_size, stride, padding, return_indices=True)
        fastconv.max_pool2d_backward(y, idx, x.shape)


def _nn_models(dtype: str) -> None:
    """One training step and one prediction of each zoo model (the MNIST example's warm-up)."""
    import numpy as np

    from fastconv.nn import zoo

    rng = np.random.default_rng(0)
    x = rng.random((16, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 16)
    for build in zoo.MODELS.values():
        model, optimizer, _ = build(device="cpu", seed=0)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.train_on_batch(x, y)
        model.predict(x, batch_size=16)


_OPS: dict[str, Callable[[str], None]] = {
    "conv2d-direct": lambda dt: _conv_forward(dt, "direct"),
    "conv2d-backward-direct": lambda dt: _conv_backward(dt, "direct"),
    "conv2d-im2col": lambda dt: _conv_forward(dt, "im2col"),
    "conv2d-backward-im2col": lambda dt: _conv_backward(dt, "im2col"),
    "conv2d-winograd": _conv_winograd,
    "max-pool2d": _pool,
    "nn": _nn_models,
}


def _tasks() -> list[Task]:
    """Every task, longest chains first so the parallel runs start on them."""
    out = []
    for dt in DTYPES:
        out += [
            Task(f"{dt}:conv2d-direct"),
            Task(f"{dt}:max-pool2d"),
            Task(f"{dt}:conv2d-backward-direct", (f"{dt}:conv2d-direct",)),
            Task(f"{dt}:conv2d-im2col", (f"{dt}:conv2d-direct",)),
            Task(f"{dt}:conv2d-backward-im2col", (f"{dt}:conv2d-backward-direct",)),
            Task(f"{dt}:conv2d-winograd", (f"{dt}:conv2d-backward-direct",)),
        ]
    ops = ("conv2d-direct", "max-pool2d", "conv2d-backward-direct", "conv2d-im2col", "conv2d-backward-im2col")
    out.append(Task("float32:nn", tuple(f"float32:{op}" for op in ops)))
    return out


TASKS: tuple[Task, ...] = tuple(_tasks())


def tasks_for(dtypes: tuple[str, ...]) -> list[Task]:
    """The tasks of the given dtypes, in scheduling order (``after`` restricted to them)."""
    chosen = [t for t in TASKS if t.dtype in dtypes]
    names = {t.name for t in chosen}
    return [Task(t.name, tuple(a for a in t.after if a in names)) for t in chosen]


def _compile_counter() -> list[str]:
    """A list that collects the name of every fastconv kernel Numba compiles
    from now on (Numba's compile event fires only on a cache miss)."""
    from numba.core import event

    compiled: list[str] = []

    class _Count(event.Listener):
        def on_start(self, ev: Any) -> None:
            fn = getattr(ev.data.get("dispatcher"), "py_func", None)
            if fn is not None and (fn.__module__ or "").startswith("fastconv."):
                compiled.append(f"{fn.__module__}.{fn.__qualname__}")

        def on_end(self, ev: Any) -> None:
            pass

    event.register("numba:compile", _Count())
    return compiled


def run_tasks_here(names: list[str]) -> dict[str, Any]:
    """Run tasks in this process; returns {"seconds", "compiled": [kernel names]}."""
    import fastconv.cpu  # noqa: F401  (installs the cache locators before any kernel module)

    compiled = _compile_counter()
    t0 = time.perf_counter()
    for name in names:
        task = Task(name)
        _OPS[task.op](task.dtype)
    return {"seconds": time.perf_counter() - t0, "compiled": compiled}


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["FASTCONV_COMPILE_NOTICE"] = "0"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def _run_child(names: list[str]) -> dict[str, Any]:
    """Run tasks in a fresh interpreter; raises RuntimeError with its stderr if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fastconv.warmup", "--run-here", ",".join(names)],
        env=_child_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"warm-up task {', '.join(names)} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - t0
    return result


def _schedule(tasks: list[Task], jobs: int, report: Callable[[Task, dict[str, Any]], None]) -> None:
    """Run each task in its own process, at most ``jobs`` at once, each after its ``after`` tasks."""
    done: set[str] = set()
    pending = list(tasks)
    running: dict[Future, Task] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for task in [t for t in pending if set(t.after) <= done][: jobs - len(running)]:
                pending.remove(task)
                running[pool.submit(_run_child, [task.name])] = task
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                task = running.pop(fut)
                report(task, fut.result())
                done.add(task.name)


def warm_up(dtypes: tuple[str, ...] = DTYPES, jobs: int | None = None, quiet: bool = False) -> int:
    """Compile the kernels of ``dtypes``; returns how many kernels the final check still had to compile."""
    tasks = tasks_for(dtypes)
    jobs = max(1, jobs or os.cpu_count() or 1)
    say = (lambda *a: None) if quiet else (lambda msg: print(msg, flush=True))
    say(
        f"fastconv.warmup: compiling the CPU kernels for {', '.join(dtypes)} "
        f"({len(tasks)} tasks, {jobs} processes; each kernel is cached once compiled)"
    )
    t0 = time.perf_counter()
    count = [0]

    def report(task: Task, res: dict[str, Any]) -> None:
        count[0] += 1
        n = len(res["compiled"])
        what = f"{n} kernel{'s' if n != 1 else ''} compiled" if n else "all cached"
        say(f"  [{count[0]:>2}/{len(tasks)}] {task.name:<32} {res['wall']:6.1f} s  ({what})")

    _schedule(tasks, jobs, report)
    check = _run_child([t.name for t in tasks])
    missed = len(check["compiled"])
    say(
        f"fastconv.warmup: done in {time.perf_counter() - t0:.1f} s; check: "
        + (
            "every kernel loads from the cache"
            if not missed
            else f"{missed} kernels were missing and are now compiled ({', '.join(sorted(set(check['compiled'])))})"
        )
    )
    return missed


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m fastconv.warmup", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=(*DTYPES, "all"), default="all", help="default: all")
    ap.add_argument("--jobs", type=int, default=None, help="parallel processes (default: the CPU count)")
    ap.add_argument("--quiet", action="store_true", help="print nothing unless something fails")
    ap.add_argument("--run-here", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.run_here is not None:
        print(json.dumps(run_tasks_here(args.run_here.split(","))))
        return 0
    dtypes = DTYPES if args.dtype == "all" else (args.dtype,)
    try:
        warm_up(dtypes, args.jobs, args.quiet)
    except RuntimeError as exc:
        print(f"fastconv.warmup: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
