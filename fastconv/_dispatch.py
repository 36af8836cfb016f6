"""Backend and algorithm selection: the second step of every call.

Level 1 picks the backend from the array types: host arrays (anything NumPy can
read) go to ``fastconv.cpu``, arrays exposing ``__cuda_array_interface__`` (numba
device arrays, CuPy, torch CUDA tensors; numba's simulator arrays too) go to
``fastconv.cuda``.  Level 2 picks the convolution algorithm.  Both backend
packages expose the same small interface (see ``fastconv/cpu/__init__.py``), so
the public functions in ``fastconv/__init__.py`` never branch on the backend.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ._params import Conv2dParams


def is_device_array(a: Any) -> bool:
    """True for arrays that live on a CUDA device (or numba's simulated device)."""
    if type(a).__module__.startswith("numba.cuda"):  # includes the simulator's arrays
        return True
    try:
        return getattr(a, "__cuda_array_interface__", None) is not None
    except Exception:
        # torch defines the property on every tensor and raises for CPU tensors
        # (TypeError) and for CUDA tensors that require grad (RuntimeError).
        return bool(getattr(a, "is_cuda", False))


def backend_name(**arrays: Any) -> str:
    """"cuda" if the array arguments live on a GPU, "cpu" if on the host; mixing is an error."""
    on_device = {name: is_device_array(a) for name, a in arrays.items() if a is not None}
    if any(on_device.values()) and not all(on_device.values()):
        dev = [k for k, v in on_device.items() if v]
        host = [k for k, v in on_device.items() if not v]
        raise TypeError(
            f"arrays must all be on the same device: {', '.join(dev)} on the GPU but "
            f"{', '.join(host)} on the host; fastconv never copies implicitly, move them first "
            f"(numba.cuda.to_device or .copy_to_host())"
        )
    return "cuda" if any(on_device.values()) else "cpu"


def backend(name: str) -> ModuleType:
    """The backend package; fastconv.cuda is imported only when a GPU array arrives."""
    if name == "cuda":
        from . import cuda

        cuda.require_available()
        return cuda
    from . import cpu

    return cpu


def conv2d_algorithm(algorithm: str, p: Conv2dParams, backend_name: str, need_input_grad: bool = True) -> str:
    """Resolve ``algorithm="auto"``.

    CPU rule: the direct kernels (``fastconv.cpu.conv_direct``; for small
    stride-1 planes they switch to their batch-inner layout themselves),
    except for a backward that needs no grad_x when the column matrix is no
    larger than grad_output (C/groups*R*S <= K/groups, e.g. a first layer on
    1-channel images): im2col then reads grad_output in place, while direct
    copies it into its padded layout ((64,1,28,28)->32 3x3, 2 threads,
    float32: 0.64 ms vs 1.01 ms).  Measured with ``python -m
    benchmarks.report`` and scripts/bench_conv_vs_torch.py: the direct forward
    is faster than im2col's on the standard shapes (im2col's GEMMs run on the
    same register tiles, but it writes and reads a KH*KW times larger buffer).

    CUDA rule: im2col (implicit GEMM) whenever the per-group GEMM has some depth
    (C/groups * R * S >= 16 and K/groups >= 8), else direct.
    """
    if algorithm != "auto":
        return algorithm
    if backend_name != "cpu":
        if p.cg * p.kh * p.kw >= 16 and p.kg >= 8:
            return "im2col"
        return "direct"
    if not need_input_grad and p.cg * p.kh * p.kw <= p.kg:
        return "im2col"
    return "direct"
