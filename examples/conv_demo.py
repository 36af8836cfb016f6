"""A short tour of the functional API: convolve, pool, differentiate, compare.

    python examples/conv_demo.py                  # float32
    python examples/conv_demo.py --dtype float64

The first call of each kernel compiles it (cached on disk afterwards; see
``python -m fastconv.warmup``), so the demo prints the first and a second call.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# One OpenBLAS thread: its spinning workers would otherwise compete with Numba's
# threads for the cores (README: Threads).  Must be set before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "fastconv" / "__init__.py").is_file():
    sys.path.insert(0, str(_CHECKOUT))  # run from a checkout: its fastconv, installed or not

import fastconv  # noqa: E402
from fastconv import reference  # noqa: E402

PROG = "conv_demo.py"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line on stderr, exit status 2 (argparse's status), no usage block."""
        print(f"{PROG}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 32, 32)).astype(args.dtype)      # N, C, H, W
    weight = rng.standard_normal((16, 3, 3, 3)).astype(args.dtype)  # K, C, R, S
    bias = rng.standard_normal(16).astype(args.dtype)

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
