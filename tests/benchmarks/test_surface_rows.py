"""The benchmark report's rows for issue 15's ops (benchmarks/): conv_transpose2d
forward (with fastconv's conv2d grad_x alone on the same geometry, the reference
of its 1.1x goal) and backward, avg_pool2d and max_unpool2d forward and backward,
against torch.  Tiny shapes only; every row's output is checked against the
float64 reference as in the report; timings are never asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv.reference as ref
from benchmarks import _format, check, goals, impls, inputs, report
from benchmarks import shapes as S

REPO = next(d for d in Path(__file__).resolve().parents if (d / "benchmarks" / "report.py").exists())
SURFACE_CASES = {f: S.surface_shapes(full=False)[f] for f in S.SURFACE_FAMILIES}


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- shape table and counters


def test_surface_shape_table():
    standard = S.surface_shapes(full=True)
    assert set(standard) == set(S.SURFACE_FAMILIES) == {"convt", "avgpool", "unpool"}
    every = [c for cases in standard.values() for c in cases]
    assert len({c.name for c in every}) == len(every)
    for c in every:
        assert c.source and c.params  # valid, and says where it comes from
    convt = standard["convt"]
    assert any((c.r, c.stride, c.padding) == (4, 2, 1) for c in convt)  # DCGAN
    assert any(c.output_padding for c in convt)  # a decoder's output_padding
    assert all(not (c.params.extra_h or c.params.extra_w) for c in convt)  # every one has its grad_x row
    avg = standard["avgpool"]
    assert any(c.kernel == c.h == c.w and c.params.y_shape[2:] == (1, 1) for c in avg)  # global average pool
    assert any(c.ceil_mode and not c.count_include_pad for c in avg)
    fast = S.surface_shapes(full=True, fast=True)
    assert {c.name for cases in fast.values() for c in cases} == set(S.FAST_SURFACE_NAMES)
    assert all(fast[f] for f in fast)  # the fast subset keeps every family
    assert set(S.ALL_OPS) == set(S.OPS) | set(S.SURFACE_OPS)


def test_surface_work_counters():
    dcgan = S.ConvTransposeCase("d", 2, 8, 4, 4, 6, 4, 4, stride=2, padding=1)
    assert dcgan.params.y_shape == (2, 6, 8, 8) and dcgan.label == "(2,8,4,4)->(6,8,8) 4x4 s2 p1"
    # every input pixel meets every weight once: 2 * N*C_in*H*W * C_out*R*S
    assert S.op_work(dcgan, "convt_fwd") == (2 * 2 * 8 * 16 * 6 * 16, "GFLOP/s")
    assert S.surface_work(dcgan, "convt_bwd") == 2 * S.surface_work(dcgan, "convt_fwd")
    avg = S.AvgPoolCase("a", 2, 3, 8, 8, 2, 2)
    assert S.op_work(avg, "avgpool_fwd") == (4 * (384 + 96), "GB/s") and S.surface_work(avg, "avgpool_bwd") == 1920
    unpool = S.UnpoolCase("u", 2, 3, 8, 8, 2, 2)
    assert unpool.x_shape == (2, 3, 4, 4) and unpool.params.y_shape == (2, 3, 8, 8)
    assert S.op_work(unpool, "unpool_fwd") == (96 * 12 + 384 * 4, "GB/s")
    assert S.surface_work(unpool, "unpool_bwd") == 96 * 16
    assert S.op_work(S.CONV_SHAPES[0], "conv2d_bwd") == (S.conv_flops(S.CONV_SHAPES[0], "conv2d_bwd"), "GFLOP/s")
    with pytest.raises(ValueError, match="op must be one of"):
        S.surface_work(avg, "pool_fwd")


@pytest.mark.parametrize("op", S.SURFACE_OPS)
def test_surface_inputs(rng, op):
    family = next(f for f, ops in S.SURFACE_FAMILIES.items() if op in ops)
    for case in SURFACE_CASES[family]:
        sets = inputs.make_inputs(op, case, rng, 2)
        assert len(sets) == 2 and all(a.flags.c_contiguous for s in sets for a in s)
        if op == "convt_fwd":
            assert [a.shape for a in sets[0]] == [case.x_shape, case.weight_shape]
        elif op == "convt_bwd":
            assert [a.shape for a in sets[0]] == [case.params.y_shape, case.x_shape, case.weight_shape]
        elif op.startswith("avgpool"):
            assert sets[0][-1].shape == case.x_shape and sets[0][0].dtype == np.float32
        else:  # the pooled values and indices of max_pool2d on the unpooled shape
            first, idx = sets[0]
            assert idx.dtype == np.int64 and idx.shape == case.x_shape
            assert idx.min() >= 0 and idx.max() < case.h * case.w
            assert first.shape == (case.x_shape if op == "unpool_fwd" else case.params.y_shape)


# --------------------------------------------------------------------------- rows of the report


def _run_group(op, case):
    family = next(f for f, ops in S.SURFACE_FAMILIES.items() if op in ops)
    chosen = impls.select(["fastconv-cpu", impls.GRAD_X["cpu"], "numpy-ref", "torch-cpu", "numpy-im2col"])
    return report.bench_group(family, op, case, chosen, repeats=1, seed=7, ceiling=10.0, log=lambda m: None)


@pytest.mark.parametrize("op", S.SURFACE_OPS)
def test_new_rows_run_and_are_checked(op):
    family = next(f for f, ops in S.SURFACE_FAMILIES.items() if op in ops)
    for case in SURFACE_CASES[family]:
        rows = {r["impl"]: r for r in _run_group(op, case)}
        assert "numpy-im2col" not in rows  # it has none of these ops: no row at all
        want = ["fastconv-cpu", "numpy-ref"] + (["torch-cpu"] if _has_torch() else [])
        for name in want:
            r = rows[name]
            assert r["status"] == "ok", (name, case.name, r["reason"])
            assert r["rel_err"] <= check.CHECK_TOL and r["median_s"] > 0 and r["throughput"] > 0
            assert r["op"] == op and r["shape"] == case.label and r["work"] == S.op_work(case, op)[0]
        head = rows["fastconv-cpu"]
        assert head["goal"] == goals.row_goal(op, case)
        if op == "convt_fwd":
            gx = rows[impls.GRAD_X["cpu"]]
            if case.params.extra_h or case.params.extra_w:
                assert gx["status"] == "skipped" and "output_padding >= stride" in gx["reason"]
                assert head["misses_goal"] is None  # nothing to divide by
            else:
                assert gx["status"] == "ok" and gx["rel_err"] <= check.CHECK_TOL
                assert head["goal_vs"] == impls.GRAD_X["cpu"] and isinstance(head["misses_goal"], bool)
                assert head["goal_ratio"] == pytest.approx(head["median_s"] / gx["median_s"])
        elif op.startswith("avgpool") and _has_torch():
            assert head["goal_vs"] == "torch-cpu" and head["goal_ratio"] == pytest.approx(head["vs_torch"])
        else:
            assert head.get("goal_vs") is None and head["misses_goal"] is None


def test_grad_x_row_is_conv2d_grad_x(rng):
    """The grad_x row computes conv2d_backward's grad_x of the matching conv2d."""
    case = SURFACE_CASES["convt"][0]
    x, w = inputs.make_inputs("convt_fwd", case, rng, 1)[0]
    gx = impls.get_impl(impls.GRAD_X["cpu"]).fns["convt_fwd"](case, x, w)
    conv = case.params.conv
    x_conv = np.zeros(conv.x_shape)  # conv2d's grad_x does not depend on its x
    want, _, _ = ref.conv2d_backward(x, x_conv, w, (conv.sh, conv.sw), (conv.ph, conv.pw), (conv.dh, conv.dw),
                                     conv.groups)
    assert check.rel_err(gx, want) < 1e-5


