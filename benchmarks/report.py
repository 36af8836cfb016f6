"""Side-by-side benchmark report: ``python -m benchmarks.report``.

One process, one run: measures the machine's ceilings (SGEMM GFLOP/s by
OpenBLAS and by torch.matmul, copy GB/s), times the standard shape set
(``benchmarks/shapes.py``) for every implementation (``benchmarks/impls/``:
fastconv "auto" and each forced algorithm, torch, NumPy/SciPy baselines),
interleaved with rotated inputs through the one timing harness
(``benchmarks/_timing.py``), every output checked once against the float64
reference; the MNIST convnet's training step and epoch-equivalent; then the
optional sections.  Prints Markdown and writes ``<out>/<cpu-slug>.md``,
``.json`` and ``.png``, the file name naming the CPU model.

Optional sections (``SECTIONS``): each is an on/off option of its own
(``--latency`` / ``--no-latency``), runs after the timings, stores its JSON under
``result["sections"][name]`` and adds one Markdown section.  To add one, write
``run(args, log) -> JSON-able`` and ``format(data) -> Markdown`` in your module
and append a ``Section`` to ``SECTIONS`` below.

Thread counts must be fixed before NumPy, Numba or torch are imported, so this
module imports them only inside functions, after ``configure_threads``.
See ``benchmarks/README.md`` for the options and what every column means.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks._files import write_atomic
from benchmarks.threads import configure_threads

SCHEMA = "fastconv-bench/2"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"
FAMILIES = ("conv", "pool", "convt", "avgpool", "unpool", "mnist")  # convt, avgpool, unpool: issue 15's ops
ROW_KEYS = ("family", "op", "case", "shape", "impl", "device", "algorithm", "status", "reason", "median_s",
            "min_s", "samples_s", "loops", "first_call_s", "rel_err", "work", "metric", "throughput",
            "pct_ceiling", "vs_torch", "goal", "misses_goal")


@dataclass(frozen=True)
class Section:
    """An optional part of the report (see the module docstring)."""

    name: str  # the option: --<name> / --no-<name>; the key under result["sections"]
    title: str  # its Markdown heading
    help: str
    run: Callable[[argparse.Namespace, Callable[[str], None]], Any]
    format: Callable[[Any], str]
    default: bool = True  # on by default (always off with --quick)


def _latency_run(args: argparse.Namespace, log: Callable[[str], None]) -> Any:
    from benchmarks import first_call

    return first_call.section_run(args, log)


def _latency_format(data: Any) -> str:
    from benchmarks import first_call

    return first_call.format_latency(data)


SECTIONS: list[Section] = [
    Section("latency", "First-call latency (fresh processes)",
            "import + first call of each op in fresh processes, cold and warm numba cache",
            _latency_run, _latency_format),
]


# --------------------------------------------------------------------------- rows


def _row(**kw: Any) -> dict[str, Any]:
    row = dict.fromkeys(ROW_KEYS)
    row.update(kw)
    return row


def _finish_rows(rows: list[dict[str, Any]], ceiling: float | None, use_min: bool = False) -> None:
    """Fill throughput, % of ceiling, time / torch and the goal mark for one group's rows.

    ``use_min``: the figure is the fastest sample instead of the median (--cpu-time)."""
    from benchmarks.goals import mark_goal
    from benchmarks.impls import BASELINE

    def figure(r: dict[str, Any]) -> float:
        return r["min_s"] if use_min and r.get("min_s") else r["median_s"]

    figures = {(r["device"], r["impl"]): figure(r) for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        r["throughput"] = r["work"] / figure(r) / 1e9
        # the measured ceilings are the CPU's; GPU rows have their own report (gpu_bench.py)
        r["pct_ceiling"] = 100.0 * r["throughput"] / ceiling if ceiling and r["device"] == "cpu" else None
        t = figures.get((r["device"], BASELINE[r["device"]]))
        r["vs_torch"] = figure(r) / t if t else None
        mark_goal(r, figures, figure(r))


def _bind_group(op: str, case: Any, impls: Sequence[Any], inputs: Any, base: dict[str, Any], clock: Any,
                log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Warm up and check every implementation once -> (rows, calls, timings)."""
    from benchmarks import check
    from benchmarks._timing import Timing, warm_up
    from benchmarks.goals import row_goal
    from benchmarks.impls import HEADLINE

    ref = None
    rows, calls, timings = [], {}, {}
    for impl in impls:
        if op not in impl.fns:
            continue
        info = dict(base, impl=impl.name, device=impl.device, algorithm=impl.algorithm)
        reason = impl.skip_reason(op, case)
        if reason:
            rows.append(_row(**info, status="skipped", reason=reason))
            continue
        try:
            call = impl.bind(op, case, inputs)
            out, first, warm = warm_up(call, len(inputs), clock)
            if ref is None:
                ref = check.expected(op, case, inputs[0])
            err = check.check(op, impl.host(out), ref)
        except AssertionError as exc:
            rows.append(_row(**info, status="wrong", reason=str(exc)))
            log(f"  {op:13s} {case.name:15s} {impl.name:21s} WRONG: {exc}")
            continue
        except Exception as exc:  # a kernel under construction must not stop the report
            rows.append(_row(**info, status="error", reason=f"{type(exc).__name__}: {exc}"[:300]))
            log(f"  {op:13s} {case.name:15s} {impl.name:21s} ERROR: {type(exc).__name__}: {exc}")
            continue
        calls[impl.name] = call
        timings[impl.name] = Timing(first, warm)
        goal = row_goal(op, case) if impl.name in HEADLINE.values() else None
        rows.append(_row(**info, status="ok", rel_err=err, goal=goal))
    return rows, calls, timings


