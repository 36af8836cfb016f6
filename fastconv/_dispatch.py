"""Backend selection: the second step of every call.

Level 1 picks the backend from the array types: host arrays (anything NumPy can
read) go to ``fastconv.cpu``, arrays exposing ``__cuda_array_interface__`` (numba
device arrays, CuPy, torch CUDA tensors; numba's simulator arrays too) go to
``fastconv.cuda``.  The convolution algorithm is the plan's choice
(``fastconv._plan``).  Both backend packages expose the same small interface
(see ``fastconv/cpu/__init__.py``; a CPU convolution takes its plan, a CUDA
one the parameters and the plan's algorithm).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


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
    """ "cuda" if the array arguments live on a GPU, "cpu" if on the host; mixing is an error."""
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
    from . import _threads, cpu

    _threads.start_numba_threads()  # before the first kernel: Numba's pool with a short spin
    return cpu
