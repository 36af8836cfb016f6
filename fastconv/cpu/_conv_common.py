"""Helpers shared by the CPU convolution kernels (``conv_direct``, ``conv_im2col``).

* ``FASTMATH``: the LLVM fast-math flags every conv kernel compiles with.
* ``embed``: copy planes into a zero-bordered, optionally polyphase, flattened
  layout (the "prepared input" of the direct kernels).  Parallel over planes.
* ``bias_grad``: grad_bias = sum of grad_output over N, OH, OW.  Parallel over
  output channels; the inner loop is a contiguous vectorised reduction.

Geometry of a prepared plane.  For strides (sh, sw) a zero-padded plane is
split into sh*sw phase planes of Hq x Wq (phase (a, b) holds padded pixels
(a + sh*i, b + sw*j)), stored one after the other.  Kernel tap (r, s) of a
convolution with dilation (dh, dw) then reads, for output pixel (oh, ow), the
element ``tap_offset(r, s) + oh*Wq + ow`` of that buffer: every tap is a
constant shift of one flattened index, whatever the stride, padding and
dilation.  For stride 1 there is one phase and Wq is the padded width (the
"pitch").
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["FASTMATH", "embed", "bias_grad", "phase_geometry", "tap_offsets", "empty_bias"]

# Fast-math flags: only 'contract' (fuse a*b+c into one FMA) and 'reassoc'
# (reorder sums, which the vectoriser needs for reductions and which lets it
# keep several partial sums).  Both change rounding only.  We never enable
# 'nnan'/'ninf' (or the umbrella 'fast'): with them LLVM may assume no NaN/Inf
# exist and fold x*0 -> 0 or drop NaN checks, so a NaN or +-Inf input would no
# longer propagate as it does in PyTorch.  'nsz'/'arcp'/'afn' buy nothing here.
FASTMATH = {"contract", "reassoc"}


def empty_bias(dtype) -> np.ndarray:
    """The zero-length array the kernels receive for "no bias" (keeps one signature)."""
    return np.zeros(0, dtype=dtype)


def phase_geometry(h: int, w: int, top: int, left: int, bottom: int, right: int,
                   sh: int, sw: int) -> tuple[int, int]:
    """(Hq, Wq): the size of each of the sh*sw phase planes of a plane padded by
    (top, bottom) x (left, right)."""
    hp, wp = h + top + bottom, w + left + right
    return -(-hp // sh), -(-wp // sw)


def tap_offsets(kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, hq: int, wq: int) -> np.ndarray:
    """Flattened offset of kernel tap (r, s) (row-major order) in a prepared buffer."""
    offs = np.empty(kh * kw, dtype=np.int64)
    for r in range(kh):
        i, a = divmod(r * dh, sh)  # row shift i inside phase row a
        for s in range(kw):
            j, b = divmod(s * dw, sw)
            offs[r * kw + s] = (a * sw + b) * hq * wq + i * wq + j
    return offs


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def embed(src, dst, top, left, sh, sw, hq, wq):
    """dst (N, C, sh*sw*hq*wq) <- src (N, C, H, W) placed at (top, left) in a
    zero plane, split into sh x sw phase planes of hq x wq (see module doc).

    Parallel over the N*C planes; each phase row is zeroed and then its valid
    columns copied (contiguous for sw == 1)."""
    n_img, c, h, w = src.shape
    nplane = n_img * c
    for t in prange(nplane):
        n = t // c
        ci = t - n * c
        d = dst[n, ci]
        for a in range(sh):
            for b in range(sw):
                base = (a * sw + b) * hq * wq
                # columns j with 0 <= b + sw*j - left < w
                j0 = 0
                if left > b:
                    j0 = (left - b + sw - 1) // sw
                j1 = 0
                if w + left > b:
                    j1 = min(wq, (w + left - b + sw - 1) // sw)
                for i in range(hq):
                    row = d[base + i * wq: base + (i + 1) * wq]
                    ih = a + sh * i - top
                    if ih < 0 or ih >= h or j1 <= j0:
                        row[:] = 0
                        continue
                    for j in range(j0):
                        row[j] = 0
                    for j in range(j1, wq):
                        row[j] = 0
                    sr = src[n, ci, ih]
                    if sw == 1:
                        s0 = b + j0 - left
                        seg = row[j0:j1]
                        sseg = sr[s0:s0 + (j1 - j0)]
                        for j in range(j1 - j0):
                            seg[j] = sseg[j]
                    else:
                        for j in range(j0, j1):
                            row[j] = sr[b + sw * j - left]
    return dst


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
