"""fastconv where users are: a fresh process whose environment sets no thread variable.

Every measurement runs in its own subprocess, started from an environment
cleared of thread variables (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, ...): the
"default" process, as a user's own script gets it, next to the "tuned" one
(OPENBLAS_NUM_THREADS=1, what the scripts set).  Variants, interleaved
A/B/A/B over the repeats, medians reported:

- tuned:            OPENBLAS_NUM_THREADS=1, fastconv as shipped
- default:          no thread variable, fastconv as shipped
- default-limit:    no thread variable, fastconv's guard only limits BLAS to one
                    thread (does not stop the idle OpenBLAS workers)
- default-unguarded: no thread variable, fastconv's guard switched off (fastconv
                    before issue 17)
- tuned-longspin:   tuned, with libgomp's default spin (GOMP_SPINCOUNT=300000)
                    instead of the short one fastconv starts Numba's pool with
- default-workqueue, tuned-workqueue: as default / tuned, with Numba's workqueue
                    threading layer instead of OpenMP (not in the default set:
                    ``--variants`` picks them)

Cases:
- mnist: the Keras-book convnet (``fastconv.nn.zoo.keras_mnist_convnet``),
  RMSprop, batch 64: one ``fit`` epoch and one ``evaluate`` over ``--images``
  images (real MNIST when ``fastconv.datasets.mnist`` finds it offline, else
  synthetic), after a warm-up fit that loads the JIT cache.
- loop: ``fastconv.conv2d`` (64,32,13,13) -> 64 3x3 alternating with a user's
  NumPy matmul (256x256 float32) -- the fastconv time, the matmul time and the
  whole loop.
- spin: the CPU time OpenBLAS's workers burn in the 150 ms after a user's 256x256
  matmul: left alone, with BLAS set to one thread (does it stop them?), and with
  ``stop_idle_blas_workers`` (the guards' way); independent of the variant.
- guard: what the guards cost per call, with no BLAS call in between: the
  functional ops' (``stop_idle_blas_workers``) and fastconv.nn's (limit + restore).

    python -m benchmarks.default_env                  # writes benchmarks/results/default-env-<cpu>.md/.json
    python -m benchmarks.default_env --images 6400 --repeats 3 --variants tuned,default
    python -m benchmarks.report --default-env         # the same, from the report
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks._files import write_atomic

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results"
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS",
               "OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
               "KMP_BLOCKTIME", "NUMBA_THREADING_LAYER")
VARIANTS = {  # name: (extra environment, guard mode)
    "tuned": ({"OPENBLAS_NUM_THREADS": "1"}, "on"),
    "default": ({}, "on"),
    "default-limit": ({}, "limit"),
    "default-unguarded": ({}, "off"),
    "tuned-longspin": ({"OPENBLAS_NUM_THREADS": "1", "GOMP_SPINCOUNT": "300000"}, "on"),
    "default-workqueue": ({"NUMBA_THREADING_LAYER": "workqueue"}, "on"),
    "tuned-workqueue": ({"OPENBLAS_NUM_THREADS": "1", "NUMBA_THREADING_LAYER": "workqueue"}, "on"),
}
DEFAULT_VARIANTS = ("tuned", "default", "default-limit", "default-unguarded")
CASES = ("mnist", "loop", "guard", "spin")


# --------------------------------------------------------------------------- the child process


def _set_guard(mode: str) -> None:
    from fastconv import _threads

    if mode == "off":
        _threads._enter = _threads._exit = lambda: None
    if mode in ("off", "limit"):
        _threads.STOP_IDLE_BLAS_WORKERS = False


def _mnist_data(images: int) -> tuple[Any, Any, str]:
    import numpy as np

    try:
        from fastconv.datasets import mnist

        (x, y), _ = mnist.load_data()
        source = "MNIST"
    except Exception:  # no local copy: the timing does not depend on pixel values
        rng = np.random.default_rng(0)
        x, y, source = (rng.random((images, 28, 28)) * 255).astype(np.uint8), rng.integers(0, 10, images), \
            "synthetic"
    x = (x[:images] / 255.0).astype(np.float32)[..., None]
    return x, y[:images].astype(np.int64), source


def child_mnist(images: int) -> dict[str, Any]:
    from fastconv.nn.zoo import keras_mnist_convnet

    x, y, source = _mnist_data(images)
    model, optimizer, batch = keras_mnist_convnet(seed=0)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:256], y[:256], epochs=1, batch_size=batch, verbose=0, seed=0)  # JIT cache, buffers
    c0, t0 = time.process_time(), time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=batch, verbose=0, seed=0)
    c1, t1 = time.process_time(), time.perf_counter()
    model.evaluate(x, y, batch_size=batch)
    t2 = time.perf_counter()
    return {"fit_s": t1 - t0, "fit_cpu_s": c1 - c0, "evaluate_s": t2 - t1, "images": len(x), "data": source}


def child_loop(iters: int) -> dict[str, Any]:
    import numpy as np

    import fastconv

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32, 13, 13), dtype=np.float32)
    w = rng.standard_normal((64, 32, 3, 3), dtype=np.float32)
    a = rng.standard_normal((256, 256), dtype=np.float32)
    conv, mm = [], []
    c0 = 0.0
    for i in range(iters + 10):
        if i == 10:
            c0 = time.process_time()
        t0 = time.perf_counter()
        fastconv.conv2d(x, w)
        t1 = time.perf_counter()
        a @ a
        t2 = time.perf_counter()
        if i >= 10:
            conv.append(t1 - t0)
            mm.append(t2 - t1)
    return {"conv_s": statistics.median(conv), "matmul_s": statistics.median(mm), "loop_s": sum(conv) + sum(mm),
            "loop_cpu_s": time.process_time() - c0, "iters": iters}


def child_guard(iters: int = 2000) -> dict[str, Any]:
    import numpy as np

    from fastconv import _threads

    a = np.ones((256, 256), np.float32)
    a @ a
    def cost(fn: Any) -> float:
        ts = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def limited() -> None:
        _threads._enter()
        _threads._exit()

    return {"op_guard_s": cost(_threads.stop_idle_blas_workers), "nn_guard_s": cost(limited)}


def _other_threads_cpu_s() -> float:
    """CPU time of this process's threads other than the calling one, exited ones included."""
    return time.process_time() - time.thread_time()


