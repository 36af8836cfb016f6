"""Element-wise rules written once, compiled for both backends.

Each rule is a plain Python function of scalars that returns the new values;
``_ops_cpu`` compiles it with ``numba.njit`` and calls it in a loop over
flat arrays, ``_ops_cuda`` compiles it with ``numba.cuda.jit(device=True)``
and calls it from a grid-stride kernel.  Only ``math`` functions and
arithmetic appear here (both compilers accept them), and every coefficient
arrives precomputed and typed like the parameters (``1 - rho`` included), so
a float32 model updates in float32 on either device and no literal promotes
the arithmetic to float64.

The kernels that inline these rules are cached by Numba (``cache=True``), and
Numba's cache does not notice a change in another file: after editing a rule,
delete the ``__pycache__`` entries of ``_ops_cpu``/``_ops_cuda`` (or set
``NUMBA_CACHE_DIR`` to a fresh directory) before measuring or testing.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["relu", "relu_grad", "axpy", "sgd", "sgd_momentum", "rmsprop", "adam", "adadelta", "dropout_uniform"]

# splitmix64 (Steele, Lea, Flood 2014): its constants as uint64, so that every operation
# below stays in uint64 under both compilers (a Python int would promote to float64).
_GAMMA, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)


def relu(v, zero):
    """max(v, 0) with ``zero`` typed like v; NaN stays NaN (np.maximum's rule)."""
    return zero if v < 0 else v


def relu_grad(g, y):
    """g * (y > 0) for the ReLU output y (multiplying keeps NaN/Inf in g, as NumPy does)."""
    return g if y > 0 else g * 0


def axpy(y, x, a):
    """y + a*x (the L2 term added to a gradient)."""
    return y + a * x


def sgd(p, g, lr):
    """p - lr*g (no momentum)."""
    return p - lr * g


def sgd_momentum(p, g, v, lr, momentum, nesterov):
    """v = momentum*v - lr*g;  p += v  (nesterov: p += momentum*v - lr*g).  Returns (p, v)."""
    v = momentum * v - lr * g
    if nesterov:
        return p + (momentum * v - lr * g), v
    return p + v, v


def rmsprop(p, g, a, lr, rho, omr, eps):
    """a = rho*a + (1-rho)*g^2;  p -= lr * g / (sqrt(a) + eps).  Returns (p, a)."""
    a = rho * a + omr * g * g
    return p - lr * g / (math.sqrt(a) + eps), a


def adam(p, g, m, v, alpha, omb1, omb2, eps):
    """m += (g-m)(1-b1); v += (g^2-v)(1-b2); p -= alpha * m / (sqrt(v) + eps).  Returns (p, m, v)."""
    m = m + (g - m) * omb1
    v = v + (g * g - v) * omb2
    return p - alpha * m / (math.sqrt(v) + eps), m, v


def adadelta(p, g, a, b, lr, rho, omr, eps):
    """a = rho*a + (1-rho)g^2; d = sqrt(b+eps)/sqrt(a+eps)*g; b = rho*b + (1-rho)d^2; p -= lr*d.
    Returns (p, a, b)."""
    a = rho * a + omr * g * g
    d = math.sqrt(b + eps) / math.sqrt(a + eps) * g
    return p - lr * d, a, rho * b + omr * d * d


def dropout_uniform(seed, i):
    """A uniform in [0, 1) (24 random bits, exact in float32 and float64) for element i of
    the dropout mask drawn with ``seed`` (uint64): splitmix64 of the counter, stateless, so
    each element is independent of the grid that computes it and CPU and GPU agree bit for bit."""
    z = seed + (np.uint64(i) + np.uint64(1)) * _GAMMA
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    z = z ^ (z >> _S31)
    return float(z >> _S40) * 5.9604644775390625e-08  # 2**-24
