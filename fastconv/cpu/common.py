"""Numba pieces shared by every CPU kernel module (convolution and pooling).

* ``FASTMATH``: the LLVM fast-math flags every conv kernel compiles with.
* ``tap_cols``: the output columns a kernel tap reads inside the input.
* ``bias_grad``: grad_bias = sum of grad_output over N, OH, OW.
* ``empty_bias``: the zero-length array the kernels take for "no bias".
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["FASTMATH", "bias_grad", "empty_bias", "split_task", "tap_cols"]

# Fast-math flags: only 'contract' (fuse a*b+c into one FMA) and 'reassoc'
# (reorder sums, which the vectoriser needs for reductions and which lets it
# keep several partial sums).  Both change rounding only.  We never enable
# 'nnan'/'ninf' (or the umbrella 'fast'): with them LLVM may assume no NaN/Inf
# exist and fold x*0 -> 0 or drop NaN checks, so a NaN or +-Inf input would no
# longer propagate as it does in PyTorch.  'nsz'/'arcp'/'afn' buy nothing here.
FASTMATH = {"contract", "reassoc"}


@njit(inline="always", cache=True)
def split_task(t, inner, middle):
    """(outer, middle, inner) indices of flat task t, inner varying fastest
    (the one task numbering of the parallel kernels)."""
    i = t % inner
    u = t // inner
    return u // middle, u % middle, i


def empty_bias(dtype: np.dtype) -> np.ndarray:
    """The zero-length array the kernels receive for "no bias" (keeps one signature)."""
    return np.zeros(0, dtype=dtype)


@njit(inline="always", cache=True)
def tap_cols(j, dw, pw, sw, w, ow):
    """(off, lo, hi) for column tap j: output column o reads input column
    o*sw + off (off = j*dw - pw), which lies in [0, w) exactly for o in
    [lo, hi), 0 <= lo <= hi <= ow (an empty range has lo == hi).

    Shared by the conv kernels, the prepared-buffer copies (j = phase, dw = 1)
    and pooling, so the rounding lives in one place; inlined (it runs once per
    row or tap)."""
    off = j * dw - pw
    lo = 0
    if off < 0:
        lo = min(ow, (-off + sw - 1) // sw)
    hi = 0
    if w - off > 0:
        hi = min(ow, (w - off + sw - 1) // sw)
    return off, lo, max(lo, hi)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_grad(gy, gb):
    """gb (K,) <- sum of gy (N, K, OH, OW) over N, OH, OW.

    Parallel over K; the sum runs in float64 (the pass is memory-bound, so
    the wider accumulator costs nothing and keeps float32 sums accurate)."""
    n_img, k, oh, ow = gy.shape
    plane = oh * ow
    g2 = gy.reshape(n_img, k, plane)
    for kk in prange(k):
        tot = 0.0
        for n in range(n_img):
            row = g2[n, kk]
            for i in range(plane):
                tot += row[i]
        gb[kk] = tot
    return gb