def bench_group(family: str, op: str, case: Any, impls: Sequence[Any], repeats: int, seed: int,
                ceiling: float | None, log: Callable[[str], None], cpu_time: bool = False) -> list[dict[str, Any]]:
    """Time every implementation of ``op`` on ``case`` (interleaved) -> table rows."""
    import numpy as np

    from benchmarks._timing import interleave
    from benchmarks.impls import BASELINE
    from benchmarks.impls.fastconv import auto_choice
    from benchmarks.inputs import make_inputs
    from benchmarks.shapes import CONV_OPS, op_work

    is_conv = op in CONV_OPS
    work, metric = op_work(case, op)
    base = dict(family=family, op=op, case=case.name, shape=case.label, work=work, metric=metric)
    clock = time.process_time if cpu_time else time.perf_counter
    inputs = make_inputs(op, case, np.random.default_rng(seed))
    rows, calls, timings = _bind_group(op, case, impls, inputs, base, clock, log)
    interleave(calls, timings, len(inputs), repeats, min_sample_s=0.0 if repeats == 1 else 0.02, clock=clock)
    for r in rows:
        t = timings.get(r["impl"])
        if t is not None and r["status"] == "ok":
            r.update(median_s=t.median_s, min_s=t.min_s, samples_s=t.samples, loops=t.loops,
                     first_call_s=t.first_call_s)
            if is_conv and r["algorithm"] == "auto" and r["device"] == "cpu":
                r["auto_choice"] = auto_choice(case, op)
    _finish_rows(rows, ceiling, use_min=cpu_time)
    for r in rows:
        if r["status"] == "ok":
            vs = f"{r['vs_torch']:.2f}x torch" if r["vs_torch"] else ""
            if r.get("goal_vs") and r["goal_vs"] != BASELINE[r["device"]]:
                vs += f", {r['goal_ratio']:.2f}x {r['goal_vs']}"
            log(f"  {op:13s} {case.name:15s} {r['impl']:21s} {r['median_s'] * 1e3:10.3f} ms "
                f"{r['throughput']:8.2f} {r['metric']} {vs}{'  MISSES GOAL' if r.get('misses_goal') else ''}")
    return rows


