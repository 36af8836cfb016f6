"""A short tour of the functional API: convolve, pool, differentiate, compare.

    python examples/conv_demo.py
"""

from __future__ import annotations

import time

import numpy as np

import fastconv
from fastconv import reference


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)      # N, C, H, W
    weight = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)  # K, C, R, S
    bias = rng.standard_normal(16).astype(np.float32)

    for algorithm in ("direct", "im2col"):
        t0 = time.perf_counter()
        y = fastconv.conv2d(x, weight, bias, stride=1, padding="same", algorithm=algorithm)
        t1 = time.perf_counter()
        y = fastconv.conv2d(x, weight, bias, stride=1, padding="same", algorithm=algorithm)
        t2 = time.perf_counter()
        ref = reference.conv2d(x, weight, bias, padding="same")
        err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        print(f"conv2d {algorithm:7s} y{y.shape}  first call {t1 - t0:6.3f} s  "
              f"then {1e3 * (t2 - t1):6.2f} ms  rel. error vs float64 reference {err:.1e}")

    gx, gw, gb = fastconv.conv2d_backward(np.ones_like(y), x, weight, padding="same")
    print(f"conv2d_backward: grad_x{gx.shape} grad_weight{gw.shape} grad_bias{gb.shape}")

    p, idx = fastconv.max_pool2d(y, kernel_size=2, return_indices=True)
    gp = fastconv.max_pool2d_backward(np.ones_like(p), idx, y.shape)
    print(f"max_pool2d: {y.shape} -> {p.shape}; backward routes {int(gp.sum())} gradients "
          f"(one per pooled output: {p.size})")


if __name__ == "__main__":
    main()
