"""float32 error of algorithm="winograd" against the float64 reference (issue 10).

    python -m benchmarks.winograd_error

For each tile size (F(2×2, 3×3), F(4×4, 3×3)) and input-channel count C
(C·R·S = 9·C up to 4,608): x (4, C, 16, 16) standard normal, weights
(16, C, 3, 3) standard normal / sqrt(C·9), padding 1; the relative Frobenius
error ‖y − ref‖/‖ref‖ of the forward and of grad_x (grad_output standard
normal), worst of 3 seeds.  The plan's tile choice is overridden with
``dataclasses.replace`` so both tiles run on the same planes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import fastconv
from fastconv import reference

CHANNELS = (1, 8, 32, 64, 128, 256, 512)


def _err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - ref) / np.linalg.norm(ref))


def errors(m: int, c: int, seeds: int = 3) -> tuple[float, float]:
    """(worst forward error, worst grad_x error) of F(m×m, 3×3), float32."""
    fwd = gx = 0.0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((4, c, 16, 16))
        w = rng.standard_normal((16, c, 3, 3)) / np.sqrt(9 * c)
        gy = rng.standard_normal((4, 16, 16, 16))
        plan = fastconv.plan_conv2d(x.shape, w.shape, padding=1, algorithm="winograd")
        plan = dataclasses.replace(plan, cpu=dataclasses.replace(
            plan.cpu, winograd=dataclasses.replace(plan.cpu.winograd, m=m)))
        op = fastconv.Conv2dOp.from_plan(plan)
        y = op.forward(x.astype(np.float32), w.astype(np.float32))
        g, _, _ = op.backward(gy.astype(np.float32))
        fwd = max(fwd, _err(y, reference.conv2d(x, w, padding=1)))
        gx = max(gx, _err(g, reference.conv2d_backward(gy, x, w, padding=1)[0]))
    return fwd, gx


def main() -> None:
    print("| C | C·R·S | F(2×2,3×3) forward | F(2×2,3×3) grad_x | F(4×4,3×3) forward | F(4×4,3×3) grad_x |")
    print("|---:|---:|---:|---:|---:|---:|")
    for c in CHANNELS:
        e2, e4 = errors(2, c), errors(4, c)
        print(f"| {c} | {9 * c} | {e2[0]:.2e} | {e2[1]:.2e} | {e4[0]:.2e} | {e4[1]:.2e} |")


if __name__ == "__main__":
    main()
