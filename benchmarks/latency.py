"""First-run latency, as a new user meets it: ``python -m benchmarks.latency``.

Each scenario runs in a fresh interpreter with its own empty ``NUMBA_CACHE_DIR``
(cold: every kernel it needs compiles), then again with the same directory
(warm: the kernels load from the cache):

- ``import + first conv2d``: ``import fastconv`` and one float32 ``conv2d`` forward;
- ``README Quick start``: the Python block under "## Quick start" in README.md, verbatim;
- ``MNIST warm-up``: what ``examples/train_mnist.py`` times as its warm-up (build
  the Keras-book convnet, one training step and one prediction on a batch of 64;
  synthetic pixels, MNIST is not needed);
- ``warmup command``: ``python -m fastconv.warmup --dtype float32`` into an empty
  cache, then the Quick start on the cache it filled.

For each run: the wall time of the whole process (interpreter start to exit),
its CPU time (user + system, all threads; on a loaded machine the wall time
grows, the CPU time much less), the time of the measured steps, and the CPU
seconds Numba spent compiling each fastconv kernel (exclusive of the kernels it
compiled inside it).  ``rows()`` returns them; ``format_rows()`` makes the
Markdown section of the benchmark report (``python -m benchmarks.report --latency``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Goals of issue 11 (wall seconds on a quiet 2-core machine).
GOALS = {("import + first conv2d", "cold"): 3.0, ("import + first conv2d", "warm"): 0.5,
         ("README Quick start", "cold"): 8.0, ("MNIST warm-up", "cold"): 10.0}

# Runs in the child: times steps, and the CPU time of every fastconv kernel compile.
_PRELUDE = r"""
import json, sys, time
T0 = time.perf_counter()
from numba.core import event as _ev
COMPILE = {}
class _Timer(_ev.Listener):
    stack = []
    def on_start(self, ev):
        fn = ev.data["dispatcher"].py_func
        self.stack.append([f"{fn.__module__}.{fn.__qualname__}", time.process_time(), 0.0])
    def on_end(self, ev):
        name, start, inner = self.stack.pop()
        spent = time.process_time() - start
        if self.stack:
            self.stack[-1][2] += spent
        if name.startswith("fastconv."):
            COMPILE[name] = COMPILE.get(name, 0.0) + spent - inner
_ev.register("numba:compile", _Timer())
STEPS = {}
def step(name, fn):
    t = time.perf_counter()
    out = fn()
    STEPS[name] = time.perf_counter() - t
    return out
def report():
    print("LATENCY_JSON " + json.dumps({"steps": STEPS, "compile": COMPILE,
                                        "in_process": time.perf_counter() - T0}))
"""

_FIRST_CONV = r"""
t = time.perf_counter()
import numpy as np
import fastconv
STEPS["import fastconv"] = time.perf_counter() - t
x = np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32)
w = np.random.default_rng(1).standard_normal((16, 3, 3, 3), dtype=np.float32)
step("first conv2d float32", lambda: fastconv.conv2d(x, w, padding=1))
STEPS["import + first conv2d"] = time.perf_counter() - T0  # numba's import (in the prelude) included
"""

_MNIST_WARMUP = r"""
import numpy as np
from fastconv.nn import zoo
model, optimizer, batch = zoo.MODELS["keras"](device="cpu", seed=0)
model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
x = np.random.default_rng(0).random((batch, 28, 28), dtype=np.float32)
y = np.arange(batch) % 10
def warm_up():
    model.train_on_batch(x, y)
    model.predict(x, batch_size=batch)
step("warm-up (train_on_batch + predict)", warm_up)
"""


def quick_start_code(readme: Path = REPO / "README.md") -> str:
    """The first ```python block after the "## Quick start" heading of the README."""
    text = readme.read_text(encoding="utf-8")
    m = re.search(r"^## Quick start\b.*?^```python[^\n]*\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    if m is None:
        raise ValueError(f"{readme} has no ```python block under '## Quick start'")
    return m.group(1)


def _wrap_quick_start() -> str:
    code = quick_start_code()
    return f"step('Quick start code', lambda: exec({code!r}, {{'__name__': '__main__'}}))\n"


def _child_env(cache: str, threads: int) -> dict[str, str]:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, NUMBA_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    for k in ("NUMBA_ENABLE_CUDASIM", "FASTCONV_CACHE_DIR"):
        env.pop(k, None)
    return env


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(argv: list[str], env: dict[str, str], cwd: str) -> dict[str, Any]:
    """Run a child; wall and CPU time of the whole process, plus its LATENCY_JSON line if any."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=1200)
    out: dict[str, Any] = {"process_wall": time.perf_counter() - t0, "process_cpu": _children_cpu() - cpu0}
    if proc.returncode != 0:
        out["error"] = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    for line in proc.stdout.splitlines():
        if line.startswith("LATENCY_JSON "):
            out.update(json.loads(line[len("LATENCY_JSON "):]))
    return out


def _scenario(name: str, body: str, threads: int) -> list[dict[str, Any]]:
    """Cold then warm run of one scenario in a fresh cache directory."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastconv-latency-") as tmp:
        cache = os.path.join(tmp, "numba-cache")
        for state in ("cold", "warm"):
            res = _run([sys.executable, "-c", _PRELUDE + body + "report()\n"], _child_env(cache, threads), tmp)
            rows.append({"scenario": name, "cache": state, **res})
    return rows