# --------------------------------------------------------------------------- goals and formatting


def _rows(op, times, case=None):
    case = case or S.ConvTransposeCase("c", 2, 8, 4, 4, 6, 4, 4, stride=2, padding=1)
    base = dict(family="convt", op=op, case=case.name, shape=case.label, metric="GFLOP/s", work=2_000_000)
    rows = [report._row(**base, impl=name, device="cpu", status="ok", median_s=t,
                        algorithm="auto" if name == "fastconv-cpu" else None,
                        goal=goals.row_goal(op, case) if name == "fastconv-cpu" else None)
            for name, t in times.items()]
    report._finish_rows(rows, ceiling=10.0)
    return rows


def test_convt_goal_divides_by_the_grad_x_row():
    gx = impls.GRAD_X["cpu"]
    slow = _rows("convt_fwd", {"fastconv-cpu": 1.2e-3, gx: 1e-3, "torch-cpu": 2e-3})
    head = slow[0]
    assert head["goal"] == 1.1 and head["goal_vs"] == gx and head["goal_ratio"] == pytest.approx(1.2)
    assert head["misses_goal"] is True and head["vs_torch"] == pytest.approx(0.6)  # faster than torch, still misses
    fine = _rows("convt_fwd", {"fastconv-cpu": 1.05e-3, gx: 1e-3, "torch-cpu": 1e-3})
    assert fine[0]["misses_goal"] is False
    alone = _rows("convt_fwd", {"fastconv-cpu": 1.2e-3, "torch-cpu": 1e-3})  # no grad_x row: no mark
    assert alone[0]["misses_goal"] is None and alone[0].get("goal_vs") is None
    assert _rows("convt_bwd", {"fastconv-cpu": 9e-3, "torch-cpu": 1e-3})[0]["misses_goal"] is None  # no goal
    text = "\n".join(goals.summary(slow))
    assert "## Goals (fastconv auto / torch; issues 10 and 15)" in text
    assert "| conv_transpose2d forward | ≤ 1.10 × fastconv's conv2d grad_x alone | 1 | 1 | 0.60x | — |" in text
    assert "1.20x fastconv's conv2d grad_x alone, goal ≤ 1.10; the op around the kernel" in text
    table = _format.format_table(slow, {})
    assert "### conv_transpose2d forward" in table
    assert "**misses** (≤ 1.10x fastconv's conv2d grad_x alone)" in table
    assert all(gx not in line for line in _format.slower_than_torch(
        _rows("convt_fwd", {"fastconv-cpu": 3e-3, gx: 2e-3, "torch-cpu": 1e-3})))  # the op's own rows only


