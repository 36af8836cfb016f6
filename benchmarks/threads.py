"""The same thread count for every library in one comparison.

* numba (fastconv's kernels): ``numba.set_num_threads``, capped by
  NUMBA_NUM_THREADS, which is read when numba is imported;
* torch: ``torch.set_num_threads``;
* OpenBLAS (NumPy's and SciPy's GEMM: the numpy-im2col baseline, the OpenBLAS
  SGEMM ceiling, fastconv.nn's Dense layers): OPENBLAS_NUM_THREADS, read when
  the library loads.  Default 1 thread: OpenBLAS's worker threads spin after
  each call and steal the cores from the next Numba or torch parallel region
  (benchmarks/README.md, "Why OpenBLAS gets one thread").

``configure_threads`` sets the environment and must run before NumPy, numba or
torch are imported; ``set_threads`` sets numba and torch at run time and says
what is in effect.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def configure_threads(n: int, blas: int | None = None) -> None:
    """Environment for ``n`` threads everywhere (OpenBLAS ``blas``, default ``n``);
    effective only before the libraries are imported."""
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(max(n, int(os.environ.get("NUMBA_NUM_THREADS", "0") or 0)))
    counts = {"OPENBLAS_NUM_THREADS": n if blas is None else blas, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
    for var, count in counts.items():
        if "numpy" not in sys.modules or var not in os.environ:
            os.environ[var] = str(count)


def set_threads(n: int) -> dict[str, Any]:
    """Give numba and torch ``n`` threads (TF32 off on a GPU); returns what is in
    effect, with the OpenBLAS environment (set before NumPy's import)."""
    import numba

    got: dict[str, Any] = {}
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    got["numba"] = numba.get_num_threads()
    try:
        import torch

        torch.set_num_threads(n)
        got["torch"] = torch.get_num_threads()
        if torch.cuda.is_available():
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
    except ImportError:
        got["torch"] = None
    got["openblas_env"] = os.environ.get("OPENBLAS_NUM_THREADS")
    return got
