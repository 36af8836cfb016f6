"""Benchmark inputs: float32 standard-normal data, weights scaled by
1/sqrt(fan_in), and enough input sets per group to cycle through ROTATE_BYTES
so that caches do not flatter small shapes."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks.impls.numpy_im2col import numpy_max_pool2d
from benchmarks.shapes import (
    ALL_OPS,
    AVGPOOL_OPS,
    CONV_OPS,
    CONVT_OPS,
    POOL_OPS,
    UNPOOL_OPS,
    AvgPoolCase,
    ConvCase,
    ConvTransposeCase,
    PoolCase,
    UnpoolCase,
)

Case = ConvCase | PoolCase | ConvTransposeCase | AvgPoolCase | UnpoolCase

ROTATE_BYTES = 32 << 20  # inputs cycled per benchmark: >= 8x this machine's 4 MiB L2


def n_buffers(nbytes: int, target: int = ROTATE_BYTES, lo: int = 2, hi: int = 16) -> int:
    """How many input sets to cycle so their total reaches ``target`` bytes (clamped)."""
    return int(min(hi, max(lo, math.ceil(target / max(nbytes, 1)))))


def _normal(rng: np.random.Generator, shape: Sequence[int], scale: float = 1.0) -> np.ndarray:
    a = rng.standard_normal(shape, dtype=np.float32)
    if scale != 1.0:
        a *= np.float32(scale)
    return a


def make_inputs(op: str, case: Case, rng: np.random.Generator,
                count: int | None = None) -> list[tuple[np.ndarray, ...]]:
    """``count`` float32 input sets for ``op`` (default: enough to cycle ROTATE_BYTES).

    pool_bwd's indices come from ``numpy_max_pool2d`` on a fresh x (tie-free in
    practice: continuous random values).
    """
    if op in CONVT_OPS + AVGPOOL_OPS + UNPOOL_OPS:
        return _surface_inputs(op, case, rng, count)
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
    raise ValueError(f"op must be one of {ALL_OPS}, got {op!r}")


def _sets(count: int | None, one_bytes: int, make: Callable[[], tuple[np.ndarray, ...]]) -> list[tuple[np.ndarray, ...]]:
    return [make() for _ in range(count or n_buffers(one_bytes))]


def _surface_inputs(op: str, case: Any, rng: np.random.Generator,
                    count: int | None) -> list[tuple[np.ndarray, ...]]:
    """Issue 15's ops (``shapes.SURFACE_OPS``): convt_fwd (x, w), convt_bwd (gy, x, w),
    avgpool_fwd (x,), avgpool_bwd (gy, x), unpool_fwd (pooled values, indices) and
    unpool_bwd (gy, indices), the values and indices of ``numpy_max_pool2d`` on a
    fresh x (so overlapping windows that share an argmax write the same value)."""
    p = case.params
    if op in CONVT_OPS:
        fan_in = case.c_in // case.groups * case.r * case.s
        x_shape, w_shape, y_shape = case.x_shape, case.weight_shape, p.y_shape
        one = 4 * (math.prod(x_shape) + math.prod(w_shape) + (math.prod(y_shape) if op == "convt_bwd" else 0))

        def convt() -> tuple[np.ndarray, ...]:
            x, w = _normal(rng, x_shape), _normal(rng, w_shape, 1.0 / math.sqrt(fan_in))
            return (x, w) if op == "convt_fwd" else (_normal(rng, y_shape), x, w)

        return _sets(count, one, convt)
    if op in AVGPOOL_OPS:
        one = 4 * (math.prod(p.x_shape) + (math.prod(p.y_shape) if op == "avgpool_bwd" else 0))
        if op == "avgpool_fwd":
            return _sets(count, one, lambda: (_normal(rng, p.x_shape),))
        return _sets(count, one, lambda: (_normal(rng, p.y_shape), _normal(rng, p.x_shape)))
    if op in UNPOOL_OPS:
        one = 12 * math.prod(p.x_shape) + 4 * math.prod(p.y_shape)

        def unpool() -> tuple[np.ndarray, ...]:
            y, idx = numpy_max_pool2d(_normal(rng, p.y_shape), case.kernel, case.stride, case.padding,
                                      return_indices=True)
            return (np.ascontiguousarray(y), idx) if op == "unpool_fwd" else (_normal(rng, p.y_shape), idx)

        return _sets(count, one, unpool)
    raise ValueError(f"op must be one of {ALL_OPS}, got {op!r}")

