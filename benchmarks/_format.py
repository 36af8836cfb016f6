"""The report's Markdown tables and PNG chart (``python -m benchmarks.report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from benchmarks import goals
from benchmarks.impls import GRAD_X

OP_TITLES = {**goals.TITLES, "mnist_step": "MNIST training step", "mnist_epoch": "MNIST epoch-equivalent"}


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


def _goal_cell(r: dict[str, Any]) -> str:
    """'**misses** (≤ 1.00x)' on a headline row above its goal, '' otherwise."""
    if r.get("misses_goal") is None:
        return ""
    base = f" {goals.GRAD_X_TITLE}" if r["op"] in goals.OWN_GOALS else ""
    return f"**misses** (≤ {r['goal']:.2f}x{base})" if r["misses_goal"] else ""


def format_table(rows: Sequence[dict[str, Any]], ceilings: dict[str, Any] | None = None) -> str:
    """Markdown tables, one per op, rows grouped by shape; skipped rows are
    listed once under the tables with their reasons."""
    out: list[str] = []
    ops = [op for op in OP_TITLES if any(r["op"] == op for r in rows)]
    skipped: dict[tuple[str, str], str] = {}
    for op in ops:
        op_rows = [r for r in rows if r["op"] == op]
        metric = op_rows[0]["metric"]
        ceil_name = "% peak SGEMM" if metric == "GFLOP/s" else "% copy BW"
        mnist = op.startswith("mnist")
        out.append(f"### {OP_TITLES[op]}\n")
        head = ["shape", "impl", "median", "min", metric, ceil_name, "time / torch", "misses goal"]
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
                          _fmt(r["vs_torch"], ".2f", "x"), _goal_cell(r)]
            out.append("| " + " | ".join(str(c) for c in cells) + " |")
        out.append("")
    if skipped:
        out.append("Not run (reason):")
        for impl, reason in sorted(skipped):
            out.append(f"- {impl}: {reason}")
        out.append("")
    return "\n".join(out)


def slower_than_torch(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per group where the best fastconv implementation is slower than torch."""
    lines = []
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok" and r["vs_torch"] is not None:
            groups.setdefault((r["op"], r["shape"], r["device"]), []).append(r)
    for (op, shape, _dev), rs in groups.items():
        fc = [r for r in rs if r["impl"].startswith("fastconv") and r["impl"] not in GRAD_X.values()]
        if not fc:
            continue
        best = min(fc, key=lambda r: r["median_s"])
        if best["vs_torch"] > 1.0:
            lines.append(f"- {OP_TITLES[op]} {shape}: best fastconv ({best['impl']}) takes "
                         f"{best['vs_torch']:.2f}x torch's time")
    return lines


def format_markdown(result: dict[str, Any], sections: Sequence[tuple[str, str]] = ()) -> str:
    """The report; ``sections``: (title, Markdown) of the optional sections, in order."""
    m, c, cfg = result["machine"], result["ceilings"], result["config"]
    v = m["versions"]
    lines = [
        f"# fastconv benchmarks on {m['cpu_model']} ({cfg['stem']})",
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
        f"- Ceilings: peak SGEMM {c['peak_gflops']:.1f} GFLOP/s = the better of OpenBLAS "
        f"{c['sgemm']['gflops']:.1f} ({c['sgemm'].get('blas_threads', cfg['threads'])} threads) and torch.matmul "
        f"{_fmt((c.get('torch_sgemm') or {}).get('gflops'), '.1f')} ({c['sgemm']['n']}^3 float32); "
        f"copy {c['copy']['gbs']:.1f} GB/s (read+write; NumPy {c['copy']['numpy_gbs']:.1f}, "
        f"Numba {c['copy']['numba_threads']} threads {c['copy']['numba_gbs']:.1f})",
        f"- Method: float32, {cfg.get('statistic', 'median')} of up to {cfg['repeats']} interleaved samples "
        f"({cfg.get('clock', 'wall time')}) after warm-up, each after one untimed call of its own implementation "
        "(another library's spinning idle threads do not count), inputs rotated, every output checked once against the "
        "float64 reference; conv forward with bias, torch's backward the bare aten.convolution_backward "
        "(grad_x, grad_weight, grad_bias); fastconv-cpu = algorithm=\"auto\" (what a user gets), "
        "fastconv-cpu-<alg> = that algorithm forced; "
        f"{'QUICK MODE (tiny shapes, one sample): not a measurement' if cfg['quick'] else 'standard shapes'}.",
    ]
    for note in cfg.get("notes") or []:
        lines.append(f"- Note: {note}")
    busy = busy_warning(m)
    if busy:
        lines.append(f"- **Warning**: {busy}")
    lines += ["", "Columns: median and minimum per-call time over the samples; GFLOP/s of the figure "
              "(conv: 2·N·K·OH·OW·C/g·R·S per forward, backward counted 2x; MNIST: 3x the conv+dense "
              "forward flops per step) or GB/s (pool: minimal bytes read + written); % of the measured "
              "ceiling; time / torch = this row's time over torch's in the same group (> 1 is slower "
              "than torch); misses goal = a fastconv-cpu (auto) row above its goal (issue 10; issue 15: "
              "avg_pool2d ≤ 1.0x torch, conv_transpose2d forward ≤ 1.1x the fastconv-cpu-conv2d-gx row of its "
              "group, conv2d's grad_x alone on the same geometry).", ""]
    lines += goals.summary(result["rows"])
    lines.append(format_table(result["rows"], c))
    lines += goals.cost_model_table(result["rows"])
    slow = slower_than_torch(result["rows"])
    lines += ["## Where fastconv is slower than torch", ""]
    lines += slow or ["- nowhere in this run"]
    lines.append("")
    for title, text in sections:
        lines += [f"## {title}", "", text]
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
        ceil = result["ceilings"]["peak_gflops"] if metric == "GFLOP/s" else result["ceilings"]["copy"]["gbs"]
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
    fig.suptitle(f"fastconv on {result['machine']['cpu_model']} ({result['machine']['date'][:10]}, "
                 f"{result['config']['threads']} threads)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

