"""Issue 10's and issue 15's goals, checked on every report: a plain "misses
goal" mark per row, the geometric means, and the table of ``auto``'s pick
against the best of fastconv's own algorithms.

All ratios are fastconv ``algorithm="auto"`` (the headline implementation,
what a user gets) over torch in the same group of the same run, except
conv_transpose2d's forward (``OWN_GOALS``): its time over fastconv's conv2d
grad_x alone on the same geometry (the ``GRAD_X`` row of its group), since
the transposed forward runs that grad_x.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from benchmarks.impls import BASELINE, GRAD_X, HEADLINE
from benchmarks.shapes import ConvCase

# time / torch, per shape
ROW_GOALS = {"conv2d_fwd": 1.0, "conv2d_bwd": 1.0, "pool_fwd_idx": 0.5, "pool_bwd": 0.9,
             "avgpool_fwd": 1.0, "avgpool_bwd": 1.0}
# time / fastconv's conv2d grad_x alone in the same group, per shape (issue 15)
OWN_GOALS = {"convt_fwd": 1.1}
# 3x3 stride-1 layers with C, K >= 64 (the Winograd goal), forward
WIDE_3X3_FWD_GOAL = 0.75
# geometric mean of time / torch over the conv shapes of the run
GEOMEAN_GOALS = {"conv2d_fwd": 0.8, "conv2d_bwd": 0.9}
# auto's time over the best forced algorithm's, per conv shape and op
AUTO_VS_BEST = 1.2

TITLES = {"conv2d_fwd": "conv2d forward", "conv2d_bwd": "conv2d backward", "pool_fwd": "max_pool2d forward",
          "pool_fwd_idx": "max_pool2d forward + indices", "pool_bwd": "max_pool2d backward",
          "convt_fwd": "conv_transpose2d forward", "convt_bwd": "conv_transpose2d backward",
          "avgpool_fwd": "avg_pool2d forward", "avgpool_bwd": "avg_pool2d backward",
          "unpool_fwd": "max_unpool2d forward", "unpool_bwd": "max_unpool2d backward"}
GRAD_X_TITLE = "fastconv's conv2d grad_x alone"


def row_goal(op: str, case: Any) -> float | None:
    """The largest ratio issues 10 and 15 allow for ``op`` on ``case`` (None: no goal);
    the ratio divides by ``goal_base``'s row."""
    goal = ROW_GOALS.get(op, OWN_GOALS.get(op))
    if goal is not None and op == "conv2d_fwd" and isinstance(case, ConvCase) and case.is_3x3_s1_wide:
        goal = min(goal, WIDE_3X3_FWD_GOAL)
    return goal


def goal_base(op: str, device: str) -> str:
    """The implementation a goal's ratio divides by: torch, or for ``OWN_GOALS`` fastconv's
    conv2d grad_x alone, in the same group."""
    return GRAD_X[device] if op in OWN_GOALS else BASELINE[device]


def mark_goal(r: dict[str, Any], figures: dict[tuple[str, str], float], figure: float) -> None:
    """Set ``goal_vs``, ``goal_ratio`` and ``misses_goal`` of a row with a goal, from the
    group's figures by (device, impl); unset when the row it divides by did not run."""
    base = goal_base(r["op"], r["device"])
    d = figures.get((r["device"], base))
    if r.get("goal") is None or not d:
        return
    r["goal_vs"], r["goal_ratio"] = base, figure / d
    r["misses_goal"] = r["goal_ratio"] > r["goal"]


