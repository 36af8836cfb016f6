"""fastconv at two commits, side by side: ``python -m benchmarks.ab_commits BASE [NEW]``.

Checks out BASE (and NEW, default: this working tree) into git worktrees
under the temporary directory (kept for their kernel caches) and starts one persistent worker process per side, each importing
its own fastconv.  For every shape of the standard set (``benchmarks.shapes``)
and op (conv2d forward with bias, conv2d backward, max_pool2d forward, with
indices, backward) the two workers take turns -- A, B, A, B, ... ``--rounds``
times, ``--calls`` timed calls a turn -- so both see the same machine state;
while one runs, the other sleeps in a read.  Only the public functional API is
called (the same on both sides), with ``algorithm="auto"``, and one
``fastconv.nn`` row: a ``fit`` epoch of the Keras-book MNIST convnet.  Reported: the
median per-call time of each side and NEW / BASE, per row and as a geometric
mean per op: a refactoring should leave every ratio near 1.

    python -m benchmarks.ab_commits a178f65                 # this tree against a178f65
    python -m benchmarks.ab_commits a178f65 HEAD --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks._files import write_atomic
from benchmarks.shapes import CONV_SHAPES, POOL_SHAPES, TINY_CONV_SHAPES, TINY_POOL_SHAPES

REPO = Path(__file__).resolve().parent.parent

# Runs in each worker: reads one JSON request a line, answers with the timings.
_WORKER = r"""
import json, sys, time
import numpy as np
import fastconv

def inputs(req):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(req["x"], dtype=np.float32)
    if req["kind"] == "conv":
        w = rng.standard_normal(req["w"], dtype=np.float32) / np.sqrt(np.prod(req["w"][1:]))
        b = rng.standard_normal(req["w"][0], dtype=np.float32)
        y = fastconv.conv2d(x, w, b, **req["kw"])
        return x, w, b, rng.standard_normal(y.shape, dtype=np.float32), None
    y, idx = fastconv.max_pool2d(x, *req["args"], return_indices=True)
    return x, None, None, rng.standard_normal(y.shape, dtype=np.float32), idx

