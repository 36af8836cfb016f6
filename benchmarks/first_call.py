"""First-call latency: fresh interpreter processes run ``import fastconv`` and
the first call of each op on tiny inputs, once with an empty numba cache
directory (cold: every kernel compiles) and once more with the same directory
(warm: kernels load from the cache); torch's import and first calls for
comparison.  An optional section of ``python -m benchmarks.report``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from benchmarks._format import fmt_time
from benchmarks.machine import REPO, version

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
    if torch and version("torch"):
        res["torch"] = _latency_run(["torch"], env, threads)
    return res


def format_latency(lat: dict[str, Any] | None) -> str:
    if not lat:
        return ""
    if lat.get("first_run"):
        from benchmarks import latency as first_run

        rest = {k: v for k, v in lat.items() if k != "first_run"}
        return (format_latency(rest) + "\n### First run (fresh processes, empty cache)\n\n"
                + first_run.format_rows(lat["first_run"]))
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


def section_run(args: Any, log: Any) -> dict[str, Any]:
    log("first-call latency (fresh processes, cold then warm numba cache) ...")
    lat = first_call_latency(args.threads)
    from benchmarks import latency as first_run  # issue 11's scenarios: Quick start, MNIST warm-up, goals

    lat["first_run"] = first_run.rows(args.threads, log)
    return lat
