"""Kernel launches, device allocations and host copies per MNIST training step on CUDA.

    NUMBA_ENABLE_CUDASIM=1 python benchmarks/cuda_step_counts.py          # prints the table
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/cuda_step_counts.py --out benchmarks/results/cuda-step-counts.md

Counted in numba-cuda's simulator (no GPU needed; the counts are those a GPU
would see: the same host code issues the same launches and allocations) by
spying on numba itself, so nothing can bypass the count: every kernel
configuration ``kernel[grid, block, stream]`` is a launch; every
``cuda.device_array``/``device_array_like``/``to_device`` is a device
allocation (fastconv's cache of device buffers allocates through them too:
a buffer reused from the cache is not counted); ``copy_to_device`` and
``copy_to_host`` are host<->device copies.  A step is one ``train_on_batch``
of the Keras-book convnet (``fastconv.nn.zoo.keras_mnist_convnet``, batch 64)
(the first one, and one after two steps that fill the allocation cache), and a
``fit`` epoch is reported per step as well (with the device-side loss
accumulation: one device-to-host copy per epoch).  ``benchmarks/cuda_static.py``
runs this script (in a simulator subprocess) and includes the table.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class Counts:
    """What one region of host code asked of the device."""

    launches: int = 0
    allocations: int = 0
    to_device: int = 0
    to_host: int = 0
    kernels: collections.Counter = field(default_factory=collections.Counter)

    def per(self, steps: int) -> "Counts":
        return Counts(
            self.launches // steps, self.allocations // steps, self.to_device // steps, self.to_host // steps,
            collections.Counter({k: v // steps for k, v in self.kernels.items()}),
        )


@contextlib.contextmanager
def spy(dry: bool = False) -> Iterator[Counts]:
    """Count launches, allocations and copies made inside the block (simulator only).

    ``dry``: kernels are configured (counted) but their bodies do not run, so a
    batch-64 step takes a moment instead of minutes; the host code, and so the
    counts, are the same (nothing on fastconv's host side branches on the values
    a kernel computes, except what comes back through ``copy_to_host``)."""
    from numba import cuda
    from numba.cuda.simulator import kernel as sim_kernel
    from numba.cuda.simulator.cudadrv import devicearray as sim_arrays

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
        raise RuntimeError("the step counts are taken in the simulator: set NUMBA_ENABLE_CUDASIM=1")
    counts = Counts()
    saved: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, wrap: Any) -> None:
        original = getattr(owner, name)
        saved.append((owner, name, original))
        setattr(owner, name, wrap(original))

    def allocation(original: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            counts.allocations += 1
            return original(*args, **kwargs)

        return counted

    def launch(original: Any) -> Any:
        def counted(self: Any, configuration: Any) -> Any:
            counts.launches += 1
            counts.kernels[getattr(self.fn, "__name__", "?")] += 1
            configured = original(self, configuration)
            return _Skipped(configured) if dry else configured

        return counted

    def copy(attr: str) -> Any:
        def wrap(original: Any) -> Any:
            def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
                setattr(counts, attr, getattr(counts, attr) + 1)
                return original(self, *args, **kwargs)

            return counted

        return wrap

    for name in ("device_array", "device_array_like"):
        patch(cuda, name, allocation)
    # to_device allocates and copies: counted as both
    patch(cuda, "to_device", lambda original: copy("to_device")(allocation(original)))
    patch(sim_kernel.FakeCUDAKernel, "__getitem__", launch)
    patch(sim_arrays.FakeCUDAArray, "copy_to_device", copy("to_device"))
    patch(sim_arrays.FakeCUDAArray, "copy_to_host", copy("to_host"))
    try:
        yield counts
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


@contextlib.contextmanager
def reference_gpu_plan() -> Iterator[None]:
    """Launch decisions (split-K, tiles) as on the reference GPU, not the simulator's
    small tiles: ``fastconv.cuda._launch_plan`` loaded again with ``SIM`` off, its
    names swapped into the module the kernels' host code reads (``lp.igemm(...)``)
    for the duration.  Only for ``spy(dry=True)``: the simulator's kernels are compiled
    for its own tile sizes and must not run under these plans."""
    import importlib.util

    from fastconv.cuda import _config
    from fastconv.cuda import _launch_plan as lp

    spec = importlib.util.find_spec("fastconv.cuda._launch_plan")
    assert spec is not None and spec.loader is not None
    gpu = importlib.util.module_from_spec(spec)
    sim, _config.SIM = _config.SIM, False
    try:
        spec.loader.exec_module(gpu)
    finally:
        _config.SIM = sim
    names = [n for n in vars(gpu) if not n.startswith("_") and n not in ("annotations", "NamedTuple", "ConvGeom")]
    saved = {n: getattr(lp, n) for n in names if hasattr(lp, n)}
    for n in names:
        setattr(lp, n, getattr(gpu, n))
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(lp, n, v)


class _Skipped:
    """A configured simulator kernel whose launch does nothing (``spy(dry=True)``)."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def __call__(self, *args: Any) -> None:
        return None


