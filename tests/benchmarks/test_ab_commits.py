"""benchmarks.ab_commits: the rows it asks both workers for, the ratio table and
geometric means, and one worker answering a request (this tree, tiny shape).
The two-commit run itself is not run here: it compiles every kernel twice."""

from __future__ import annotations

import math

import pytest

from benchmarks import ab_commits
from tests.helpers import REPO_ROOT


def test_requests_cover_every_op_and_the_mnist_row():
    reqs = ab_commits.requests(tiny=True)
    ops = {r["op"] for _, r in reqs}
    assert ops == {"conv2d_fwd", "conv2d_bwd", "pool_fwd", "pool_fwd_idx", "pool_bwd", "mnist_fit"}
    assert len({label for label, _ in reqs}) == len(reqs)


def test_table_marks_rows_outside_the_bound_and_geomeans():
    rows = [{"row": "a", "op": "x", "base_s": 1.0, "new_s": 1.2, "ratio": 1.2},
            {"row": "b", "op": "x", "base_s": 2.0, "new_s": 1.0, "ratio": 0.5},
            {"row": "c", "op": "y", "base_s": 1.0, "new_s": 1.01, "ratio": 1.01}]
    g = ab_commits.geomeans(rows)
    assert g["x"] == pytest.approx(math.sqrt(0.6)) and g["y"] == pytest.approx(1.01)
    meta = {"base": "b0", "new": "n0", "cpu": "cpu", "cpus": 2, "threads": 2, "rounds": 1, "calls": 1,
            "load_before": [0, 0, 0], "load_after": [0, 0, 0], "date": "d", "command": "c"}
    text = ab_commits.format_markdown(rows, meta, 0.05)
    lines = {ln.split(" |")[0].lstrip("| "): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert lines["a"].endswith("outside |") and lines["b"].endswith("outside |")
    assert not lines["c"].endswith("outside |")


def test_worker_times_a_request():
    worker = ab_commits.Worker(REPO_ROOT, threads=1)
    try:
        _, req = next(r for r in ab_commits.requests(tiny=True) if r[1]["op"] == "conv2d_fwd")
        ts = worker.time(dict(req, calls=2))
        assert len(ts) == 2 and all(t > 0 for t in ts)
    finally:
        worker.close()
