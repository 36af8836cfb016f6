"""CUDA backend: hand-written ``numba.cuda`` kernels (package numba-cuda).

This package's namespace is the backend interface that ``fastconv/__init__.py``
calls through ``_dispatch.backend`` (the same names as ``fastconv.cpu``).  It is
imported only when a CUDA array reaches a public function, and importing it
does not import ``numba.cuda`` either: ``is_available``/``require_available``
probe lazily, and the kernel modules (which import ``numba.cuda``) are loaded
on first use.  Arguments arriving here are validated, of the compute dtype and
C-contiguous device arrays; results are numba device arrays.

Modules: ``_config`` (simulator or GPU, the device-function decorator),
``_streams`` (which device and stream a call runs on), ``_geometry`` (the
geometry value a kernel receives, index helpers), ``_launch_plan`` (tile sizes,
split-K and grid decisions as pure functions), ``_arrays`` (interop, casts,
allocation), ``conv_direct`` (output-stationary direct convolution),
``conv_im2col`` (implicit-GEMM convolution and the weight gradient), ``pool``,
``_ptx`` (every kernel's signature and PTX compilation without a GPU: tests and
``benchmarks/cuda_static.py`` only).
Every reduction has a fixed order (no float atomics): results are bit-identical
run to run, and on every GPU (split decisions use a fixed reference GPU).  Tile
sizes are smaller under numba-cuda's simulator (``NUMBA_ENABLE_CUDASIM=1``),
which runs every thread as a Python thread.

Devices and streams: every call runs on the device holding its inputs (inputs
on two devices are a ``ValueError``) and on the stream of its inputs (torch's
current stream for torch tensors, the ``__cuda_array_interface__`` v3 stream,
a numba array's ``.stream``, else numba's default stream); see ``_streams`` and
``docs/cuda.md``.

Tests: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q`` (simulator,
tiny shapes); on a GPU machine ``python -m pytest tests/cuda -q`` runs the same
matrix on the GPU and ``-m gpu`` selects the real-size suite;
``python benchmarks/gpu_bench.py`` compares with cuDNN.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

__all__ = [
    "is_available",
    "require_available",
    "unavailable_reason",
    "asarray",
    "ascompute",
    "zeros",
    "index_range",
    "conv2d_forward",
    "conv2d_backward",
    "max_pool2d_forward",
    "max_pool2d_backward",
]


def unavailable_reason() -> str | None:
    """None if kernels can run (a GPU, or numba-cuda's simulator), else why not."""
    if importlib.util.find_spec("numba_cuda") is None:
        return "numba-cuda is not installed (pip install 'numba-cuda[cu12]' or 'numba-cuda[cu13]' to match your driver)"
    try:
        from numba import cuda
    except Exception as exc:  # e.g. cuda-bindings missing
        return f"numba.cuda cannot be imported: {type(exc).__name__}: {exc}"
    try:
        if cuda.is_available():
            return None
    except Exception as exc:  # pragma: no cover - driver errors
        return f"numba.cuda.is_available() failed: {type(exc).__name__}: {exc}"
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM", "0")
    return "numba.cuda.is_available() is False: no usable NVIDIA GPU/driver was found" + (
        ""
        if sim not in ("", "0")
        else " (for testing without a GPU set NUMBA_ENABLE_CUDASIM=1 before numba is imported)"
    )


_unavailable_reason = unavailable_reason  # the name before it was public


def is_available() -> bool:
    """True if CUDA kernels can run here: numba-cuda importable and a GPU (or the simulator) present."""
    return unavailable_reason() is None


def require_available() -> None:
    """Raise ``RuntimeError`` saying why no GPU can be used, if none can."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"fastconv got CUDA arrays but cannot run CUDA kernels: {reason}")


# --------------------------------------------------------------------------- backend interface


def asarray(a: Any, name: str):
    """A numba device array viewing ``a`` (zero-copy), real dtype checked."""
    from ._arrays import asarray as _asarray

    return _asarray(a, name)


def ascompute(a: Any, dtype: Any):
    """C-contiguous device array of ``dtype`` (device-side cast/copy only if needed)."""
    from ._arrays import ascompute as _ascompute

    return _ascompute(a, dtype)


def zeros(shape: tuple[int, ...], dtype: Any):
    from ._arrays import zeros as _zeros

    return _zeros(shape, dtype)


def index_range(indices: Any) -> tuple[int, int]:
    """(min, max) of an int64 device array (device reduction; two ints come back)."""
    from ._arrays import index_range as _index_range

    return _index_range(indices)


def conv2d_forward(x: Any, weight: Any, bias: Any, p: Any, algorithm: str) -> Any:
    """y (N, K, OH, OW) by ``algorithm`` ("direct" or "im2col"), on the inputs' device and stream."""
    from . import _streams

    with _streams.on_inputs(x=x, weight=weight, bias=bias):
        if algorithm == "direct":
            from .conv_direct import conv2d_forward_direct

            return conv2d_forward_direct(x, weight, bias, p)
        from .conv_im2col import conv2d_forward_im2col

        return conv2d_forward_im2col(x, weight, bias, p)


def conv2d_backward(
    gy: Any, x: Any, weight: Any, p: Any, algorithm: str, need_input_grad: bool = True
) -> tuple[Any, Any, Any]:
    """(gx, gw, gb); gx is None (no allocation, no launch) when ``need_input_grad`` is False."""
    from . import _streams

    with _streams.on_inputs(grad_output=gy, x=x, weight=weight):
        if algorithm == "direct":
            from .conv_direct import conv2d_backward_direct

            return conv2d_backward_direct(gy, x, weight, p, need_input_grad)
        from .conv_im2col import conv2d_backward_im2col

        return conv2d_backward_im2col(gy, x, weight, p, need_input_grad)


def max_pool2d_forward(x: Any, p: Any, return_indices: bool) -> Any:
    from . import _streams
    from .pool import max_pool2d_forward as fwd

    with _streams.on_inputs(x=x):
        return fwd(x, p, return_indices)


def max_pool2d_backward(gy: Any, indices: Any, p: Any) -> Any:
    """grad_x; an index outside its plane is skipped on the device (never written out of
    bounds), so callers may leave out ``index_range`` for indices their forward made."""
    from . import _streams
    from .pool import max_pool2d_backward as bwd

    with _streams.on_inputs(grad_output=gy, indices=indices):
        return bwd(gy, indices, p)


# --------------------------------------------------------------------------- surface ops (issue 15)


def on_inputs(**arrays: Any) -> Any:
    """Context of one public op made of several backend calls: the device and stream of
    ``arrays`` (``_streams``' rule), kept by every backend call inside it."""
    from . import _streams

    return _streams.on_inputs(**arrays)


def avg_pool2d_forward(x: Any, p: Any):
    from . import _streams
    from .avg_pool import avg_pool2d_forward as fwd

    with _streams.on_inputs(x=x):
        return fwd(x, p)


def avg_pool2d_backward(gy: Any, p: Any):
    from . import _streams
    from .avg_pool import avg_pool2d_backward as bwd

    with _streams.on_inputs(grad_output=gy):
        return bwd(gy, p)


def conv2d_input_grad(gy: Any, weight: Any, plan: Any):
    """conv2d's grad_x alone (the transposed convolution) by the plan's backward algorithm."""
    from . import _streams
    from .surface import conv2d_input_grad as gx

    with _streams.on_inputs(grad_output=gy, weight=weight):
        return gx(gy, weight, plan)


def add_bias(y: Any, bias: Any):
    from . import _streams
    from .surface import add_bias as add

    with _streams.on_inputs(y=y, bias=bias):
        return add(y, bias)


def channel_sums(gy: Any):
    from . import _streams
    from .surface import channel_sums as sums

    with _streams.on_inputs(grad_output=gy):
        return sums(gy)


def pad_end(x: Any, rows: int, cols: int):
    return pad_input(x, (0, 0, rows, cols), "zeros")


def crop(a: Any, h: int, w: int):
    from .surface import crop as crop_

    return crop_(a, h, w)  # a device-side copy: ascompute follows the rule itself


def pad_input(x: Any, pads: Any, mode: str):
    from . import _streams
    from .surface import pad_input as pad_

    with _streams.on_inputs(x=x):
        return pad_(x, pads, mode)


def fold_input(gp: Any, pads: Any, mode: str):
    from . import _streams
    from .surface import fold_input as fold_

    with _streams.on_inputs(grad_input=gp):
        return fold_(gp, pads, mode)


def max_unpool2d_forward(x: Any, indices: Any, out_hw: Any):
    from . import _streams
    from .surface import max_unpool2d_forward as fwd

    with _streams.on_inputs(x=x, indices=indices):
        return fwd(x, indices, out_hw)


def max_unpool2d_backward(gy: Any, indices: Any):
    from . import _streams
    from .surface import max_unpool2d_backward as bwd

    with _streams.on_inputs(grad_output=gy, indices=indices):
        return bwd(gy, indices)
