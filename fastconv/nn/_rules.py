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

__all__ = ["relu", "relu_grad", "axpy", "sgd", "sgd_momentum", "rmsprop", "adam", "adadelta"]


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