def mnist_fit(req):
    from fastconv.nn.zoo import keras_mnist_convnet
    rng = np.random.default_rng(0)
    x = rng.random((req["images"], 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, req["images"])
    model, optimizer, batch = keras_mnist_convnet(seed=0)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return lambda: model.fit(x, y, epochs=1, batch_size=batch, verbose=0)

def call(req, x, w, b, gy, idx):
    op, kw = req["op"], req.get("kw", {})
    if op == "conv2d_fwd":
        return lambda: fastconv.conv2d(x, w, b, **kw)
    if op == "conv2d_bwd":
        return lambda: fastconv.conv2d_backward(gy, x, w, **kw)
    if op == "pool_fwd":
        return lambda: fastconv.max_pool2d(x, *req["args"])
    if op == "pool_fwd_idx":
        return lambda: fastconv.max_pool2d(x, *req["args"], return_indices=True)
    return lambda: fastconv.max_pool2d_backward(gy, idx, x.shape)

cache = {}
for line in sys.stdin:
    req = json.loads(line)
    key = json.dumps({k: v for k, v in req.items() if k != "calls"}, sort_keys=True)
    if key not in cache:
        cache[key] = mnist_fit(req) if req["kind"] == "mnist" else call(req, *inputs(req))
        cache[key]()
        cache[key]()
    fn, ts = cache[key], []
    for _ in range(req["calls"]):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    print(json.dumps(ts), flush=True)
"""


class Worker:
    """One side: a Python process importing fastconv from ``tree``."""

    def __init__(self, tree: Path, threads: int):
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_ENABLE_CUDASIM")}
        env.update(PYTHONPATH=str(tree), NUMBA_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=tree, env=env, text=True)

    def time(self, req: dict[str, Any]) -> list[float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited ({self.proc.wait()}) on {req}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def requests(tiny: bool) -> list[tuple[str, dict[str, Any]]]:
    """(row label, worker request) for every standard shape and op."""
    convs, pools = (TINY_CONV_SHAPES, TINY_POOL_SHAPES) if tiny else (CONV_SHAPES, POOL_SHAPES)
    out = []
    for c in convs:
        for op in ("conv2d_fwd", "conv2d_bwd"):
            out.append((f"{op} {c.name} {c.label}", {"kind": "conv", "op": op, "x": list(c.x_shape),
                                                      "w": [c.k, c.c // c.groups, c.r, c.s], "kw": c.kwargs}))
    for p in pools:
        for op in ("pool_fwd", "pool_fwd_idx", "pool_bwd"):
            out.append((f"{op} {p.name} {p.label}", {"kind": "pool", "op": op, "x": list(p.x_shape),
                                                      "args": list(p.args)}))
    images = 128 if tiny else 640
    out.append((f"mnist_fit Keras-book convnet, one fit epoch of {images} images, batch 64",
                {"kind": "mnist", "op": "mnist_fit", "images": images}))
    return out


def measure(base: Worker, new: Worker, reqs: list[tuple[str, dict[str, Any]]], rounds: int, calls: int,
            log: Any = None) -> list[dict[str, Any]]:
    rows = []
    for label, req in reqs:
        got: dict[str, list[float]] = {"base": [], "new": []}
        for r in range(rounds):
            order = (("base", base), ("new", new)) if r % 2 == 0 else (("new", new), ("base", base))
            for side, worker in order:
                got[side] += worker.time(dict(req, calls=calls))
        row = {"row": label, "op": req["op"], "base_s": statistics.median(got["base"]),
               "new_s": statistics.median(got["new"])}
        row["ratio"] = row["new_s"] / row["base_s"]
        rows.append(row)
        if log is not None:
            print(f"{label:<60} base {row['base_s'] * 1e3:9.3f} ms  new {row['new_s'] * 1e3:9.3f} ms  "
                  f"{row['ratio']:.3f}", file=log, flush=True)
    return rows


def geomeans(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    ops: dict[str, list[float]] = {}
    for r in rows:
        ops.setdefault(r["op"], []).append(math.log(r["ratio"]))
    return {op: math.exp(sum(v) / len(v)) for op, v in ops.items()}


def format_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any], bound: float) -> str:
    lines = [f"# fastconv {meta['new']} against {meta['base']} — {meta['cpu']}", "",
             f"Measured {meta['date']} with `{meta['command']}` on {meta['cpu']} ({meta['cpus']} usable CPUs), "
             f"{meta['threads']} Numba threads, OpenBLAS 1 thread, float32, algorithm=\"auto\". Load average before "
             f"{meta['load_before']}, after {meta['load_after']}.", "",
             f"Each row: {meta['rounds']} alternating turns of {meta['calls']} timed calls per side (one persistent "
             "process per commit), medians; ratio = new / base (< 1: the new commit is faster). "
             f"Rows outside 1 ± {bound:.0%} are marked.", "",
             "| op, shape | base | new | new / base | |", "|---|---:|---:|---:|---|"]
    for r in rows:
        mark = "outside" if abs(r["ratio"] - 1) > bound else ""
        lines.append(f"| {r['row']} | {r['base_s'] * 1e3:.3f} ms | {r['new_s'] * 1e3:.3f} ms | {r['ratio']:.3f} "
                     f"| {mark} |")
    lines += ["", "| op | geometric mean new / base |", "|---|---:|"]
    lines += [f"| {op} | {g:.3f} |" for op, g in geomeans(rows).items()]
    return "\n".join(lines) + "\n"


def _worktree(rev: str) -> Path:
    """A detached worktree of ``rev`` at a fixed place per commit, kept between
    runs: its files keep their times, so Numba's cache in its ``__pycache__``
    stays valid and a second run compiles nothing (delete it freely)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    where = Path(tempfile.gettempdir()) / f"fastconv-ab-{sha[:12]}"
    if not (where / "fastconv" / "__init__.py").exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--force", "--detach", str(where), sha],
                       check=True, capture_output=True)
    return where


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ab_commits", description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the commit to compare against (any git revision)")
    ap.add_argument("new", nargs="?", default=None, help="the new commit (default: this working tree)")
    ap.add_argument("--threads", type=int, default=2, help="Numba threads on both sides (default 2)")
    ap.add_argument("--rounds", type=int, default=6, help="alternating turns per side and row (default 6)")
    ap.add_argument("--calls", type=int, default=3, help="timed calls per turn (default 3)")
    ap.add_argument("--bound", type=float, default=0.05, help="mark rows whose ratio is off 1 by more (default 0.05)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: checks the tool works, measures nothing")
    ap.add_argument("--rows", default=None,
                    help="comma-separated substrings: only the rows whose label contains one (e.g. 'bwd resnet-56')")
    ap.add_argument("--out", type=Path, default=None, help="write ab-<base>-<new>-<cpu>.md/.json here")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.calls < 1 or args.threads < 1:
        ap.error("--rounds, --calls and --threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import datetime as dt

    base_tree = _worktree(args.base)
    new_tree = REPO if args.new is None else _worktree(args.new)
    base, new = Worker(base_tree, args.threads), Worker(new_tree, args.threads)
    load_before = [round(v, 2) for v in os.getloadavg()]
    try:
        reqs = requests(args.tiny)
        if args.rows:
            wanted = [w.strip() for w in args.rows.split(",") if w.strip()]
            reqs = [r for r in reqs if any(w in r[0] for w in wanted)]
        rows = measure(base, new, reqs, args.rounds, args.calls, log=sys.stderr)
    finally:
        base.close()
        new.close()
    cpu = machine.cpu_model()
    meta = {"base": args.base, "new": args.new or "working tree", "cpu": cpu, "cpus": machine.usable_cpus(),
            "threads": args.threads, "rounds": args.rounds, "calls": args.calls, "load_before": load_before,
            "load_after": [round(v, 2) for v in os.getloadavg()],
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m benchmarks.ab_commits " + " ".join(argv if argv is not None else sys.argv[1:])}
    text = format_markdown(rows, meta, args.bound)
    print(text)
    if args.out is not None:
        stem = f"ab-{args.base}-{(args.new or 'tree')}-{machine.cpu_slug(cpu, machine.usable_cpus())}"
        write_atomic(args.out / f"{stem}.md", text)
        write_atomic(args.out / f"{stem}.json", json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