def _warmup_command(threads: int) -> list[dict[str, Any]]:
    """``python -m fastconv.warmup --dtype float32`` into an empty cache, then the Quick start on it."""
    with tempfile.TemporaryDirectory(prefix="fastconv-latency-") as tmp:
        env = _child_env(os.path.join(tmp, "numba-cache"), threads)
        cmd = [sys.executable, "-m", "fastconv.warmup", "--dtype", "float32", "--quiet"]
        first = {"scenario": "warmup command", "cache": "cold", **_run(cmd, env, tmp)}
        body = _PRELUDE + "import fastconv\n" + _wrap_quick_start() + "report()\n"
        after = {"scenario": "README Quick start after warmup", "cache": "warm",
                 **_run([sys.executable, "-c", body], env, tmp)}
    return [first, after]


def rows(threads: int = 2, log: Any = None) -> list[dict[str, Any]]:
    """Every scenario, cold and warm: a list of dicts (scenario, cache, process_wall,
    process_cpu, steps, compile, error?)."""
    log = log or (lambda msg: None)
    scenarios = [("import + first conv2d", _FIRST_CONV),
                 ("README Quick start", "import fastconv\n" + _wrap_quick_start()),
                 ("MNIST warm-up", _MNIST_WARMUP)]
    out: list[dict[str, Any]] = []
    for name, body in scenarios:
        log(f"latency: {name} (cold, then warm) ...")
        out += _scenario(name, body, threads)
    log("latency: python -m fastconv.warmup --dtype float32, then the Quick start ...")
    out += _warmup_command(threads)
    for r in out:
        r["goal_s"] = GOALS.get((r["scenario"], r["cache"]))
        r["measured_s"] = _goal_measure(r)
    return out


def _goal_measure(r: dict[str, Any]) -> float | None:
    """The time a goal is about: the in-process steps for the MNIST warm-up (what
    the example prints), import + first conv measured inside, else the whole process."""
    steps = r.get("steps") or {}
    if r["scenario"] == "MNIST warm-up":
        return steps.get("warm-up (train_on_batch + predict)")
    if r["scenario"] == "import + first conv2d":
        return steps.get("import + first conv2d")
    return r.get("process_wall")


def _fmt_s(v: float | None) -> str:
    return "—" if v is None else (f"{v:.2f} s" if v < 10 else f"{v:.1f} s")


def format_rows(rs: list[dict[str, Any]], top: int = 8) -> str:
    """Markdown: one table of the runs against the goals, then the compile time per kernel."""
    out = ["| scenario | cache | measured (goal) | goal | met | process wall | process CPU | fastconv compile CPU |",
           "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rs:
        goal, got = r.get("goal_s"), r.get("measured_s")
        met = "—" if goal is None or got is None else ("yes" if got <= goal else f"no (+{got - goal:.1f} s)")
        comp = sum((r.get("compile") or {}).values())
        out.append(f"| {r['scenario']} | {r['cache']} | {_fmt_s(got)} | {_fmt_s(goal)} | {met} | "
                   f"{_fmt_s(r.get('process_wall'))} | {_fmt_s(r.get('process_cpu'))} | {_fmt_s(comp)} |"
                   + (f" error: {r['error']}" if r.get("error") else ""))
    out += ["", "'measured': the MNIST warm-up step as the example prints it; import + first conv2d "
            "measured inside the process; otherwise the whole process, interpreter start to exit. "
            "Goals are wall seconds on a quiet 2-core machine; on a loaded machine compare the CPU column.", ""]
    for r in rs:
        comp = r.get("compile") or {}
        if r["cache"] != "cold" or not comp:
            continue
        ranked = sorted(comp.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"`{k.rsplit('.', 1)[-1]}` {v:.1f}" for k, v in ranked[:top])
        rest = sum(v for _, v in ranked[top:])
        out.append(f"- {r['scenario']}, cold: compile CPU s per kernel: {shown}"
                   + (f", {len(ranked) - top} others {rest:.1f}" if len(ranked) > top else ""))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)
    rs = rows(args.threads, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_rows(rs))
    if args.json:
        args.json.write_text(json.dumps({"loadavg": os.getloadavg(), "rows": rs}, indent=1))
    return 1 if any(r.get("error") for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
