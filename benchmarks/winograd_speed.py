"""Winograd against the direct path and torch on 3×3 layers, forward and backward.

``python -m benchmarks.winograd_speed [--repeats N]`` prints the table of
docs/winograd.md: interleaved medians, float32, 2 threads for every library
(``OPENBLAS_NUM_THREADS=1``), forward with bias, torch's backward the bare
``aten.convolution_backward``; the last column is what ``algorithm="auto"``
runs (forward / backward).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SHAPES = [
    ((32, 256, 14, 14), 256),
    ((8, 128, 28, 28), 128),
    ((16, 512, 7, 7), 512),
    ((8, 64, 56, 56), 64),
    ((1, 64, 56, 56), 64),
    ((64, 64, 13, 13), 64),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    import fastconv

    torch.set_num_threads(args.threads)
    fastconv.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print("| shape, 3×3 p1, float32 | direct fwd | Winograd fwd | torch fwd | direct bwd | Winograd bwd | torch bwd "
          "| auto runs |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for xs, k in SHAPES:
        ws = (k, xs[1], 3, 3)
        x = rng.standard_normal(xs).astype(np.float32)
        w = (rng.standard_normal(ws) / np.sqrt(9 * xs[1])).astype(np.float32)
        b = rng.standard_normal(k).astype(np.float32)
        gy = rng.standard_normal((xs[0], k, xs[2], xs[3])).astype(np.float32)
        xt, wt, bt, gyt = map(torch.from_numpy, (x, w, b, gy))
        fns = {
            f"f{alg}": (lambda alg=alg: fastconv.conv2d(x, w, b, padding=1, algorithm=alg))
            for alg in ("direct", "winograd")
        }
        fns["ftorch"] = lambda: torch.nn.functional.conv2d(xt, wt, bt, padding=1)
        for alg in ("direct", "winograd"):
            fns[f"b{alg}"] = lambda alg=alg: fastconv.conv2d_backward(gy, x, w, padding=1, algorithm=alg)
        fns["btorch"] = lambda: torch.ops.aten.convolution_backward(
            gyt, xt, wt, [k], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, True]
        )
        for f in fns.values():
            f()
        samples: dict[str, list[float]] = {n: [] for n in fns}
        for _ in range(args.repeats):
            for n, f in fns.items():
                t = time.perf_counter()
                f()
                samples[n].append(time.perf_counter() - t)
        med = {n: float(np.median(v)) * 1e3 for n, v in samples.items()}
        plan = fastconv.plan_conv2d(xs, ws, padding=1)

        def cell(n: str, ref: str) -> str:
            return f"{med[n]:.2f} ms ({med[n] / med[ref]:.2f}×)"

        cells = [cell("fdirect", "ftorch"), cell("fwinograd", "ftorch"), f"{med['ftorch']:.2f} ms",
                 cell("bdirect", "btorch"), cell("bwinograd", "btorch"), f"{med['btorch']:.2f} ms"]
        print(f"| {xs}→{k} | " + " | ".join(cells) + f" | {plan.algorithm} / {plan.backward_algorithm} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
