#!/usr/bin/env python
"""Max pooling on the CPU, fastconv vs PyTorch: time, GB/s and time ratio.

    flock /tmp/fastconv-bench.lock python scripts/bench_pool_vs_torch.py [--reps 40]

(Other jobs share the machine: take the lock so only one timing runs at a
time.)  For each shape, float32, torch with 2 threads (``--threads``):

- ``fwd``     fastconv.max_pool2d(x)                      vs F.max_pool2d(x)
- ``fwd+idx`` fastconv.max_pool2d(x, return_indices=True) vs the same in torch
- ``bwd``     fastconv.max_pool2d_backward(gy, idx, shape) vs
              aten.max_pool2d_with_indices_backward (what autograd runs)

fastconv is timed through its public API (validation, including the backward's
index range check, is part of the cost).  Pooling is memory-bound, so GB/s
counts the minimal traffic: read x + write y (+ write int64 indices) forward,
read gy + indices + write grad_x backward; the ceiling is a measured NumPy copy
of a large array (read + write).  fastconv and torch calls alternate in every
repetition of one process and the table shows medians, so load from other
processes hits both alike; ``ratio`` = fastconv / torch (below 1: fastconv
faster); ``min ratio`` compares the best repetitions.  Results are checked
against torch before timing.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

SHAPES = [
    ((64, 32, 26, 26), dict(kernel_size=2, stride=2, padding=0)),
    ((64, 64, 11, 11), dict(kernel_size=2, stride=2, padding=0)),
    ((32, 64, 112, 112), dict(kernel_size=3, stride=2, padding=1)),
]


def timed_pair(f_a, f_b, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """Alternate the two callables ``reps`` times (after a warm-up); seconds each."""
    for _ in range(2):
        f_a()
        f_b()
    ta, tb = np.empty(reps), np.empty(reps)
    for r in range(reps):
        t0 = time.perf_counter()
        f_a()
        t1 = time.perf_counter()
        f_b()
        t2 = time.perf_counter()
        ta[r], tb[r] = t1 - t0, t2 - t1
    return ta, tb


def copy_bandwidth(nbytes: int = 256 * 2**20, reps: int = 10) -> float:
    """GB/s of np.copyto on a large float32 array (bytes read + bytes written)."""
    a = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(b, a)
        ts.append(time.perf_counter() - t0)
    return 2 * a.nbytes / np.median(ts) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=40, help="timed repetitions per op (large shape: a quarter)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = ap.parse_args()

    import numba
    import torch
    import torch.nn.functional as F

    import fastconv

    torch.set_num_threads(args.threads)
    aten_bwd = torch.ops.aten.max_pool2d_with_indices_backward
    print(f"fastconv {fastconv.__version__}, numba {numba.__version__} ({numba.get_num_threads()} threads), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}")
    bw = copy_bandwidth()
    print(f"copy bandwidth ceiling (np.copyto, 256 MiB, read+write): {bw:.1f} GB/s\n")

    head = (f"{'shape':<20} {'pool':<8} {'op':<8} {'fastconv ms':>11} {'torch ms':>9} {'ratio':>6} "
            f"{'fc GB/s':>8} {'torch GB/s':>10} {'fc % copy':>9} {'min ratio':>9}")
    print(head)
    print("-" * len(head))
    rng = np.random.default_rng(0)
    for shape, kw in SHAPES:
        x = rng.standard_normal(shape, dtype=np.float32)
        xt = torch.from_numpy(x)
        k, s, p = kw["kernel_size"], kw["stride"], kw["padding"]
        y, idx = fastconv.max_pool2d(x, **kw, return_indices=True)
        y_t, idx_t = F.max_pool2d(xt, **kw, return_indices=True)
        np.testing.assert_array_equal(y, y_t.numpy())
        np.testing.assert_array_equal(idx, idx_t.numpy())
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        gy_t = torch.from_numpy(gy)
        gx_t = aten_bwd(gy_t, xt, [k, k], [s, s], [p, p], [1, 1], False, idx_t)
        np.testing.assert_allclose(fastconv.max_pool2d_backward(gy, idx, shape), gx_t.numpy(), rtol=1e-6)

        ops = {
            "fwd": (lambda: fastconv.max_pool2d(x, **kw), lambda: F.max_pool2d(xt, **kw),
                    x.nbytes + y.nbytes),
            "fwd+idx": (lambda: fastconv.max_pool2d(x, **kw, return_indices=True),
                        lambda: F.max_pool2d(xt, **kw, return_indices=True),
                        x.nbytes + y.nbytes + idx.nbytes),
            "bwd": (lambda: fastconv.max_pool2d_backward(gy, idx, shape),
                    lambda: aten_bwd(gy_t, xt, [k, k], [s, s], [p, p], [1, 1], False, idx_t),
                    gy.nbytes + idx.nbytes + x.nbytes),
        }
        reps = args.reps if x.nbytes < 2**26 else max(5, args.reps // 4)
        for name, (f_fc, f_t, nbytes) in ops.items():
            t_fc, t_t = timed_pair(f_fc, f_t, reps)
            m_fc, m_t = np.median(t_fc), np.median(t_t)
            print(f"{str(shape):<20} {f'k{k} s{s} p{p}':<8} {name:<8} {m_fc * 1e3:>11.3f} {m_t * 1e3:>9.3f} "
                  f"{m_fc / m_t:>6.2f} {nbytes / m_fc / 1e9:>8.1f} {nbytes / m_t / 1e9:>10.1f} "
                  f"{100 * nbytes / m_fc / 1e9 / bw:>8.0f}% {t_fc.min() / t_t.min():>9.2f}")
    print(f"\nmedians of alternating repetitions ({args.reps}; {max(5, args.reps // 4)} for the large shape); "
          f"'min ratio' compares the fastest repetitions (less sensitive to other load)")


if __name__ == "__main__":
    main()
