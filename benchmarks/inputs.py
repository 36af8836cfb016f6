"""Benchmark inputs: float32 standard-normal data, weights scaled by
1/sqrt(fan_in), and enough input sets per group to cycle through ROTATE_BYTES
so that caches do not flatter small shapes."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from benchmarks.impls.numpy_im2col import numpy_max_pool2d
from benchmarks.shapes import CONV_OPS, OPS, POOL_OPS, ConvCase, PoolCase

ROTATE_BYTES = 32 << 20  # inputs cycled per benchmark: >= 8x this machine's 4 MiB L2


def n_buffers(nbytes: int, target: int = ROTATE_BYTES, lo: int = 2, hi: int = 16) -> int:
    """How many input sets to cycle so their total reaches ``target`` bytes (clamped)."""
    return int(min(hi, max(lo, math.ceil(target / max(nbytes, 1)))))


def _normal(rng: np.random.Generator, shape: Sequence[int], scale: float = 1.0) -> np.ndarray:
    a = rng.standard_normal(shape, dtype=np.float32)
    if scale != 1.0:
        a *= np.float32(scale)
    return a


def make_inputs(op: str, case: ConvCase | PoolCase, rng: np.random.Generator,
                count: int | None = None) -> list[tuple[np.ndarray, ...]]:
    """``count`` float32 input sets for ``op`` (default: enough to cycle ROTATE_BYTES).

    pool_bwd's indices come from ``numpy_max_pool2d`` on a fresh x (tie-free in
    practice: continuous random values).
    """
    p = case.params
    if op in CONV_OPS:
        fan_in = p.cg * p.kh * p.kw
        one = 4 * (p.n * p.c * p.h * p.w + p.k * fan_in + (p.n * p.k * p.oh * p.ow if op == "conv2d_bwd" else p.k))
        count = count or n_buffers(one)
        sets = []
        for _ in range(count):
            x = _normal(rng, p.x_shape)
            w = _normal(rng, p.weight_shape, 1.0 / math.sqrt(fan_in))
            if op == "conv2d_fwd":
                sets.append((x, w, _normal(rng, (p.k,))))
            else:
                sets.append((_normal(rng, p.y_shape), x, w))
        return sets
    if op in POOL_OPS:
        nx, ny = p.n * p.c * p.h * p.w, p.n * p.c * p.oh * p.ow
        one = 4 * nx + (12 * ny if op == "pool_bwd" else 0)
        count = count or n_buffers(one)
        sets = []
        for _ in range(count):
            x = _normal(rng, p.x_shape)
            if op == "pool_bwd":
                _, idx = numpy_max_pool2d(x, *case.args, return_indices=True)
                sets.append((_normal(rng, p.y_shape), idx, x))
            else:
                sets.append((x,))
        return sets
    raise ValueError(f"op must be one of {OPS}, got {op!r}")

