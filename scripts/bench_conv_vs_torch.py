"""fastconv / torch time ratios for the conv2d shapes of issue 2 (CPU, float32).

Run it from the repository root:

    python scripts/bench_conv_vs_torch.py   # on a shared machine: flock /tmp/fastconv-bench.lock python ...

For each shape (N, C, H, W, K, R, S, padding, dilation), stride 1, groups 1:
forward = conv2d with bias; backward = grad_input + grad_weight + grad_bias
(torch: ``torch.ops.aten.convolution_backward``).  torch runs with 2 threads
(``--threads``), numba with its default (all cores).  Every callable is
warmed up (JIT compilation, caches), then the callables are timed
interleaved, round-robin, ``--repeats`` times in the same process; the table
shows medians (ms) and the ratio fastconv/torch (< 1: fastconv is faster).
Before timing, every fastconv result is checked against torch (relative
error printed in the last column, worst of y, grad_x, grad_weight, grad_bias).

``--cpu-time``: one thread everywhere (torch, numba, OpenBLAS) and process
CPU time instead of wall time, minimum instead of median.  On a machine shared
with other jobs this measures kernel efficiency without the scheduling noise
(a descheduled thread stalls a parallel region); it says nothing about
parallel scaling.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if "--cpu-time" in sys.argv:  # must precede the first import of numpy (OpenBLAS reads it once)
    os.environ["OPENBLAS_NUM_THREADS"] = "1"

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fastconv  # noqa: E402
from fastconv._params import conv2d_params  # noqa: E402

SHAPES = [
    (64, 1, 28, 28, 32, 3, 3, 0, 1),
    (64, 32, 13, 13, 64, 3, 3, 0, 1),
    (32, 64, 56, 56, 64, 3, 3, 1, 1),
    (32, 256, 14, 14, 256, 3, 3, 1, 1),
    (8, 64, 56, 56, 64, 3, 3, 2, 2),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--algorithms", default="direct,im2col")
    ap.add_argument("--shapes", default="", help="comma-separated indices into the shape list (default: all)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cpu-time", action="store_true", help="1 thread, process CPU time, minimum")
    args = ap.parse_args()

    import numba
    import torch

    if args.cpu_time:
        args.threads = 1
        numba.set_num_threads(1)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    stat = np.min if args.cpu_time else np.median
    algs = [a for a in args.algorithms.split(",") if a]
    idx = [int(i) for i in args.shapes.split(",")] if args.shapes else range(len(SHAPES))
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numba threads "
          f"{numba.get_num_threads()} ({numba.threading_layer() if _launched() else 'layer not chosen yet'}), "
          f"{dtype}, {'min CPU time' if args.cpu_time else 'median wall time'} of {args.repeats} interleaved rounds")
    head = f"{'shape (N,C,H,W,K,R,S,pad,dil)':34s} {'torch fwd':>9s} {'torch bwd':>9s}"
    for a in algs:
        head += f" | {a + ' fwd':>11s} {'ratio':>5s} {a + ' bwd':>11s} {'ratio':>5s}"
    print(head + " | auto   | max rel err")
    for i in idx:
        n, c, h, w, k, r, s, pad, dil = SHAPES[i]
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
        wt = (rng.standard_normal((k, c, r, s)) / np.sqrt(c * r * s)).astype(dtype)
        b = rng.standard_normal(k).astype(dtype)
        p = conv2d_params(x.shape, wt.shape, b.shape, 1, pad, dil, 1)
        gy = rng.standard_normal(p.y_shape).astype(dtype)
        tx, tw, tb, tgy = (torch.from_numpy(a) for a in (x, wt, b, gy))
        fns = {
            "torch fwd": lambda: torch.nn.functional.conv2d(tx, tw, tb, 1, pad, dil),
            "torch bwd": lambda: torch.ops.aten.convolution_backward(
                tgy, tx, tw, [k], [1, 1], [pad, pad], [dil, dil], False, [0, 0], 1, [True, True, True]),
        }
        for a in algs:
            fns[f"{a} fwd"] = (lambda a=a: fastconv.conv2d(x, wt, b, 1, pad, dil, algorithm=a))
            fns[f"{a} bwd"] = (lambda a=a: fastconv.conv2d_backward(gy, x, wt, 1, pad, dil, algorithm=a))
        err = 0.0
        ty = fns["torch fwd"]().numpy()
        tg = [t.numpy() for t in fns["torch bwd"]()]
        for a in algs:  # correctness first (also the warm-up: compile, load caches)
            err = max(err, _rel(fns[f"{a} fwd"](), ty))
            err = max(err, *(_rel(g, t) for g, t in zip(fns[f"{a} bwd"](), tg)))
        for f in fns.values():
            f()
        times = {name: [] for name in fns}
        for _ in range(args.repeats):
            for name, f in fns.items():
                t0 = clock()
                f()
                times[name].append(clock() - t0)
        med = {name: 1e3 * float(stat(v)) for name, v in times.items()}
        line = f"{str(SHAPES[i]):34s} {med['torch fwd']:9.2f} {med['torch bwd']:9.2f}"
        for a in algs:
            line += (f" | {med[a + ' fwd']:11.2f} {med[a + ' fwd'] / med['torch fwd']:5.2f}"
                     f" {med[a + ' bwd']:11.2f} {med[a + ' bwd'] / med['torch bwd']:5.2f}")
        print(f"{line} | {fastconv.plan_conv2d(x.shape, wt.shape, padding=pad, dilation=dil).algorithm:6s} | {err:.1e}", flush=True)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _launched() -> bool:
    try:
        import numba

        numba.threading_layer()
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    main()