def _headline(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok" and r["impl"] in HEADLINE.values() and r["vs_torch"]]


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _best_own(rows: Sequence[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest forced fastconv algorithm of ``r``'s group."""
    own = [o for o in rows if o["status"] == "ok" and o["op"] == r["op"] and o["shape"] == r["shape"]
           and o["device"] == r["device"] and o.get("algorithm") not in (None, "auto")]
    return min(own, key=lambda o: o["median_s"]) if own else None


def why(rows: Sequence[dict[str, Any]], r: dict[str, Any]) -> str:
    """A measured hint at why a row misses its goal."""
    if r["op"] in OWN_GOALS:
        return (f"the op around the kernel (validation, dtype, padding of x, allocation) adds "
                f"{(r['goal_ratio'] - 1) * r['median_s'] / r['goal_ratio'] * 1e3:.3g} ms per call")
    best = _best_own(rows, r)
    if best is not None and best["median_s"] < 0.95 * r["median_s"]:
        return (f"auto's pick takes {r['median_s'] / best['median_s']:.2f}x the time of fastconv's "
                f"{best['algorithm']} ({best['vs_torch']:.2f}x torch)")
    torch_row = next((o for o in rows if o["status"] == "ok" and o["op"] == r["op"] and o["shape"] == r["shape"]
                      and o["impl"] in ("torch-cpu", "cudnn-torch")), None)
    if torch_row is not None and r.get("pct_ceiling") is not None and torch_row.get("pct_ceiling") is not None:
        what = "peak SGEMM" if r["metric"] == "GFLOP/s" else "copy bandwidth"
        return (f"fastconv's best kernel here reaches {r['pct_ceiling']:.0f} % of {what}, "
                f"torch {torch_row['pct_ceiling']:.0f} %")
    return "no forced algorithm is faster"


def summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown: the goal table (per-shape misses and geometric means) and the rows that miss."""
    head = _headline(rows)
    if not head:
        return []
    out = ["## Goals (fastconv auto / torch; issues 10 and 15)", "",
           "| op | goal per shape | shapes | shapes missing | geometric mean | geomean goal |",
           "|---|---:|---:|---:|---:|---|"]
    for op in TITLES:
        op_rows = [r for r in head if r["op"] == op]
        if not op_rows:
            continue
        missing = [r for r in op_rows if r.get("misses_goal")]
        gm = geomean([r["vs_torch"] for r in op_rows])
        gm_goal = GEOMEAN_GOALS.get(op)
        gm_cell = "—" if gm_goal is None else f"≤ {gm_goal:.2f}: {'misses' if gm > gm_goal else 'meets'}"
        per = ROW_GOALS.get(op, OWN_GOALS.get(op))
        per_cell = "—" if per is None else f"≤ {per:.2f}" + (
            f" (3x3 s1 C,K≥64: ≤ {WIDE_3X3_FWD_GOAL:.2f})" if op == "conv2d_fwd" else "") + (
            f" × {GRAD_X_TITLE}" if op in OWN_GOALS else "")
        out.append(f"| {TITLES[op]} | {per_cell} | {len(op_rows)} | {len(missing) if per else '—'} | "
                   f"{gm:.2f}x | {gm_cell} |")
    out += ["", "Rows that miss their goal:", ""]
    misses = [r for r in head if r.get("misses_goal")]
    for r in misses:
        vs = f"{r['goal_ratio']:.2f}x {GRAD_X_TITLE}" if r["op"] in OWN_GOALS else f"{r['vs_torch']:.2f}x torch"
        out.append(f"- {TITLES[r['op']]} {r['shape']} ({r['case']}): {vs}, goal ≤ {r['goal']:.2f}; {why(rows, r)}")
    if not misses:
        out.append("- none")
    return out + [""]


def cost_model_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown: auto's time against the best forced algorithm per conv group
    (issue 10: auto must never take more than 1.2x the best of fastconv's own)."""
    lines = []
    for r in _headline(rows):
        if not r["op"].startswith("conv2d"):
            continue
        best = _best_own(rows, r)
        if best is None:
            continue
        ratio = r["median_s"] / best["median_s"]
        flag = "**> 1.2x**" if ratio > AUTO_VS_BEST else "ok"
        lines.append(f"| {TITLES[r['op']]} | {r['shape']} | {r.get('auto_choice') or '?'} | "
                     f"{r['median_s'] * 1e3:.3g} ms | {best['algorithm']} | {best['median_s'] * 1e3:.3g} ms | "
                     f"{ratio:.2f} | {flag} |")
    if not lines:
        return []
    return ["## auto's pick against the best of fastconv's own algorithms", "",
            "| op | shape | auto runs | auto | best forced | its time | auto / best | ≤ 1.2x |",
            "|---|---|---|---:|---|---:|---:|---|", *lines, ""]
