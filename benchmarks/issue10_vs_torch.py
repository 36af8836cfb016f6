"""fastconv auto (and named alternatives) vs torch on the shapes issue 10's helper W changed.

    python -m benchmarks.issue10_vs_torch

float32, 2 threads for numba and torch, forward with bias, torch's backward as the bare
``torch.ops.aten.convolution_backward``; every callable warmed up, then timed interleaved
round-robin, 7 rounds, medians.  "direct-scatter" is the direct backward with the sub-pixel
grids removed from its plan (the strided grad_x before this change).  Results:
benchmarks/results/issue10-W-notes.md.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

import fastconv

# (N, C, H, W, K, stride, padding, fastconv algorithms besides auto)
SHAPES = [
    (8, 64, 56, 56, 128, 2, 1, ("im2col", "direct-scatter")),
    (16, 128, 28, 28, 256, 2, 1, ("im2col",)),
    (8, 64, 56, 56, 64, 1, 1, ("winograd",)),
    (32, 256, 14, 14, 256, 1, 1, ("winograd",)),
]
ROUNDS = 7


def _callables(shape: tuple, torch) -> dict[str, Callable[[], object]]:
    n, c, h, w, k, s, pd, algs = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    b = np.zeros(k, np.float32)
    gy = rng.standard_normal(fastconv.conv2d(x, wt, b, stride=s, padding=pd).shape).astype(np.float32)
    tx, tw, tb, tg = (torch.from_numpy(a) for a in (x, wt, b, gy))
    fns = {"torch fwd": lambda: torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=pd),
           "torch bwd": lambda: torch.ops.aten.convolution_backward(tg, tx, tw, [k], [s, s], [pd, pd], [1, 1], False,
                                                                    [0, 0], 1, [True, True, True])}
    for a in ("auto", *algs):
        if a == "direct-scatter":
            plan = fastconv.plan_conv2d(x.shape, wt.shape, stride=s, padding=pd, algorithm="direct")
            op = fastconv.Conv2dOp.from_plan(dataclasses.replace(plan, cpu=dataclasses.replace(
                plan.cpu, grad_input_phases=None)))
            fns[a + " bwd"] = lambda op=op: op.backward_from(gy, x, wt)
            continue
        fns[a + " fwd"] = lambda a=a: fastconv.conv2d(x, wt, b, stride=s, padding=pd, algorithm=a)
        fns[a + " bwd"] = lambda a=a: fastconv.conv2d_backward(gy, x, wt, stride=s, padding=pd, algorithm=a)
    return fns


def main() -> None:
    import numba
    import torch

    numba.set_num_threads(2)
    torch.set_num_threads(2)
    for shape in SHAPES:
        fns = _callables(shape, torch)
        for f in fns.values():
            f()
        times: dict[str, list[float]] = {q: [] for q in fns}
        for _ in range(ROUNDS):
            for q, f in fns.items():
                t = time.perf_counter()
                f()
                times[q].append(time.perf_counter() - t)
        med = {q: float(np.median(v)) * 1e3 for q, v in times.items()}
        n, c, h, w, k, s, pd, _ = shape
        cells = [f"{q} {v:.1f} ms" + ("" if q.startswith("torch") else f" ({v / med['torch ' + q.split()[-1]]:.2f}x)")
                 for q, v in med.items()]
        print(f"({n},{c},{h},{w})->{k} 3x3 s{s} p{pd}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