def child_spin(trials: int = 5, window: float = 0.15) -> dict[str, Any]:
    """CPU time that BLAS worker threads burn in the ``window`` after a user's matmul,
    when nothing is done, when BLAS is limited to one thread, when fastconv stops them."""
    import numpy as np

    from fastconv import _threads

    a = np.ones((256, 256), np.float32)
    libs = _threads._blas_pools()
    actions = {"spin_nothing_s": lambda: None,
               "spin_limit_s": lambda: [lib.set_num_threads(1) for lib in libs],
               "spin_stop_s": _threads.stop_idle_blas_workers}
    counts = [lib.get_num_threads() for lib in libs]
    got: dict[str, list[float]] = {k: [] for k in actions}
    for _ in range(trials):
        for name, action in actions.items():
            a @ a
            c0 = _other_threads_cpu_s()
            action()
            time.sleep(window)
            got[name].append(max(0.0, _other_threads_cpu_s() - c0))
            for lib, n in zip(libs, counts):
                lib.set_num_threads(n)
            time.sleep(0.3)  # let the restarted workers fall asleep
    return {k: statistics.median(v) for k, v in got.items()}


def child(case: str, mode: str, images: int, iters: int) -> dict[str, Any]:
    _set_guard(mode)
    if case == "mnist":
        return child_mnist(images)
    if case == "loop":
        return child_loop(iters)
    if case == "spin":
        return child_spin()
    return child_guard()


