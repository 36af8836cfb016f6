"""Quick tests of the benchmark report's pieces (benchmarks/): ceilings, flop
and byte counters, the shape table, the implementation registry, the NumPy/SciPy
comparison implementations against the float64 reference, the timing harness,
table formatting, the issue-10 goal marks, the JSON schema, and a ``--quick``
end-to-end run.  Timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv.reference as ref
from benchmarks import _format, check, first_call, goals, impls, inputs, machine, report
from benchmarks import shapes as S
from benchmarks._ceilings import measure_copy, measure_sgemm, measure_torch_sgemm
from benchmarks._timing import Timing, interleave, interleaved_medians
from benchmarks.impls.numpy_im2col import (numpy_im2col_conv2d, numpy_im2col_conv2d_backward, numpy_max_pool2d,
                                           numpy_max_pool2d_backward)
from benchmarks.impls.scipy import scipy_conv2d, scipy_conv2d_backward

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- ceilings and counters


def test_ceilings_positive_on_tiny_sizes():
    g = measure_sgemm(32, repeats=1)
    c = measure_copy(1 << 16, repeats=1)
    assert g["n"] == 32 and g["seconds"] > 0 and g["gflops"] > 0
    assert c["bytes"] == 1 << 16 and c["numpy_gbs"] > 0 and c["numba_gbs"] > 0
    assert c["gbs"] == max(c["numpy_gbs"], c["numba_gbs"])
    t = measure_torch_sgemm(32, repeats=1)
    assert t is None or (t["n"] == 32 and t["gflops"] > 0)


def test_conv_flops_known_shapes():
    mnist1 = S.CONV_SHAPES[0]
    assert (mnist1.n, mnist1.c, mnist1.h, mnist1.k) == (64, 1, 28, 32)
    assert S.conv_flops(mnist1) == 2 * 64 * 32 * 26 * 26 * 1 * 9 == 24_920_064
    assert S.conv_flops(mnist1, "conv2d_bwd") == 2 * 24_920_064
    # padding 2, dilation 2 keeps 56x56; groups divide the channel depth
    dil = S.ConvCase("d", 8, 64, 56, 56, 64, 3, 3, padding=2, dilation=2)
    assert S.conv_flops(dil) == 2 * 8 * 64 * 56 * 56 * 64 * 9
    grouped = S.ConvCase("g", 1, 4, 9, 9, 4, 3, 3, padding=2, dilation=2, stride=2, groups=2)
    assert S.conv_flops(grouped) == 2 * 1 * 4 * 5 * 5 * 2 * 9


def test_pool_bytes_known_shape():
    case = S.POOL_SHAPES[0]  # (64,32,26,26) k2 s2 -> 13x13
    nx, ny = 64 * 32 * 26 * 26, 64 * 32 * 13 * 13
    assert S.pool_bytes(case, "pool_fwd") == 4 * (nx + ny)
    assert S.pool_bytes(case, "pool_fwd_idx") == 4 * (nx + ny) + 8 * ny
    assert S.pool_bytes(case, "pool_bwd") == 12 * ny + 4 * nx
    assert S.pool_bytes(case, "pool_fwd", itemsize=8) == 8 * (nx + ny)
    with pytest.raises(ValueError, match="op must be one of"):
        S.pool_bytes(case, "conv2d_fwd")


def test_mnist_step_flops():
    fwd = (2 * 64 * 32 * 26 * 26 * 9 + 2 * 64 * 64 * 11 * 11 * 32 * 9 + 2 * 64 * 64 * 3 * 3 * 64 * 9
           + 2 * 64 * 576 * 64 + 2 * 64 * 64 * 10)
    assert S.mnist_step_flops(64) == 3 * fwd == 1_072_988_160


def test_standard_shapes_are_the_issues():
    conv = {(c.n, c.c, c.h, c.w, c.k, c.r, c.s, c.padding, c.dilation) for c in S.CONV_SHAPES}
    assert {(64, 1, 28, 28, 32, 3, 3, 0, 1), (64, 32, 13, 13, 64, 3, 3, 0, 1), (32, 64, 56, 56, 64, 3, 3, 1, 1),
            (32, 256, 14, 14, 256, 3, 3, 1, 1), (8, 64, 56, 56, 64, 3, 3, 2, 2),
            (64, 64, 5, 5, 64, 3, 3, 0, 1)} <= conv
    # issue 10's classes: batch 1, 5x5, 7x7 planes with 512 channels, stride 2, depthwise, 1x1
    assert any(c.n == 1 for c in S.CONV_SHAPES) and any(c.r == 5 for c in S.CONV_SHAPES)
    assert any((c.h, c.c, c.k) == (7, 512, 512) for c in S.CONV_SHAPES)
    assert any(c.stride == 2 for c in S.CONV_SHAPES) and any(c.r == c.s == 1 for c in S.CONV_SHAPES)
    assert any(c.groups == c.c == c.k > 1 for c in S.CONV_SHAPES)
    assert len({c.name for c in S.CONV_SHAPES}) == len(S.CONV_SHAPES) == 14
    for c in S.CONV_SHAPES:
        assert c.source and c.params.flops > 0  # every shape is valid and says where it comes from
    fast_conv, fast_pool, _ = S.shapes(full=True, fast=True)
    assert {c.name for c in fast_conv} == set(S.FAST_CONV_NAMES) and {p.name for p in fast_pool} == set(
        S.FAST_POOL_NAMES)
    pool = {(p.n, p.c, p.h, p.w, p.kernel, p.stride, p.padding) for p in S.POOL_SHAPES}
    assert pool == {(64, 32, 26, 26, 2, 2, 0), (64, 64, 11, 11, 2, 2, 0), (32, 64, 112, 112, 3, 2, 1)}


def test_n_buffers_and_inputs(rng):
    assert inputs.n_buffers(1) == 16 and inputs.n_buffers(1 << 40) == 2 and inputs.n_buffers(8 << 20) == 4
    case = S.TINY_CONV_SHAPES[1]
    sets = inputs.make_inputs("conv2d_bwd", case, rng, 3)
    assert len(sets) == 3
    gy, x, w = sets[0]
    assert gy.shape == case.params.y_shape and x.shape == case.params.x_shape and w.dtype == np.float32
    assert not np.array_equal(sets[0][1], sets[1][1])  # rotated sets differ
    pcase = S.TINY_POOL_SHAPES[1]
    gy, idx, x = inputs.make_inputs("pool_bwd", pcase, rng, 1)[0]
    _, ridx = ref.max_pool2d(x, *pcase.args, return_indices=True)
    np.testing.assert_array_equal(idx, ridx)


# --------------------------------------------------------------------------- comparison implementations

CONV_OPTIONS = [
    dict(),
    dict(stride=2, padding=1),
    dict(padding="same", dilation=2),
    dict(padding=(2, 1), dilation=(1, 2), stride=(1, 2)),
    dict(groups=2, padding=1),
    dict(groups=4),  # depthwise
]


@pytest.mark.parametrize("opts", CONV_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_numpy_im2col_conv_matches_reference(rng, opts):
    x = rng.standard_normal((3, 4, 9, 8))
    w = rng.standard_normal((8, 4 // opts.get("groups", 1), 3, 3))
    b = rng.standard_normal(8)
    y = numpy_im2col_conv2d(x, w, b, **opts)
    r = ref.conv2d(x, w, b, **opts)
    assert y.flags.c_contiguous and y.dtype == np.float64
    assert check.rel_err(y, r) < 1e-12
    gy = rng.standard_normal(r.shape)
    for got, want in zip(numpy_im2col_conv2d_backward(gy, x, w, **opts), ref.conv2d_backward(gy, x, w, **opts)):
        assert check.rel_err(got, want) < 1e-12


def test_numpy_im2col_conv_float32(rng):
    x = rng.standard_normal((2, 3, 7, 7), dtype=np.float32)
    w = rng.standard_normal((5, 3, 3, 3), dtype=np.float32)
    y = numpy_im2col_conv2d(x, w, padding=1)
    assert y.dtype == np.float32 and check.rel_err(y, ref.conv2d(x, w, padding=1)) < 1e-5


@pytest.mark.parametrize("padding", [0, 1, "same"])
def test_scipy_conv_matches_reference(rng, padding):
    x = rng.standard_normal((3, 1, 10, 9))
    w = rng.standard_normal((4, 1, 3, 3))
    b = rng.standard_normal(4)
    r = ref.conv2d(x, w, b, padding=padding)
    assert check.rel_err(scipy_conv2d(x, w, b, padding), r) < 1e-12
    gy = rng.standard_normal(r.shape)
    for got, want in zip(scipy_conv2d_backward(gy, x, w, padding), ref.conv2d_backward(gy, x, w, padding=padding)):
        assert check.rel_err(got, want) < 1e-12


POOL_OPTIONS = [(2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 1, 1, 1, False), (3, 2, 1, 2, False),
                (2, 2, 0, 1, True), (3, 2, 1, 1, True)]


@pytest.mark.parametrize("args", POOL_OPTIONS, ids=str)
def test_numpy_pool_matches_reference(rng, args):
    # tie-free input: a shuffled linspace
    x = rng.permutation(np.linspace(-1, 1, 2 * 3 * 9 * 8)).reshape(2, 3, 9, 8)
    y, idx = numpy_max_pool2d(x, *args, return_indices=True)
    ry, ridx = ref.max_pool2d(x, *args, return_indices=True)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(numpy_max_pool2d(x, *args), ry)
    gy = rng.standard_normal(ry.shape)
    gx = numpy_max_pool2d_backward(gy, idx, x.shape)
    assert check.rel_err(gx, ref.max_pool2d_backward(gy, ridx, x.shape)) < 1e-12


def test_check_catches_wrong_outputs(rng):
    case = S.TINY_CONV_SHAPES[0]
    one_set = inputs.make_inputs("conv2d_fwd", case, rng, 1)[0]
    r = check.expected("conv2d_fwd", case, one_set)
    assert check.check("conv2d_fwd", r.astype(np.float32), r) < 1e-6
    bad = r.copy()
    bad[0, 0, 0, 0] += 10.0
    with pytest.raises(AssertionError, match="relative error"):
        check.check("conv2d_fwd", bad, r)
    nan = r.copy()
    nan[-1, -1, -1, -1] = np.nan  # an unwritten (poisoned) element
    with pytest.raises(AssertionError):
        check.check("conv2d_fwd", nan, r)
    y, idx = np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2), dtype=np.int64)
    with pytest.raises(AssertionError, match="indices differ"):
        check.check("pool_fwd_idx", (y, idx + 1), (y, idx))


def test_every_impl_has_a_reason_or_runs():
    for impl in impls.implementations():
        for op in S.OPS:
            for case in S.TINY_CONV_SHAPES + S.TINY_POOL_SHAPES:
                reason = impl.skip_reason(op, case)
                assert reason is None or (isinstance(reason, str) and reason)


def test_interleave_fills_samples():
    calls = {"a": lambda i: i, "b": lambda i: i * 2}
    timings = {"a": Timing(1e-3, 1e-6), "b": Timing(1e-3, 1e-6)}
    interleave(calls, timings, nbuf=3, repeats=4, min_sample_s=0.0)
    assert all(len(t.samples) == 4 and t.median_s >= 0 and t.loops == 1 for t in timings.values())
    slow = {"s": Timing(1.0, 10.0)}  # 10 s per call: clamped to min_repeats without running 7
    plan_calls = {"s": lambda i: None}
    interleave(plan_calls, slow, nbuf=1, repeats=7, max_seconds=1.0, min_repeats=2)
    assert len(slow["s"].samples) == 2
    ticks = iter(range(1000))  # a fake clock: every reading one unit later
    fake = {"f": Timing(1.0, 1.0)}
    interleave({"f": lambda i: None}, fake, nbuf=2, repeats=3, min_sample_s=0.0, clock=lambda: float(next(ticks)))
    assert fake["f"].samples == [1.0, 1.0, 1.0]


def test_interleave_settles_each_sample_after_another_implementation():
    """One untimed call (on the previous input set) before a sample that follows another
    implementation's; none where the same implementation ran just before."""
    seen = []
    calls = {"a": lambda i: seen.append(("a", i)), "b": lambda i: seen.append(("b", i))}
    timings = {"a": Timing(1e-3, 1e-6), "b": Timing(1e-3, 1e-6)}
    interleave(calls, timings, nbuf=3, repeats=2, min_sample_s=0.0)
    assert seen == [("a", 0), ("b", 2), ("b", 0), ("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert all(len(t.samples) == 2 for t in timings.values())
    seen.clear()
    interleave(calls, {"a": Timing(1e-3, 1e-6), "b": Timing(1e-3, 1e-6)}, nbuf=3, repeats=2, min_sample_s=0.0,
               settle=False)
    assert seen == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    seen.clear()
    interleave({"a": calls["a"]}, {"a": Timing(1e-3, 1e-6)}, nbuf=3, repeats=3, min_sample_s=0.0)
    assert seen == [("a", 0), ("a", 1), ("a", 2)]  # one implementation: nothing to settle


def test_interleaved_medians_round_robin():
    order = []
    med = interleaved_medians({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, reps=3,
                              run=lambda fn: fn() or 0.5, warmups=1)
    assert med == {"a": 0.5, "b": 0.5}
    assert order == ["a", "b"] + ["a", "b"] * 3


def test_registry_headline_and_forced_algorithms():
    names = [i.name for i in impls.implementations()]
    assert names[0] == impls.HEADLINE["cpu"] and "torch-cpu" in names
    from fastconv._params import CONV_ALGORITHMS

    for alg in CONV_ALGORITHMS:  # every algorithm a user can force gets its own rows
        if alg != "auto":
            assert impls.get_impl(f"fastconv-cpu-{alg}").algorithm == alg
    assert impls.get_impl("fastconv-cpu").algorithm == "auto"
    assert [i.name for i in impls.select(["fastconv-cpu*", "torch-cpu"])][-1] == "torch-cpu"
    assert all(i.device == "cpu" for i in impls.select(["fastconv-cpu*"]))
    with pytest.raises(ValueError, match="no implementation matches nope"):
        impls.select(["nope"])


# --------------------------------------------------------------------------- formatting and schema


def _rows():
    base = dict(family="conv", op="conv2d_fwd", case="c1", shape="(1,1,8,8)->2 3x3 p0 d1", metric="GFLOP/s",
                work=2_000_000)
    rows = [
        report._row(**base, impl="fastconv-cpu-im2col", device="cpu", status="ok", median_s=3e-3,
                    min_s=2.5e-3, algorithm="im2col"),
        report._row(**base, impl="torch-cpu", device="cpu", status="ok", median_s=2e-3),
        report._row(**base, impl="cupy", device="gpu", status="skipped", reason="cupy not installed"),
        report._row(**base, impl="fastconv-cpu-direct", device="cpu", status="wrong", reason="relative error 1",
                    algorithm="direct"),
    ]
    report._finish_rows(rows, ceiling=10.0)
    return rows


def _goal_rows(auto_s, best_s, torch_s=2e-3, op="conv2d_fwd", case=None):
    """A group with fastconv auto (headline), one forced algorithm and torch."""
    case = case or S.ConvCase("c", 2, 64, 8, 8, 64, 3, 3, padding=1)
    base = dict(family="conv", op=op, case=case.name, shape=case.label, metric="GFLOP/s", work=2_000_000)
    rows = [
        report._row(**base, impl="fastconv-cpu", device="cpu", status="ok", median_s=auto_s, algorithm="auto",
                    goal=goals.row_goal(op, case), auto_choice="direct"),
        report._row(**base, impl="fastconv-cpu-im2col", device="cpu", status="ok", median_s=best_s,
                    algorithm="im2col"),
        report._row(**base, impl="torch-cpu", device="cpu", status="ok", median_s=torch_s),
    ]
    report._finish_rows(rows, ceiling=10.0)
    return rows


def test_finish_rows_ratios():
    rows = _rows()
    assert rows[0]["throughput"] == pytest.approx(2e6 / 3e-3 / 1e9)
    assert rows[0]["pct_ceiling"] == pytest.approx(100 * rows[0]["throughput"] / 10.0)
    assert rows[0]["vs_torch"] == pytest.approx(1.5) and rows[1]["vs_torch"] == pytest.approx(1.0)
    assert rows[2]["throughput"] is None and rows[3]["vs_torch"] is None
    assert rows[0]["misses_goal"] is None  # a forced algorithm has no goal: only auto (the headline) does
    cpu_time = [dict(r) for r in _rows()]
    report._finish_rows(cpu_time, ceiling=10.0, use_min=True)  # --cpu-time: the fastest sample is the figure
    assert cpu_time[0]["throughput"] == pytest.approx(2e6 / 2.5e-3 / 1e9)


def test_goals_per_row_geomean_and_cost_model():
    wide = S.ConvCase("w", 2, 64, 8, 8, 64, 3, 3, padding=1)
    assert goals.row_goal("conv2d_fwd", wide) == 0.75 and goals.row_goal("conv2d_bwd", wide) == 1.0
    assert goals.row_goal("conv2d_fwd", S.CONV_SHAPES[0]) == 1.0  # one input channel: not the Winograd goal
    assert goals.row_goal("pool_fwd_idx", S.POOL_SHAPES[0]) == 0.5 and goals.row_goal("pool_fwd", None) is None
    slow = _goal_rows(auto_s=3e-3, best_s=1e-3)  # auto 1.5x torch; im2col 3x faster than auto's pick
    assert slow[0]["misses_goal"] is True and slow[1]["misses_goal"] is None
    assert "auto's pick takes 3.00x the time of fastconv's im2col" in goals.why(slow, slow[0])
    fine = _goal_rows(auto_s=1e-3, best_s=1.1e-3, case=S.CONV_SHAPES[0])
    assert fine[0]["misses_goal"] is False
    text = "\n".join(goals.summary(slow + fine))
    assert "| conv2d forward | ≤ 1.00 (3x3 s1 C,K≥64: ≤ 0.75) | 2 | 1 |" in text
    assert f"{goals.geomean([1.5, 0.5]):.2f}x | ≤ 0.80: misses" in text  # sqrt(0.75) = 0.87
    assert "(c): 1.50x torch, goal ≤ 0.75" in text
    table = "\n".join(goals.cost_model_table(slow + fine))
    assert "| direct | 3 ms | im2col | 1 ms | 3.00 | **> 1.2x** |" in table
    assert "| 0.91 | ok |" in table
    assert goals.summary([]) == [] and goals.cost_model_table([]) == []


def test_format_table_and_helpers():
    assert _format.fmt_time(812e-6) == "812 us"
    assert _format.fmt_time(0.0123) == "12.3 ms"
    assert _format.fmt_time(1.52) == "1.52 s"
    assert _format.fmt_time(None) == "—"
    text = _format.format_table(_rows() + _goal_rows(3e-3, 1e-3), {})
    lines = text.splitlines()
    assert "### conv2d forward" in lines
    assert "| shape | impl | median | min | GFLOP/s | % peak SGEMM | time / torch | misses goal |" in lines
    assert any("| fastconv-cpu |" in line and "**misses** (≤ 0.75x)" in line for line in lines)
    row = next(line for line in lines if "fastconv-cpu-im2col" in line)
    assert "| 3 ms | 2.5 ms |" in row and "1.50x" in row and "0.667" in row and "7 %" in row
    assert any("**WRONG**" in line and "fastconv-cpu-direct" in line for line in lines)
    assert "- cupy: cupy not installed" in lines
    assert _format.slower_than_torch(_rows()) == [
        "- conv2d forward (1,1,8,8)->2 3x3 p0 d1: best fastconv (fastconv-cpu-im2col) takes 1.50x torch's time"]
    assert machine.cpu_slug("Intel(R) Xeon(R) Processor", 2) == "intel-xeon-2vcpu"
    assert machine.cpu_slug("AMD EPYC 7B13 64-Core Processor", 8) == "amd-epyc-7b13-8vcpu"
    assert machine.cpu_slug("AMD EPYC", 2) == "amd-epyc-2vcpu"


def test_busy_warning():
    assert _format.busy_warning({"loadavg_start": [0.2, 0.1, 0.1], "usable_cpus": 2}) is None
    assert "busy" in _format.busy_warning({"loadavg_start": [3.0, 1.0, 1.0], "usable_cpus": 2})
    assert _format.busy_warning({"loadavg_start": None, "usable_cpus": 2}) is None


def test_parse_args_defaults_and_errors():
    a = report.parse_args([])
    assert a.threads == 2 and a.repeats == 7 and a.latency and a.only == list(report.FAMILIES) and a.impls == []
    q = report.parse_args(["--quick", "--only", "pool,conv"])
    assert q.repeats == 1 and not q.latency and q.only == ["pool", "conv"]
    f = report.parse_args(["--fast", "--cpu-time", "--threads", "1"])
    assert f.impls == ["fastconv-*", "torch-cpu"] and f.cpu_time
    assert report._stem(f, {"cpu_slug": "amd-epyc-2vcpu"}) == "amd-epyc-2vcpu-fast-cputime"
    assert report._stem(a, {"cpu_slug": "amd-epyc-2vcpu"}) == "amd-epyc-2vcpu"
    assert report.parse_args(["--impls", "torch-cpu , numpy-*"]).impls == ["torch-cpu", "numpy-*"]
    with pytest.raises(SystemExit):
        report.parse_args(["--only", "gemm"])


def test_unknown_impl_pattern_is_one_line_error(capsys):
    assert report.main(["--quick", "--impls", "nope", "--out", "/nonexistent-never-written"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("benchmarks.report: no implementation matches nope")


def test_latency_subprocess_machinery():
    lat = first_call.first_call_latency(2, calls=(), torch=False)  # imports only: no kernel compiles
    for mode in ("cold", "warm"):
        assert "error" not in lat[mode], lat[mode]
        assert lat[mode]["import fastconv"] > 0 and lat[mode]["process wall (interpreter start to exit)"] > 0
    assert "fastconv, cold numba cache" in first_call.format_latency(lat)


# --------------------------------------------------------------------------- end to end


def test_quick_report_end_to_end(tmp_path):
    """``python -m benchmarks.report --quick``: tiny shapes, one sample, into a tmp dir."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.report", "--quick", "--out", str(tmp_path),
                           "--machine-kind", "test", "--note", "unit test"], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "test-quick.json").read_text())
    report.validate_result(result)
    md = (tmp_path / "test-quick.md").read_text()
    assert md.strip() in proc.stdout and "Note: unit test" in md
    assert md.startswith(f"# fastconv benchmarks on {result['machine']['cpu_model']}")
    assert "## auto's pick against the best of fastconv's own algorithms" in md
    have = {(r["impl"], r["op"]) for r in result["rows"] if r["status"] == "ok"}
    for op in S.OPS:
        assert ("numpy-im2col", op) in have and ("numpy-ref", op) in have and ("fastconv-cpu", op) in have
    assert ("fastconv-cpu-direct", "conv2d_bwd") in have
    assert ("scipy-correlate", "conv2d_fwd") in have
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        assert ("torch-cpu", "conv2d_bwd") in have and ("torch-cpu", "mnist_step") in have
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert (tmp_path / "test-quick.png").stat().st_size > 0
    m = result["machine"]
    assert m["threads"]["numba"] == 2 and m["versions"]["numpy"] == np.__version__
    assert result["ceilings"]["sgemm"]["gflops"] > 0 and result["ceilings"]["copy"]["gbs"] > 0
    assert result["ceilings"]["peak_gflops"] >= result["ceilings"]["sgemm"]["gflops"]
    assert m["cpu_slug"] and result["sections"] == {}


def test_validate_result_rejects_bad_json():
    with pytest.raises(ValueError, match="lacks key"):
        report.validate_result({"schema": report.SCHEMA})
    good = {"schema": report.SCHEMA, "machine": {}, "config": {}, "sections": {},
            "ceilings": {"sgemm": {"gflops": 1.0, "n": 2}, "peak_gflops": 1.0, "copy": {"gbs": 1.0}},
            "rows": _rows()}
    report.validate_result(good)
    bad = dict(good, rows=[dict(_rows()[0], median_s=0.0)])
    with pytest.raises(ValueError, match="no positive time"):
        report.validate_result(bad)