def bench_mnist(case: Any, repeats: int, seed: int, ceiling: float | None, log: Any,
                names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows for the MNIST training step and epoch-equivalent of every implementation."""
    import numpy as np

    from benchmarks._timing import Timing, interleave
    from benchmarks.mnist_runner import MNIST_IMPLS, MnistRunner, mnist_data
    from benchmarks.shapes import mnist_step_flops

    x, y = mnist_data(case, np.random.default_rng(seed))
    images = case.batch * case.steps
    step_flops = mnist_step_flops(case.batch)
    step_rows, epoch_rows = [], []
    runners, step_t, epoch_t = {}, {}, {}
    for name in names or MNIST_IMPLS:
        device = "gpu" if name in ("fastconv-cuda", "cudnn-torch") else "cpu"
        base = dict(family="mnist", case=case.name, shape=f"batch {case.batch}", impl=name, device=device,
                    metric="GFLOP/s")
        reason = MnistRunner.skip_reason(name)
        if reason:
            step_rows.append(_row(**base, op="mnist_step", status="skipped", reason=reason))
            epoch_rows.append(_row(**base, op="mnist_epoch", status="skipped", reason=reason))
            continue
        try:
            t0 = time.perf_counter()
            runner = MnistRunner(name, case, x, y)
            runner.step(0)
            first = time.perf_counter() - t0
            before, after = runner.check_learns()
            t0 = time.perf_counter()
            runner.step(1)
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            runner.epoch_chunk()
            warm_epoch = time.perf_counter() - t0
        except Exception as exc:
            status = "wrong" if isinstance(exc, AssertionError) else "error"
            for rows_, op in ((step_rows, "mnist_step"), (epoch_rows, "mnist_epoch")):
                rows_.append(_row(**base, op=op, status=status, reason=f"{type(exc).__name__}: {exc}"[:300]))
            log(f"  mnist {name:21s} {status.upper()}: {exc}")
            continue
        runners[name] = runner
        step_t[name] = Timing(first, warm)
        epoch_t[name] = Timing(first, warm_epoch)
        note = f"loss on a fixed batch {before:.3f} -> {after:.3f} after 3 steps"
        step_rows.append(_row(**base, op="mnist_step", status="ok", work=step_flops, reason=note))
        epoch_rows.append(_row(**base, op="mnist_epoch", status="ok", work=step_flops * case.steps, reason=note))
    interleave({n: r.step for n, r in runners.items()}, step_t, case.steps, repeats,
               min_sample_s=0.0 if repeats == 1 else 0.02)
    # an epoch chunk runs for seconds: another library's spinning workers do not matter
    interleave({n: (lambda i, r=r: r.epoch_chunk()) for n, r in runners.items()}, epoch_t, 1,
               max(1, min(3, repeats)), min_sample_s=0.0, max_seconds=60.0, min_repeats=1, settle=False)
    for rows_, tims, n_img in ((step_rows, step_t, case.batch), (epoch_rows, epoch_t, images)):
        for r in rows_:
            t = tims.get(r["impl"])
            if t is None or r["status"] != "ok":
                continue
            r.update(median_s=t.median_s, min_s=t.min_s, samples_s=t.samples, loops=t.loops,
                     first_call_s=t.first_call_s, images=n_img, images_per_s=n_img / t.median_s,
                     epoch_s=t.median_s * case.epoch_images / n_img)
        _finish_rows(rows_, ceiling)
    for r in step_rows + epoch_rows:
        if r["status"] == "ok":
            log(f"  {r['op']:13s} {r['impl']:21s} {r['median_s'] * 1e3:10.1f} ms  "
                f"{r['images_per_s']:8.0f} img/s  epoch ~{r['epoch_s']:.1f} s")
    return step_rows + epoch_rows


def validate_result(result: dict[str, Any]) -> None:
    """Raise ValueError if ``result`` does not follow the JSON schema the report writes."""
    for key in ("schema", "machine", "config", "ceilings", "rows", "sections"):
        if key not in result:
            raise ValueError(f"result lacks key {key!r}")
    if result["schema"] != SCHEMA:
        raise ValueError(f"schema must be {SCHEMA!r}, got {result['schema']!r}")
    for key in ("gflops", "n"):
        if key not in result["ceilings"]["sgemm"]:
            raise ValueError(f"ceilings.sgemm lacks {key!r}")
    if not result["ceilings"].get("peak_gflops"):
        raise ValueError("ceilings lacks 'peak_gflops'")
    if "gbs" not in result["ceilings"]["copy"]:
        raise ValueError("ceilings.copy lacks 'gbs'")
    for r in result["rows"]:
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"row {r.get('impl')} {r.get('op')} lacks {missing}")
        if r["status"] not in ("ok", "skipped", "wrong", "error"):
            raise ValueError(f"row status {r['status']!r}")
        if r["status"] == "ok" and not (r["median_s"] and r["median_s"] > 0 and r["throughput"] > 0):
            raise ValueError(f"ok row {r['impl']} {r['op']} {r['case']} has no positive time/throughput")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2,
                    help="threads for numba and torch alike (default 2 = this machine's cores)")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="OpenBLAS threads for NumPy (the numpy-im2col baseline, fastconv.nn's Dense layers; "
                         "fastconv's conv kernels call no BLAS); default 1: spinning "
                         "OpenBLAS workers steal the cores from Numba's and torch's threads in the next call "
                         "(measured: torch conv 2-5x slower right after a 2-thread GEMM). The SGEMM ceiling is "
                         "still measured at --threads, in a subprocess")
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes, one sample, small ceilings, no optional sections: checks the report works, "
                         "measures nothing")
    ap.add_argument("--fast", action="store_true",
                    help="the fast subset of the standard set (MNIST layers + one layer per class, the MNIST "
                         "pools) with fastconv and torch only, unless --impls says otherwise")
    ap.add_argument("--cpu-time", action="store_true",
                    help="process CPU time and the fastest sample instead of wall time and the median: for a "
                         "loaded machine, with --threads 1 (it does not measure parallel scaling)")
    ap.add_argument("--only", default=",".join(FAMILIES),
                    help=f"comma-separated subset of {','.join(FAMILIES)} (default: all); issue 15's ops alone: "
                         "--only convt,avgpool,unpool (conv_transpose2d with conv2d's grad_x alone, avg_pool2d, "
                         "max_unpool2d, forward and backward)")
    ap.add_argument("--impls", default="",
                    help="comma-separated implementation names or shell patterns, e.g. 'fastconv-cpu*,torch-cpu' "
                         "(default: all)")
    ap.add_argument("--repeats", type=int, default=None, help="samples per implementation (default 7; --quick 1)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default benchmarks/results)")
    ap.add_argument("--machine-kind", default=None,
                    help="file-name stem (default: the CPU model and usable CPU count, e.g. amd-epyc-2vcpu)")
    for s in SECTIONS:
        ap.add_argument(f"--{s.name}", action=argparse.BooleanOptionalAction, default=None,
                        help=f"{s.help} (default: {'on' if s.default else 'off'}, off with --quick)")
    ap.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True, help="write the PNG chart")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's header (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--default-env", action="store_true",
                    help="instead: fastconv in fresh processes with no thread variable set vs the tuned "
                         "OPENBLAS_NUM_THREADS=1 (benchmarks/default_env.py; writes default-env-<cpu>.md)")
    args = ap.parse_args(argv)
    args.only = [f.strip() for f in args.only.split(",") if f.strip()]
    bad = [f for f in args.only if f not in FAMILIES]
    if bad:
        ap.error(f"--only takes {', '.join(FAMILIES)}; got {', '.join(bad)}")
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 7
    args.impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    if args.fast and not args.impls:
        args.impls = ["fastconv-*", "torch-cpu"]
    for s in SECTIONS:
        attr = s.name.replace("-", "_")
        if getattr(args, attr) is None:
            setattr(args, attr, s.default and not args.quick)
    return args


def _sgemm_ceiling(threads: int, blas_threads: int | None) -> dict[str, Any]:
    """OpenBLAS SGEMM at ``threads`` BLAS threads: in this process, or in a fresh one
    when this process's BLAS was loaded with another thread count (--blas-threads)."""
    from benchmarks._ceilings import measure_sgemm

    if blas_threads in (None, threads):
        return dict(measure_sgemm(2048, 5), blas_threads=threads)
    code = "import json; from benchmarks._ceilings import measure_sgemm; print(json.dumps(measure_sgemm(2048, 5)))"
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=REPO)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["blas_threads"] = threads
    return res