# --------------------------------------------------------------------------- the parent


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """os.environ without thread variables, plus ``extra``; fastconv importable, no downloads."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["FASTCONV_OFFLINE"] = "1"
    env.update(extra)
    return env


@contextlib.contextmanager
def _locked(path: Path | None) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (if given): one timing run at a time on a shared machine."""
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_child(case: str, variant: str, images: int, iters: int, timeout: float,
              lock: Path | None = None) -> dict[str, Any]:
    extra, mode = VARIANTS[variant]
    cmd = [sys.executable, "-m", "benchmarks.default_env", "--child", case, "--mode", mode,
           "--images", str(images), "--loop-iters", str(iters)]
    with _locked(lock):
            out = subprocess.run(cmd, env=clean_env(extra), cwd=ROOT, capture_output=True, text=True,
                             timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{case}/{variant} child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


METRICS = {"mnist": ("fit_s", "evaluate_s", "fit_cpu_s"), "loop": ("conv_s", "matmul_s", "loop_s", "loop_cpu_s"), "guard": ("op_guard_s", "nn_guard_s"),
           "spin": ("spin_nothing_s", "spin_limit_s", "spin_stop_s")}


def measure(cases: Sequence[str], variants: Sequence[str], repeats: int, images: int, iters: int,
            log: Any = None, timeout: float = 900.0, lock: Path | None = None) -> list[dict[str, Any]]:
    """Rows {case, variant, metric, median_s, samples_s, vs_tuned, ...}: every
    (case, variant) ``repeats`` times, variants interleaved within each repeat."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in range(repeats):
        for case in cases:
            for variant in variants:
                res = run_child(case, variant, images, iters, timeout, lock)
                samples.setdefault((case, variant), []).append(res)
                log(f"[{rep + 1}/{repeats}] {case:<5} {variant:<18} " +
                    " ".join(f"{k} {res[k]:.4g}" for k in METRICS[case]))
    rows = []
    for (case, variant), got in samples.items():
        for metric in METRICS[case]:
            values = [g[metric] for g in got]
            rows.append({"case": case, "variant": variant, "metric": metric, "median_s": statistics.median(values),
                         "samples_s": values, "info": {k: v for k, v in got[0].items() if k not in METRICS[case]}})
    tuned = {(r["case"], r["metric"]): r["median_s"] for r in rows if r["variant"] == "tuned"}
    for r in rows:
        base = tuned.get((r["case"], r["metric"]))
        r["vs_tuned"] = r["median_s"] / base if base else None
    return rows


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    from .machine import cpu_model, cpu_slug, usable_cpus

    cpu, usable = cpu_model(), usable_cpus()
    return {"cpu_model": cpu, "usable_cpus": usable, "kind": cpu_slug(cpu, usable),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _fmt(s: float, metric: str) -> str:
    if metric.startswith("spin"):
        return f"{s * 1e3:.1f} ms CPU"
    return f"{s * 1e6:.1f} µs" if metric.endswith("guard_s") else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def format_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# fastconv in the default environment — {meta['machine']['cpu_model']}", "",
             f"Measured {meta['date']} with `{meta['command']}` on {meta['machine']['cpu_model']} "
             f"({meta['machine']['usable_cpus']} usable CPUs). Load average before {meta['load_start']}, "
             f"after {meta['load_end']}.", ""]
    lines += [f"- {n}" for n in meta["notes"]]
    lines += ["", "Each sample is a fresh process whose environment has no thread variable ("
              + ", ".join(THREAD_VARS[:5]) + ", ...); *tuned* adds `OPENBLAS_NUM_THREADS=1`. "
              f"Median of {meta['repeats']} samples per cell, variants interleaved; "
              "ratio = time / tuned time, mnist and loop rows (≤ 1.10 is the issue's goal). *fit_cpu* and *loop_cpu* are the "
              "process's CPU time (all its threads) over the same span: the cores it kept busy, spinning "
              "included, which a shared machine's load distorts less than wall time.", "",
              "| case | metric | " + " | ".join(meta["variants"]) + " |",
              "|---|---|" + "---:|" * len(meta["variants"])]
    by = {(r["case"], r["metric"], r["variant"]): r for r in rows}
    for case in meta["cases"]:
        for metric in METRICS[case]:
            cells = []
            for v in meta["variants"]:
                r = by.get((case, metric, v))
                timed = case in ("mnist", "loop") and v != "tuned"
                ratio = f" ({r['vs_tuned']:.2f}×)" if timed and r is not None and r["vs_tuned"] else ""
                cells.append("—" if r is None else _fmt(r["median_s"], metric) + ratio)
            lines.append(f"| {case} | {metric[:-2]} | " + " | ".join(cells) + " |")
    info = {r["case"]: r["info"] for r in rows}
    if "mnist" in info:
        lines += ["", f"mnist: {info['mnist'].get('images')} images ({info['mnist'].get('data')}), batch 64, "
                      "one fit epoch and one evaluate pass after a 256-image warm-up fit."]
    if "loop" in info:
        lines += [f"loop: {info['loop'].get('iters')} iterations of conv2d (64,32,13,13)->64 3x3 then a 256x256 "
                  "float32 matmul; conv and matmul are per-iteration medians, loop the total."]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.default_env", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"comma-separated subset of {','.join(VARIANTS)} (default {','.join(DEFAULT_VARIANTS)})")
    ap.add_argument("--repeats", type=int, default=3, help="samples per cell (default 3)")
    ap.add_argument("--images", type=int, default=6400, help="MNIST images per epoch (default 6400)")
    ap.add_argument("--loop-iters", type=int, default=200, help="conv+matmul iterations (default 200)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default benchmarks/results)")
    ap.add_argument("--lock", type=Path, default=None,
                    help="flock this file around each measured process (shared machines: "
                         "/tmp/fastconv-bench.lock, as benchmarks/README.md says)")
    ap.add_argument("--note", action="append", default=[], help="a line for the report (repeatable)")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="on", choices=("on", "limit", "off"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    args.variants = [v for v in args.variants.split(",") if v]
    for name, got, allowed in (("--cases", args.cases, CASES), ("--variants", args.variants, VARIANTS)):
        bad = [g for g in got if g not in allowed]
        if bad or not got:
            ap.error(f"{name} takes a comma-separated subset of {','.join(allowed)}; got {','.join(got) or 'none'}")
    if args.repeats < 1 or args.images < 64 or args.loop_iters < 1:
        ap.error("--repeats and --loop-iters must be >= 1, --images >= 64")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.mode, args.images, args.loop_iters)))
        return 0
    if "tuned" not in args.variants:
        args.variants.insert(0, "tuned")
    m = machine()
    start = m["loadavg"]
    rows = measure(args.cases, args.variants, args.repeats, args.images, args.loop_iters, lock=args.lock)
    meta = {"machine": m, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python -m benchmarks.default_env " + " ".join(sys.argv[1:] if argv is None else argv),
            "load_start": start, "load_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "repeats": args.repeats, "variants": args.variants, "cases": args.cases, "notes": args.note}
    text = format_markdown(rows, meta)
    print(text)
    stem = args.out / f"default-env-{m['kind']}"
    write_atomic(stem.with_suffix(".md"), text)
    write_atomic(stem.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {stem}.md, {stem}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
