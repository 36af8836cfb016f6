"""The machine's practical ceilings, measured in the same run as the kernels.

* SGEMM GFLOP/s: ``numpy.matmul`` of two n x n float32 matrices (NumPy's
  OpenBLAS, 2 n^3 flops) and ``torch.matmul`` of the same (torch's BLAS, at
  torch's thread count); the larger is the float32 compute peak a convolution
  row is compared with.
* Copy GB/s: bytes read + bytes written per second copying a large float32
  array, once with ``numpy.copyto`` (one thread) and once with a Numba
  ``prange`` loop (all numba threads, as the pooling kernels run); the larger is
  the memory ceiling pooling is compared with.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _parallel_copy(dst: np.ndarray, src: np.ndarray) -> None:
    # Chunks of 4096 elements per iteration: enough work per prange step and a
    # simple inner loop that LLVM vectorises.
    n = src.size
    chunk = 4096
    for b in numba.prange((n + chunk - 1) // chunk):
        lo = b * chunk
        hi = min(lo + chunk, n)
        for i in range(lo, hi):
            dst[i] = src[i]


def _median_time(fn: Any, repeats: int) -> float:
    fn()  # warm-up: page faults, BLAS thread start, JIT
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_sgemm(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Median GFLOP/s of an n x n x n float32 matmul."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    t = _median_time(lambda: np.matmul(a, b, out=c), repeats)
    return {"n": n, "seconds": t, "gflops": 2.0 * n**3 / t / 1e9}


def measure_torch_sgemm(n: int = 2048, repeats: int = 5) -> dict[str, Any] | None:
    """Median GFLOP/s of an n x n x n float32 ``torch.matmul``; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    g = torch.Generator().manual_seed(0)
    a = torch.randn((n, n), generator=g)
    b = torch.randn((n, n), generator=g)
    c = torch.empty((n, n))
    t = _median_time(lambda: torch.matmul(a, b, out=c), repeats)
    return {"n": n, "seconds": t, "gflops": 2.0 * n**3 / t / 1e9, "threads": torch.get_num_threads()}


def measure_copy(nbytes: int = 256 << 20, repeats: int = 5) -> dict[str, float]:
    """Median copy bandwidth (read + write bytes per second), NumPy and Numba."""
    n = max(1, nbytes // 4)
    src = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    dst = np.empty_like(src)
    t_np = _median_time(lambda: np.copyto(dst, src), repeats)
    t_nb = _median_time(lambda: _parallel_copy(dst, src), repeats)
    moved = 2.0 * n * 4
    gbs_np, gbs_nb = moved / t_np / 1e9, moved / t_nb / 1e9
    return {"bytes": n * 4, "numpy_gbs": gbs_np, "numba_gbs": gbs_nb, "gbs": max(gbs_np, gbs_nb),
            "numba_threads": numba.get_num_threads()}