def mnist_batch(batch: int = 64, seed: int = 0) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (batch, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, batch)


def keras_convnet() -> Any:
    from fastconv.nn import zoo

    model, opt, _ = zoo.keras_mnist_convnet(device="cuda", seed=0)
    model.compile(opt, "sparse_categorical_crossentropy")
    return model


def _plan(dry: bool) -> Any:
    """The reference GPU's launch decisions for a dry count, the simulator's otherwise."""
    return reference_gpu_plan() if dry else contextlib.nullcontext()


def count_train_on_batch(warm: int = 1, steps: int = 1, batch: int = 64, dry: bool = True) -> Counts:
    """Counts per ``train_on_batch`` step of the Keras-book convnet after ``warm`` steps."""
    model = keras_convnet()
    x, y = mnist_batch(batch)
    with _plan(dry), spy(dry):
        for _ in range(warm):
            model.train_on_batch(x, y)
    with _plan(dry), spy(dry) as counts:
        for _ in range(steps):
            model.train_on_batch(x, y)
    return counts.per(steps)


def count_fit(batches: int = 3, batch: int = 64, dry: bool = True) -> Counts:
    """Counts per step of a one-epoch ``fit`` of ``batches`` steps (a warm epoch first),
    the epoch's start and end included (their cost is spread over the steps)."""
    model = keras_convnet()
    x, y = mnist_batch(batch * batches)
    with _plan(dry), spy(dry):
        model.fit(x, y, epochs=1, batch_size=batch, verbose=0, seed=0)
    with _plan(dry), spy(dry) as counts:
        model.fit(x, y, epochs=1, batch_size=batch, verbose=0, seed=0, shuffle=False)
    return Counts(
        counts.launches / batches, counts.allocations / batches, counts.to_device / batches,  # type: ignore[arg-type]
        counts.to_host / batches, counts.kernels,  # type: ignore[arg-type]
    )


# Issue 16's baseline (a178f65's host code, counted the same way) and its goal: halve both.
BEFORE_LAUNCHES, BEFORE_ALLOCATIONS = 51, 35


def to_markdown(first: Counts, step: Counts, fit: Counts, batches: int) -> str:
    goal_l, goal_a = BEFORE_LAUNCHES // 2, BEFORE_ALLOCATIONS // 2
    verdict = (
        f"- Goal (halve {BEFORE_LAUNCHES} launches / {BEFORE_ALLOCATIONS} allocations per step: <= {goal_l} / "
        f"<= {goal_a}): launches {'met' if step.launches <= goal_l else 'missed'} ({step.launches}), "
        f"allocations {'met' if step.allocations <= goal_a else 'missed'} ({step.allocations} in the steady "
        f"state; {first.allocations} on the first step, while the cache fills)."
    )
    rows = [
        verdict,
        "",
        "| measure | launches | device allocations | host->device copies | device->host copies |",
        "|---|---:|---:|---:|---:|",
        f"| `train_on_batch`, first step | {first.launches} | {first.allocations} | {first.to_device} | "
        f"{first.to_host} |",
        f"| `train_on_batch`, steady state | {step.launches} | {step.allocations} | {step.to_device} | "
        f"{step.to_host} |",
        f"| `fit`, per step of a {batches}-step epoch | {fit.launches:.1f} | {fit.allocations:.1f} | "
        f"{fit.to_device:.1f} | {fit.to_host:.2f} |",
    ]
    kernels = ", ".join(f"{k} {v}" for k, v in sorted(step.kernels.items(), key=lambda kv: (-kv[1], kv[0])))
    return "\n".join(rows) + f"\n\nLaunches of one steady `train_on_batch` step by kernel: {kernels}.\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    ap.add_argument("--batches", type=int, default=3, help="steps of the counted fit epoch")
    args = ap.parse_args(argv)
    import warnings

    with warnings.catch_warnings():  # a dry run's outputs are uninitialised memory: NaN losses
        warnings.simplefilter("ignore", RuntimeWarning)
        first, step = count_train_on_batch(warm=0), count_train_on_batch(warm=2)
        fit = count_fit(args.batches)
    text = to_markdown(first, step, fit, args.batches)
    print(text)
    if args.out is not None:
        from benchmarks._files import write_atomic

        write_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
