"""Side-by-side benchmark report: ``python -m benchmarks.report``.

One process, one run: measures the machine's ceilings (SGEMM GFLOP/s, copy
GB/s), times the standard shape suite for every implementation in
``benchmarks/_impls.py`` (interleaved, rotated inputs, medians after warm-up,
every output checked once against the float64 reference), the MNIST convnet's
training step and epoch-equivalent, and the first-call latency (import + first
call in fresh processes with a cold and a warm numba cache).  Prints a Markdown
table and writes ``<out>/<stem>.md``, ``.json`` and ``.png``.

Thread counts must be fixed before NumPy, Numba or torch are imported, so this
module imports them only inside functions, after ``configure_threads``.
See ``benchmarks/README.md`` for the options and what every column means.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

SCHEMA = "fastconv-bench/1"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"
FAMILIES = ("conv", "pool", "mnist")
OP_TITLES = {
    "conv2d_fwd": "conv2d forward",
    "conv2d_bwd": "conv2d backward",
    "pool_fwd": "max_pool2d forward",
    "pool_fwd_idx": "max_pool2d forward + indices",
    "pool_bwd": "max_pool2d backward",
    "mnist_step": "MNIST training step",
    "mnist_epoch": "MNIST epoch-equivalent",
}
ROW_KEYS = ("family", "op", "case", "shape", "impl", "device", "status", "reason", "median_s", "min_s",
            "samples_s", "loops", "first_call_s", "rel_err", "work", "metric", "throughput", "pct_ceiling",
            "vs_torch")


# --------------------------------------------------------------------------- threads and machine


def configure_threads(n: int, blas: int | None = None) -> None:
    """Make every library use ``n`` threads (NumPy's BLAS ``blas``, default ``n``);
    effective only before their import.

    NUMBA_NUM_THREADS caps numba.set_num_threads (raised to ``n`` if numba is
    not imported yet); OPENBLAS/OMP/MKL_NUM_THREADS are read when NumPy's BLAS
    and torch load.  ``_impls.set_threads`` then sets numba and torch at run time.
    """
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(max(n, int(os.environ.get("NUMBA_NUM_THREADS", "0") or 0)))
    counts = {"OPENBLAS_NUM_THREADS": n if blas is None else blas, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
    for var, count in counts.items():
        if "numpy" not in sys.modules or var not in os.environ:
            os.environ[var] = str(count)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in have]
    except OSError:
        pass
    return []


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_kind(cpu_model: str, ncpu: int) -> str:
    """A short file-name-safe name, e.g. 'intel-xeon-2vcpu'."""
    s = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b|@.*$", " ", cpu_model.lower())
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-") or platform.machine()
    return f"{'-'.join(s.split('-')[:3])}-{ncpu}vcpu"


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except Exception:
        return None


def machine_info(threads: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    cpu = _cpu_model()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    blas = None
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]  # type: ignore[index]
    except Exception:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "memory_gib": _mem_gib(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("numpy", "numba", "scipy", "torch", "numba-cuda", "cupy")},
        "blas": blas,
        "fastconv_commit": _git_commit(),
        "threads": threads,
        "env": {v: os.environ.get(v) for v in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------- rows


def _row(**kw: Any) -> dict[str, Any]:
    row = {k: None for k in ROW_KEYS}
    row.update(kw)
    return row


def _finish_rows(rows: list[dict[str, Any]], ceiling: float | None) -> None:
    """Fill throughput, % of ceiling and time / torch for one group's rows."""
    base = {r["device"]: r["median_s"] for r in rows
            if r["status"] == "ok" and r["impl"] in ("torch-cpu", "cudnn-torch")}
    for r in rows:
        if r["status"] != "ok":
            continue
        r["throughput"] = r["work"] / r["median_s"] / 1e9
        # the measured ceilings are the CPU's; GPU rows have their own report (gpu_bench.py)
        r["pct_ceiling"] = 100.0 * r["throughput"] / ceiling if ceiling and r["device"] == "cpu" else None
        t = base.get(r["device"])
        r["vs_torch"] = r["median_s"] / t if t else None


def bench_group(family: str, op: str, case: Any, impls: Sequence[Any], repeats: int, seed: int,
                ceiling: float | None, log: Any) -> list[dict[str, Any]]:
    """Time every implementation of ``op`` on ``case`` (interleaved) -> table rows."""
    import numpy as np

    from . import _impls as I
    from ._timing import Timing, interleave, warm_up

    is_conv = op in I.CONV_OPS
    work = I.conv_flops(case, op) if is_conv else I.pool_bytes(case, op)
    common = dict(family=family, op=op, case=case.name, shape=case.label, work=work,
                  metric="GFLOP/s" if is_conv else "GB/s")
    inputs = I.make_inputs(op, case, np.random.default_rng(seed))
    nbuf = len(inputs)
    ref = None
    rows, calls, timings = [], {}, {}
    for impl in impls:
        if op not in impl.fns:
            continue
        base = dict(common, impl=impl.name, device=impl.device)
        reason = impl.skip_reason(op, case)
        if reason:
            rows.append(_row(**base, status="skipped", reason=reason))
            continue
        try:
            call = impl.bind(op, case, inputs)
            out, first, warm = warm_up(call, nbuf)
            if ref is None:
                ref = I.expected(op, case, inputs[0])
            err = I.check(op, impl.host(out), ref)
        except AssertionError as exc:
            rows.append(_row(**base, status="wrong", reason=str(exc)))
            log(f"  {op:13s} {case.name:15s} {impl.name:21s} WRONG: {exc}")
            continue
        except Exception as exc:  # a kernel under construction must not stop the report
            rows.append(_row(**base, status="error", reason=f"{type(exc).__name__}: {exc}"[:300]))
            log(f"  {op:13s} {case.name:15s} {impl.name:21s} ERROR: {type(exc).__name__}: {exc}")
            continue
        calls[impl.name] = call
        timings[impl.name] = Timing(first, warm)
        rows.append(_row(**base, status="ok", rel_err=err))
    interleave(calls, timings, nbuf, repeats, min_sample_s=0.0 if repeats == 1 else 0.02)
    for r in rows:
        t = timings.get(r["impl"])
        if t is not None and r["status"] == "ok":
            r.update(median_s=t.median_s, min_s=t.min_s, samples_s=t.samples, loops=t.loops,
                     first_call_s=t.first_call_s)
    _finish_rows(rows, ceiling)
    for r in rows:
        if r["status"] == "ok":
            vs = f"{r['vs_torch']:.2f}x torch" if r["vs_torch"] else ""
            log(f"  {op:13s} {case.name:15s} {r['impl']:21s} {r['median_s'] * 1e3:10.3f} ms "
                f"{r['throughput']:8.2f} {r['metric']} {vs}")
    return rows


def bench_mnist(case: Any, repeats: int, seed: int, ceiling: float | None, log: Any,
                names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows for the MNIST training step and epoch-equivalent of every implementation."""
    import numpy as np

    from . import _impls as I
    from ._timing import Timing, interleave

    x, y = I.mnist_data(case, np.random.default_rng(seed))
    images = case.batch * case.steps
    step_flops = I.mnist_step_flops(case.batch)
    step_rows, epoch_rows = [], []
    runners, step_t, epoch_t = {}, {}, {}
    for name in names or I.MNIST_IMPLS:
        device = "gpu" if name in ("fastconv-cuda", "cudnn-torch") else "cpu"
        base = dict(family="mnist", case=case.name, shape=f"batch {case.batch}", impl=name, device=device,
                    metric="GFLOP/s")
        reason = I.MnistRunner.skip_reason(name)
        if reason:
            step_rows.append(_row(**base, op="mnist_step", status="skipped", reason=reason))
            epoch_rows.append(_row(**base, op="mnist_epoch", status="skipped", reason=reason))
            continue
        try:
            t0 = time.perf_counter()
            runner = I.MnistRunner(name, case, x, y)
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
    interleave({n: (lambda i, r=r: r.epoch_chunk()) for n, r in runners.items()}, epoch_t, 1,
               max(1, min(3, repeats)), min_sample_s=0.0, max_seconds=60.0, min_repeats=1)
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


# --------------------------------------------------------------------------- first-call latency

LATENCY_SCRIPT = r"""
import json, sys, time
calls = sys.argv[1].split(",") if len(sys.argv) > 1 and sys.argv[1] else []
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
out = {"import numpy": t1 - t0}
if "torch" in calls:
    import torch
    torch.set_num_threads(int(sys.argv[2]))
    out["import torch"] = time.perf_counter() - t1
    F = torch.nn.functional
else:
    import fastconv
    out["import fastconv"] = time.perf_counter() - t1
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
w = rng.standard_normal((4, 3, 3, 3), dtype=np.float32)

def first(name, fn):
    t = time.perf_counter()
    r = fn()
    out[name] = time.perf_counter() - t
    return r

for alg in ("direct", "im2col"):
    if "conv" in calls:
        y = first(f"first conv2d {alg}", lambda: fastconv.conv2d(x, w, padding=1, algorithm=alg))
        first(f"first conv2d_backward {alg}",
              lambda: fastconv.conv2d_backward(y, x, w, padding=1, algorithm=alg))
if "pool" in calls:
    first("first max_pool2d", lambda: fastconv.max_pool2d(x, 2))
    p, idx = first("first max_pool2d indices", lambda: fastconv.max_pool2d(x, 2, return_indices=True))
    first("first max_pool2d_backward", lambda: fastconv.max_pool2d_backward(p, idx, x.shape))
if "torch" in calls:
    xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    y = first("first conv2d", lambda: F.conv2d(xt, wt, padding=1))
    first("first conv2d_backward", lambda: y.sum().backward())
    first("first max_pool2d", lambda: F.max_pool2d(xt.detach(), 2))
out["in-process total"] = time.perf_counter() - t0
print("LATENCY_JSON " + json.dumps(out))
"""


def _latency_run(calls: Sequence[str], env: dict[str, str], threads: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LATENCY_SCRIPT, ",".join(calls), str(threads)], cwd=str(REPO),
                          env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("LATENCY_JSON "):
            out = json.loads(line[len("LATENCY_JSON "):])
            out["process wall (interpreter start to exit)"] = wall
            return out
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}


def first_call_latency(threads: int, calls: Sequence[str] = ("conv", "pool"), torch: bool = True) -> dict[str, Any]:
    """Import + first calls in fresh processes: fastconv with an empty numba cache
    directory (cold: every kernel compiles), again with the same directory (warm:
    kernels load from the cache), and torch for comparison (nothing to compile)."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    res: dict[str, Any] = {"shape": "x (2,3,8,8) float32, weight (4,3,3,3), padding 1; pool k2",
                           "calls": list(calls)}
    with tempfile.TemporaryDirectory(prefix="fastconv-numba-cache-") as cache:
        env["NUMBA_CACHE_DIR"] = cache
        res["cold"] = _latency_run(calls, env, threads)
        res["warm"] = _latency_run(calls, env, threads)
    if torch and _version("torch"):
        res["torch"] = _latency_run(["torch"], env, threads)
    return res


# --------------------------------------------------------------------------- formatting


def fmt_time(s: float | None) -> str:
    """Seconds with a unit and 3 significant digits: '812 us', '12.3 ms', '1.52 s'."""
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.3g} us"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def format_table(rows: Sequence[dict[str, Any]], ceilings: dict[str, Any]) -> str:
    """Markdown tables, one per op, rows grouped by shape; skipped rows are
    listed once under the tables with their reasons."""
    out: list[str] = []
    ops = [op for op in OP_TITLES if any(r["op"] == op for r in rows)]
    skipped: dict[tuple[str, str], str] = {}
    for op in ops:
        op_rows = [r for r in rows if r["op"] == op]
        metric = op_rows[0]["metric"]
        ceil_name = "% SGEMM" if metric == "GFLOP/s" else "% copy BW"
        mnist = op.startswith("mnist")
        out.append(f"### {OP_TITLES[op]}\n")
        head = ["shape", "impl", "median", "min", metric, ceil_name, "time / torch"]
        if mnist:
            head[4:4] = ["images/s", "60k-image epoch"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
        for r in op_rows:
            if r["status"] == "skipped":
                skipped.setdefault((r["impl"], r["reason"]), r["reason"])
                continue
            if r["status"] != "ok":
                cells = [r["shape"], r["impl"], f"**{r['status'].upper()}**: {r['reason']}"] + [""] * (len(head) - 3)
            else:
                cells = [r["shape"], r["impl"], fmt_time(r["median_s"]), fmt_time(r["min_s"])]
                if mnist:
                    cells += [_fmt(r.get("images_per_s"), ".0f"), fmt_time(r.get("epoch_s"))]
                cells += [_fmt(r["throughput"], ".3g"), _fmt(r["pct_ceiling"], ".0f", " %"),
                          _fmt(r["vs_torch"], ".2f", "x")]
            out.append("| " + " | ".join(str(c) for c in cells) + " |")
        out.append("")
    if skipped:
        out.append("Not run (reason):")
        for impl, reason in sorted(skipped):
            out.append(f"- {impl}: {reason}")
        out.append("")
    return "\n".join(out)


def format_latency(lat: dict[str, Any] | None) -> str:
    if not lat:
        return ""
    cols = [c for c in ("cold", "warm", "torch") if c in lat]
    keys: list[str] = []
    for c in cols:
        keys += [k for k in lat[c] if k not in keys]
    head = {"cold": "fastconv, cold numba cache", "warm": "fastconv, warm cache", "torch": "torch (no JIT)"}
    out = ["| step | " + " | ".join(head[c] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for k in keys:
        cells = []
        for c in cols:
            v = lat[c].get(k)
            cells.append(v if isinstance(v, str) else fmt_time(v))
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    return ("\n".join(out) + f"\n\nShapes: {lat.get('shape')}. "
            "Each 'first ...' includes loading or compiling that kernel.\n")


def slower_than_torch(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per group where the best fastconv implementation is slower than torch."""
    lines = []
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok" and r["vs_torch"] is not None:
            groups.setdefault((r["op"], r["shape"], r["device"]), []).append(r)
    for (op, shape, _dev), rs in groups.items():
        fc = [r for r in rs if r["impl"].startswith("fastconv")]
        if not fc:
            continue
        best = min(fc, key=lambda r: r["median_s"])
        if best["vs_torch"] > 1.0:
            lines.append(f"- {OP_TITLES[op]} {shape}: best fastconv ({best['impl']}) takes "
                         f"{best['vs_torch']:.2f}x torch's time")
    return lines


def format_markdown(result: dict[str, Any]) -> str:
    m, c, cfg = result["machine"], result["ceilings"], result["config"]
    v = m["versions"]
    lines = [
        f"# fastconv benchmarks: {cfg['stem']}",
        "",
        f"- Date: {m['date']}; command: `{cfg['command']}`",
        f"- Machine: {m['cpu_model']} ({', '.join(m['cpu_flags'])}), {m['usable_cpus']} usable of "
        f"{m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB" + (f"; GPU {m['gpu']}" if m.get("gpu") else ""),
        f"- Threads: {cfg['threads']} for every implementation (numba {m['threads'].get('numba')}, "
        f"torch {m['threads'].get('torch')}, OpenBLAS env {m['env'].get('OPENBLAS_NUM_THREADS')})",
        f"- Versions: Python {m['python']}, numpy {v.get('numpy')} ({m.get('blas')}), numba {v.get('numba')}, "
        f"scipy {v.get('scipy')}, torch {v.get('torch')}; fastconv commit {m.get('fastconv_commit')}",
        f"- Load average (1/5/15 min) at start {_loadavg(m.get('loadavg_start'))}, "
        f"at end {_loadavg(m.get('loadavg_end'))}",
        f"- Ceilings: SGEMM {c['sgemm']['gflops']:.1f} GFLOP/s (NumPy BLAS, {c['sgemm']['n']}^3 float32); "
        f"copy {c['copy']['gbs']:.1f} GB/s (read+write; NumPy {c['copy']['numpy_gbs']:.1f}, "
        f"Numba {c['copy']['numba_threads']} threads {c['copy']['numba_gbs']:.1f})",
        f"- Method: float32, medians of up to {cfg['repeats']} interleaved samples after warm-up, inputs "
        "rotated, every output checked once against the float64 reference; "
        f"{'QUICK MODE (tiny shapes, one sample): not a measurement' if cfg['quick'] else 'standard shapes'}.",
    ]
    for note in cfg.get("notes") or []:
        lines.append(f"- Note: {note}")
    busy = busy_warning(m)
    if busy:
        lines.append(f"- **Warning**: {busy}")
    lines += ["", "Columns: median and minimum per-call time over the samples; GFLOP/s of the median "
              "(conv: 2·N·K·OH·OW·C/g·R·S per forward, backward counted 2x; MNIST: 3x the conv+dense "
              "forward flops per step) or GB/s (pool: minimal bytes read + written); % of the measured "
              "ceiling; time / torch = this row's time over torch's in the same group (> 1 is slower "
              "than torch).", ""]
    lines.append(format_table(result["rows"], c))
    slow = slower_than_torch(result["rows"])
    lines += ["## Where fastconv is slower than torch", ""]
    lines += slow or ["- nowhere in this run"]
    lines.append("")
    if result.get("latency"):
        lines += ["## First-call latency (fresh processes)", "", format_latency(result["latency"])]
    return "\n".join(lines)


def busy_warning(machine: dict[str, Any]) -> str | None:
    """A warning when other work was running: the 1-minute load average at the
    start (before this run's own work shows in it) above half the usable CPUs."""
    load, cpus = machine.get("loadavg_start"), machine.get("usable_cpus") or 1
    if load and load[0] > 0.5 * cpus:
        return (f"the machine was busy when this run started (1-minute load average {load[0]:.2f} on {cpus} "
                f"CPUs): other processes competed for the cores, so times and ratios are unreliable")
    return None


def _loadavg(v: Any) -> str:
    return "/".join(f"{x:.2f}" for x in v) if v else "n/a"


def plot(result: dict[str, Any], path: Path) -> bool:
    """Bar chart: throughput per shape and implementation, one panel per op,
    the measured ceiling as a dashed line.  False if matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    ops = [op for op in OP_TITLES if any(r["op"] == op for r in rows)]
    if not ops:
        return False
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(impls)}
    fig, axes = plt.subplots(len(ops), 1, figsize=(11, 3.4 * len(ops)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        op_rows = [r for r in rows if r["op"] == op]
        shapes = list(dict.fromkeys(r["shape"] for r in op_rows))
        names = list(dict.fromkeys(r["impl"] for r in op_rows))
        width = 0.8 / max(1, len(names))
        for j, name in enumerate(names):
            xs, ys = [], []
            for i, shape in enumerate(shapes):
                for r in op_rows:
                    if r["impl"] == name and r["shape"] == shape:
                        xs.append(i + (j - (len(names) - 1) / 2) * width)
                        ys.append(r["throughput"])
            ax.bar(xs, ys, width, label=name, color=colors[name])
        metric = op_rows[0]["metric"]
        ceil = result["ceilings"]["sgemm"]["gflops"] if metric == "GFLOP/s" else result["ceilings"]["copy"]["gbs"]
        ax.axhline(ceil, ls="--", color="gray", lw=1)
        ax.set_xlim(-0.6, len(shapes) - 0.4)
        ax.text(len(shapes) - 0.45, ceil, "ceiling", va="bottom", ha="right", color="gray", fontsize=8)
        names_of = {r["shape"]: r["case"] for r in op_rows}
        ax.set_xticks(range(len(shapes)))
        # name, then the shape on two lines: long conv labels must not overlap
        ax.set_xticklabels([f"{names_of[s]}\n" + s.replace(" ", "\n", 1) for s in shapes], fontsize=7)
        ax.set_ylabel(metric)
        ax.set_title(OP_TITLES[op], fontsize=10)
        ax.legend(fontsize=7, ncol=4)
    fig.suptitle(f"fastconv {result['config']['stem']} ({result['machine']['date'][:10]}, "
                 f"{result['config']['threads']} threads)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def validate_result(result: dict[str, Any]) -> None:
    """Raise ValueError if ``result`` does not follow the JSON schema the report writes."""
    for key in ("schema", "machine", "config", "ceilings", "rows", "latency"):
        if key not in result:
            raise ValueError(f"result lacks key {key!r}")
    if result["schema"] != SCHEMA:
        raise ValueError(f"schema must be {SCHEMA!r}, got {result['schema']!r}")
    for key in ("gflops", "n"):
        if key not in result["ceilings"]["sgemm"]:
            raise ValueError(f"ceilings.sgemm lacks {key!r}")
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
                    help="threads for numba, torch and OpenBLAS alike (default 2 = this machine's cores)")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="OpenBLAS threads for NumPy (and fastconv's im2col GEMMs); default 1: spinning "
                         "OpenBLAS workers steal the cores from Numba's and torch's threads in the next call "
                         "(measured: torch conv 2-5x slower right after a 2-thread GEMM). The SGEMM ceiling is "
                         "still measured at --threads, in a subprocess")
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes, one sample, small ceilings, no latency: checks the report works, "
                         "measures nothing")
    ap.add_argument("--only", default=",".join(FAMILIES),
                    help=f"comma-separated subset of {','.join(FAMILIES)} (default: all)")
    ap.add_argument("--impls", default="", help="comma-separated implementation names to run (default: all)")
    ap.add_argument("--repeats", type=int, default=None, help="samples per implementation (default 7; --quick 1)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default benchmarks/results)")
    ap.add_argument("--machine-kind", default=None, help="file-name tag of the machine (default from the CPU model)")
    ap.add_argument("--latency", action=argparse.BooleanOptionalAction, default=None,
                    help="measure first-call latency in fresh processes (default: on, off with --quick)")
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
    if args.latency is None:
        args.latency = not args.quick
    return args


def _sgemm_ceiling(threads: int, blas_threads: int | None) -> dict[str, Any]:
    """SGEMM at ``threads`` BLAS threads: in this process, or in a fresh one when
    this process's BLAS was loaded with another thread count (--blas-threads)."""
    from ._ceilings import measure_sgemm

    if blas_threads in (None, threads):
        return measure_sgemm(2048, 5)
    code = "import json; from benchmarks._ceilings import measure_sgemm; print(json.dumps(measure_sgemm(2048, 5)))"
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["blas_threads"] = threads
    return res


def run(args: argparse.Namespace, log: Any = None) -> dict[str, Any]:
    """Everything but writing files: the result dict (see ``validate_result``)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    configure_threads(args.threads, args.blas_threads)
    from . import _impls as I
    from ._ceilings import measure_copy, measure_sgemm

    threads = I.set_threads(args.threads)
    machine = machine_info(threads)
    log(f"machine: {machine['cpu_model']}, threads {threads}, load {machine['loadavg_start']}")
    if args.quick:
        ceilings = {"sgemm": measure_sgemm(128, 1), "copy": measure_copy(4 << 20, 1)}
    else:
        ceilings = {"sgemm": _sgemm_ceiling(args.threads, args.blas_threads), "copy": measure_copy(256 << 20, 5)}
    log(f"ceilings: SGEMM {ceilings['sgemm']['gflops']:.1f} GFLOP/s, copy {ceilings['copy']['gbs']:.1f} GB/s")
    conv_cases, pool_cases, mnist_case = I.shapes(full=not args.quick)
    wanted = {s.strip() for s in args.impls.split(",") if s.strip()}
    impls = [i for i in I.implementations() if not wanted or i.name in wanted]
    rows: list[dict[str, Any]] = []
    seed = args.seed
    if "conv" in args.only:
        for case in conv_cases:
            for op in I.CONV_OPS:
                seed += 1
                rows += bench_group("conv", op, case, impls, args.repeats, seed, ceilings["sgemm"]["gflops"], log)
    if "pool" in args.only:
        for case in pool_cases:
            for op in I.POOL_OPS:
                seed += 1
                rows += bench_group("pool", op, case, impls, args.repeats, seed, ceilings["copy"]["gbs"], log)
    if "mnist" in args.only:
        names = [n for n in I.MNIST_IMPLS if not wanted or n in wanted]
        rows += bench_mnist(mnist_case, args.repeats, seed + 1, ceilings["sgemm"]["gflops"], log, names)
    latency = None
    if args.latency:
        log("first-call latency (fresh processes, cold then warm numba cache) ...")
        latency = first_call_latency(args.threads)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    kind = args.machine_kind or machine_kind(machine["cpu_model"], machine["usable_cpus"] or 1)
    stem = f"cpu-{kind}"
    if sorted(args.only) != sorted(FAMILIES) or wanted:
        stem += "-" + "-".join(args.only) + ("-subset" if wanted else "")
    if args.quick:
        stem += "-quick"
    config = {"command": "python -m benchmarks.report " + " ".join(
        sys.argv[1:] if getattr(args, "argv", None) is None else args.argv),
              "threads": args.threads, "quick": args.quick, "only": args.only, "impls": sorted(wanted) or "all",
              "repeats": args.repeats, "seed": args.seed, "stem": stem, "notes": args.note,
              "rotate_bytes": I.ROTATE_BYTES, "check_tol": I.CHECK_TOL}
    return {"schema": SCHEMA, "machine": machine, "config": config, "ceilings": ceilings, "rows": rows,
            "latency": latency}


def write_outputs(result: dict[str, Any], out_dir: Path, make_plot: bool = True) -> dict[str, Path]:
    """Write <stem>.md, <stem>.json and (with matplotlib) <stem>.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = result["config"]["stem"]
    paths = {"md": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json"}
    paths["md"].write_text(format_markdown(result) + "\n")
    paths["json"].write_text(json.dumps(result, indent=1, default=float) + "\n")
    if make_plot and plot(result, out_dir / f"{stem}.png"):
        paths["png"] = out_dir / f"{stem}.png"
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.default_env:
        from . import default_env
        return default_env.main(["--out", str(args.out), *(f"--note={n}" for n in args.note)])
    args.argv = list(argv) if argv is not None else None
    result = run(args)
    validate_result(result)
    print(format_markdown(result))
    paths = write_outputs(result, args.out, args.plot)
    print("\nwrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    bad = [r for r in result["rows"] if r["status"] in ("wrong", "error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