@pytest.mark.parametrize("op", S.AVGPOOL_OPS)
def test_avg_pool_goal_is_torch(op):
    case = SURFACE_CASES["avgpool"][0]
    rows = _rows(op, {"fastconv-cpu": 1.5e-3, "torch-cpu": 1e-3}, case)
    assert rows[0]["goal"] == 1.0 and rows[0]["misses_goal"] is True and rows[0]["goal_vs"] == "torch-cpu"
    assert f"| {goals.TITLES[op]} | ≤ 1.00 | 1 | 1 |" in "\n".join(goals.summary(rows))
    assert goals.row_goal("unpool_fwd", SURFACE_CASES["unpool"][0]) is None


# --------------------------------------------------------------------------- command line


def test_only_selects_the_surface_families(capsys):
    a = report.parse_args(["--only", "convt,avgpool,unpool"])
    assert a.only == ["convt", "avgpool", "unpool"]
    assert report._stem(a, {"cpu_slug": "x"}) == "x-convt-avgpool-unpool"
    with pytest.raises(SystemExit):
        report.parse_args(["--help"])
    assert "--only convt,avgpool,unpool" in " ".join(capsys.readouterr().out.split())


def test_quick_report_of_the_surface_rows(tmp_path):
    """``python -m benchmarks.report --quick --only convt,avgpool,unpool``: every new op's rows."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.report", "--quick", "--only", "convt,avgpool,unpool",
                           "--no-plot", "--out", str(tmp_path), "--machine-kind", "t"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "t-convt-avgpool-unpool-quick.json").read_text())
    report.validate_result(result)
    ok = {(r["impl"], r["op"]) for r in result["rows"] if r["status"] == "ok"}
    for op in S.SURFACE_OPS:
        assert ("fastconv-cpu", op) in ok and ("numpy-ref", op) in ok
        assert ("torch-cpu", op) in ok or not _has_torch()
    assert (impls.GRAD_X["cpu"], "convt_fwd") in ok
    assert {r["family"] for r in result["rows"]} == {"convt", "avgpool", "unpool"}
    md = (tmp_path / "t-convt-avgpool-unpool-quick.md").read_text()
    for op in S.SURFACE_OPS:
        assert f"### {goals.TITLES[op]}" in md
    assert math.isfinite(result["ceilings"]["peak_gflops"])