def measure_ceilings(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks._ceilings import measure_copy, measure_sgemm, measure_torch_sgemm

    if args.quick:
        c = {"sgemm": measure_sgemm(128, 1), "torch_sgemm": measure_torch_sgemm(128, 1),
             "copy": measure_copy(4 << 20, 1)}
    else:
        c = {"sgemm": _sgemm_ceiling(args.threads, args.blas_threads), "torch_sgemm": measure_torch_sgemm(2048, 5),
             "copy": measure_copy(256 << 20, 5)}
    c["peak_gflops"] = max(c["sgemm"]["gflops"], (c["torch_sgemm"] or {}).get("gflops", 0.0))
    return c


def _stem(args: argparse.Namespace, machine: dict[str, Any]) -> str:
    """The CPU slug, plus a suffix for any run that is not the full standard set."""
    stem = args.machine_kind or machine["cpu_slug"]
    if sorted(args.only) != sorted(FAMILIES) or (args.impls and not args.fast):
        stem += "-" + "-".join(args.only) + ("-subset" if args.impls and not args.fast else "")
    if args.fast:
        stem += "-fast"
    if args.cpu_time:
        stem += "-cputime"
    if args.quick:
        stem += "-quick"
    return stem


def _timed_rows(args: argparse.Namespace, impls: Sequence[Any], ceilings: dict[str, Any],
                log: Callable[[str], None]) -> list[dict[str, Any]]:
    from benchmarks.mnist_runner import MNIST_IMPLS
    from benchmarks.shapes import CONV_OPS, FLOP_OPS, POOL_OPS, SURFACE_FAMILIES, shapes, surface_shapes

    conv_cases, pool_cases, mnist_case = shapes(full=not args.quick, fast=args.fast)
    surface = surface_shapes(full=not args.quick, fast=args.fast)
    rows: list[dict[str, Any]] = []
    seed = args.seed
    families = (("conv", conv_cases, CONV_OPS, ceilings["peak_gflops"]),
                ("pool", pool_cases, POOL_OPS, ceilings["copy"]["gbs"]),
                *((f, surface[f], ops, ceilings["peak_gflops"] if ops[0] in FLOP_OPS else ceilings["copy"]["gbs"])
                  for f, ops in SURFACE_FAMILIES.items()))
    for family, cases, ops, ceiling in families:
        if family not in args.only:
            continue
        for case in cases:
            for op in ops:
                seed += 1
                rows += bench_group(family, op, case, impls, args.repeats, seed, ceiling, log, args.cpu_time)
    if "mnist" in args.only:
        wanted = {i.name for i in impls}
        names = [n for n in MNIST_IMPLS if n in wanted]
        rows += bench_mnist(mnist_case, args.repeats, seed + 1, ceilings["peak_gflops"], log, names)
    return rows


def run(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Everything but writing files: the result dict (see ``validate_result``)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    configure_threads(args.threads, args.blas_threads)
    from benchmarks.check import CHECK_TOL
    from benchmarks.impls import select
    from benchmarks.inputs import ROTATE_BYTES
    from benchmarks.machine import machine_info
    from benchmarks.threads import set_threads

    chosen = select(args.impls)  # a pattern that matches nothing fails before anything is measured
    threads = set_threads(args.threads)
    machine = machine_info(threads)
    log(f"machine: {machine['cpu_model']}, threads {threads}, load {machine['loadavg_start']}")
    ceilings = measure_ceilings(args)
    log(f"ceilings: peak SGEMM {ceilings['peak_gflops']:.1f} GFLOP/s, copy {ceilings['copy']['gbs']:.1f} GB/s")
    t0 = time.perf_counter()
    rows = _timed_rows(args, chosen, ceilings, log)
    sections = {s.name: s.run(args, log) for s in SECTIONS if getattr(args, s.name.replace("-", "_"))}
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    argv = sys.argv[1:] if getattr(args, "argv", None) is None else args.argv
    config = {"command": "python -m benchmarks.report " + " ".join(argv), "threads": args.threads,
              "quick": args.quick, "fast": args.fast, "only": args.only, "impls": args.impls or "all",
              "repeats": args.repeats, "seed": args.seed, "stem": _stem(args, machine), "notes": args.note,
              "statistic": "min" if args.cpu_time else "median",
              "clock": "process CPU time" if args.cpu_time else "wall time",
              "rotate_bytes": ROTATE_BYTES, "check_tol": CHECK_TOL,
              "run_seconds": round(time.perf_counter() - t0, 1)}
    return {"schema": SCHEMA, "machine": machine, "config": config, "ceilings": ceilings, "rows": rows,
            "sections": sections}


def markdown(result: dict[str, Any]) -> str:
    """The whole report, optional sections included."""
    from benchmarks._format import format_markdown

    formatted = [(s.title, s.format(result["sections"][s.name])) for s in SECTIONS
                 if result["sections"].get(s.name) is not None]
    return format_markdown(result, formatted)


def write_outputs(result: dict[str, Any], out_dir: Path, make_plot: bool = True) -> dict[str, Path]:
    """Write <stem>.md, <stem>.json and (with matplotlib) <stem>.png, each atomically."""
    from benchmarks._format import plot

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result["config"]["stem"]
    paths = {"md": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json"}
    write_atomic(paths["md"], markdown(result) + "\n")
    write_atomic(paths["json"], json.dumps(result, indent=1, default=float) + "\n")
    png = out_dir / f"{stem}.png"
    tmp_png = out_dir / f".{stem}.png.tmp{os.getpid()}.png"
    if make_plot and plot(result, tmp_png):
        write_atomic(png, tmp_png.read_bytes())
        tmp_png.unlink()
        paths["png"] = png
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.default_env:
            from . import default_env

            return default_env.main(["--out", str(args.out), *(f"--note={n}" for n in args.note)])
        args.argv = list(argv) if argv is not None else None
        result = run(args)
    except ValueError as exc:  # a user error (e.g. an --impls pattern that matches nothing)
        print(f"benchmarks.report: {exc}", file=sys.stderr)
        return 2
    validate_result(result)
    print(markdown(result))
    paths = write_outputs(result, args.out, args.plot)
    print(f"\nwrote {', '.join(str(p) for p in paths.values())} "
          f"(timed part: {result['config']['run_seconds']:.0f} s)", file=sys.stderr)
    bad = [r for r in result["rows"] if r["status"] in ("wrong", "error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
