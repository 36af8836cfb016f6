"""Build-time facts shared by the CUDA kernel modules: simulator or GPU, and the
decorator for the small device functions the kernels are made of."""

from __future__ import annotations

from typing import Any, Callable

from numba import cuda

try:  # numba-cuda keeps its own config module; old numba.cuda used numba.config
    from numba.cuda.core import config as _config
except ImportError:  # pragma: no cover - older numba-cuda
    from numba.core import config as _config

SIM = bool(_config.ENABLE_CUDASIM)

# Blocks one grid dimension may have (CUDA limit for y and z).
MAX_GRID_YZ = 65535


def device_fn(fn: Callable[..., Any]) -> Any:
    """A device function inlined into its caller by NVVM (the kernels are split into
    phases for reading; the generated code is one function, as before the split)."""
    if SIM:  # the simulator's jit has no forceinline option
        return cuda.jit(device=True)(fn)
    return cuda.jit(device=True, forceinline=True, cache=True)(fn)  # type: ignore[call-arg]  # (simulator stubs)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)
