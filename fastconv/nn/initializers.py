"""Weight initializers with Keras' formulas (``keras.initializers``).

fan_in / fan_out follow Keras: a Dense kernel (in, out) has fan_in=in, fan_out=out;
a conv kernel has fan_in = C*R*S and fan_out = K*R*S (fastconv stores it as
(K, C, R, S), Keras as (R, S, C, K); the fans are the same).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["get", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "zeros", "NAMES"]

Initializer = Callable[[tuple[int, ...], int, int, np.random.Generator, np.dtype], np.ndarray]


def _uniform(scale: float, fan: int, shape, rng, dtype) -> np.ndarray:
    limit = np.sqrt(3.0 * scale / max(1, fan))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def _truncated_normal(scale: float, fan: int, shape, rng, dtype) -> np.ndarray:
    # Keras' VarianceScaling "truncated_normal": cut at 2 stddev, stddev corrected by
    # .87962566103423978 (the stddev of a unit normal truncated to [-2, 2]).
    std = np.sqrt(scale / max(1, fan)) / 0.87962566103423978
    out = rng.standard_normal(size=shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(out) > 2.0
    return (out * std).astype(dtype)


def glorot_uniform(shape, fan_in, fan_out, rng, dtype):
    """U(-l, l), l = sqrt(6 / (fan_in + fan_out)) -- Keras' default kernel initializer."""
    return _uniform(2.0, (fan_in + fan_out) / 2.0, shape, rng, dtype)


def glorot_normal(shape, fan_in, fan_out, rng, dtype):
    return _truncated_normal(2.0, (fan_in + fan_out) / 2.0, shape, rng, dtype)


def he_uniform(shape, fan_in, fan_out, rng, dtype):
    return _uniform(2.0, fan_in, shape, rng, dtype)


def he_normal(shape, fan_in, fan_out, rng, dtype):
    return _truncated_normal(2.0, fan_in, shape, rng, dtype)


def lecun_uniform(shape, fan_in, fan_out, rng, dtype):
    return _uniform(1.0, fan_in, shape, rng, dtype)


def zeros(shape, fan_in, fan_out, rng, dtype):
    return np.zeros(shape, dtype=dtype)


_ALL: dict[str, Initializer] = {
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "zeros": zeros,
}
NAMES = tuple(_ALL)


def get(name: str) -> Initializer:
    if not isinstance(name, str) or name not in _ALL:
        raise ValueError(f"unknown kernel_initializer {name!r}; expected one of {NAMES}")
    return _ALL[name]
