"""Every implementation the benchmarks compare, one module per library:

    fastconv.py      fastconv (CPU and CUDA): "auto" plus each forced algorithm, and
                     conv2d's grad_x alone in conv_transpose2d's groups
    torch.py         PyTorch (oneDNN on the CPU, cuDNN on a GPU)
    numpy_ref.py     fastconv.reference, the float64 oracle
    numpy_im2col.py  cs231n-style NumPy im2col + BLAS, window-view pooling
    scipy.py         scipy.signal correlate/convolve (single-channel layers)
    cupy.py          the NumPy baseline on CuPy arrays

An ``Impl`` turns host arrays into its native arrays once (``bind``, outside
timing), runs one op (``fns[op](case, *native)``; GPU impls then
synchronise) and brings results back for the one correctness check
(``host``).  Implementations that are not installed or do not apply to a case
say why (``skip_reason``), so every table row and skipped test has a reason.
Listing implementations imports no optional library (the op tables are lazy).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks.shapes import ALL_OPS, CONV_OPS, OPS, POOL_OPS

from . import cupy as _cupy
from . import fastconv as _fastconv
from . import numpy_im2col as _numpy_im2col
from . import numpy_ref as _numpy_ref
from . import scipy as _scipy
from . import torch as _torch

HEADLINE = {"cpu": "fastconv-cpu", "gpu": "fastconv-cuda"}  # fastconv with algorithm="auto"
# conv2d's grad_x alone, in conv_transpose2d's forward groups (issue 15's goal divides by it)
GRAD_X = {"cpu": "fastconv-cpu-conv2d-gx", "gpu": "fastconv-cuda-conv2d-gx"}
BASELINE = {"cpu": "torch-cpu", "gpu": "cudnn-torch"}  # what "time / torch" divides by


def _identity(a: Any) -> Any:
    return a


def _noop() -> None:
    return None


@dataclass
class Impl:
    """One implementation: how to get its arrays, run an op, and read results back."""

    name: str
    device: str  # "cpu" or "gpu"
    fns: dict[str, Callable[..., Any]]
    available: Callable[[], str | None]  # None, or why it cannot run here
    applies: Callable[[str, Any], str | None] = lambda op, case: None
    to_native: Callable[[np.ndarray], Any] = _identity
    to_host: Callable[[Any], np.ndarray] = np.asarray
    sync: Callable[[], None] = _noop
    note: str = ""
    algorithm: str | None = None  # fastconv's conv algorithm ("auto" for the headline rows)
    _avail: Any = field(default=False, repr=False)

    def skip_reason(self, op: str, case: Any) -> str | None:
        if op not in self.fns:
            return f"{self.name} has no {op}"
        if self._avail is False:
            self._avail = self.available()
        return self._avail or self.applies(op, case)

    def bind(self, op: str, case: Any, inputs: Sequence[tuple[np.ndarray, ...]]) -> Callable[[int], Any]:
        """Convert every input set once; return ``call(i)`` running the op on set i."""
        native = [tuple(self.to_native(a) for a in s) for s in inputs]
        fn, sync = self.fns[op], self.sync

        def call(i: int) -> Any:
            out = fn(case, *native[i])
            sync()
            return out

        return call

    def host(self, result: Any) -> Any:
        if isinstance(result, tuple):
            return tuple(np.asarray(self.to_host(r)) for r in result)
        return np.asarray(self.to_host(result))


def _lazy(factory: Callable[[], dict[str, Callable[..., Any]]], ops: Sequence[str]) -> dict[str, Callable[..., Any]]:
    """Op table whose functions import their library on first call."""
    cache: dict[str, Any] = {}

    def make(op: str) -> Callable[..., Any]:
        def fn(*args: Any) -> Any:
            if "t" not in cache:
                cache["t"] = factory()
            return cache["t"][op](*args)

        return fn

    return {op: make(op) for op in ops}


def _fastconv_impls() -> list[Impl]:
    """fastconv "auto" (every op) on CPU and GPU, conv2d's grad_x alone, then each forced
    conv algorithm."""
    cpu = {"available": _fastconv.available}
    gpu = {"available": _fastconv.cuda_available, "to_native": _fastconv.cuda_to_native,
           "to_host": _fastconv.cuda_to_host, "sync": _fastconv.cuda_sync}
    out = []
    for dev, kw in (("cpu", cpu), ("gpu", gpu)):
        out.append(Impl(HEADLINE[dev], dev, _lazy(lambda: {**_fastconv.conv_fns("auto"), **_fastconv.pool_fns(),
                                                           **_fastconv.surface_fns()}, ALL_OPS),
                        algorithm="auto", note='algorithm="auto"', **kw))
        out.append(Impl(GRAD_X[dev], dev, _lazy(lambda d=dev: _fastconv.grad_x_fns(d), ("convt_fwd",)),
                        applies=_fastconv.grad_x_applies,
                        note="conv2d's grad_x alone (the kernel and plan conv_transpose2d runs)", **kw))
        for alg in _fastconv.algorithms():
            out.append(Impl(f"{HEADLINE[dev]}-{alg}", dev, _lazy(lambda a=alg: _fastconv.conv_fns(a), CONV_OPS),
                            applies=_fastconv.algorithm_applies(alg, dev), algorithm=alg,
                            note=f'algorithm="{alg}"', **kw))
    return out


def implementations() -> list[Impl]:
    """Every implementation, in table order (fastconv first, torch last per device)."""
    fc = _fastconv_impls()
    return [
        *[i for i in fc if i.device == "cpu"],
        Impl("numpy-ref", "cpu", _lazy(_numpy_ref.fns, ALL_OPS), lambda: None, _numpy_ref.applies,
             note="fastconv.reference, float64"),
        Impl("numpy-im2col", "cpu", _lazy(_numpy_im2col.fns, OPS), lambda: None,
             note="stride tricks + BLAS GEMM (conv); window view + max/argmax, bincount (pool)"),
        Impl("scipy-correlate", "cpu", _lazy(_scipy.fns, CONV_OPS), lambda: None, _scipy.applies),
        Impl("torch-cpu", "cpu", _lazy(_torch.fns, ALL_OPS), _torch.available, to_native=_torch.to_native,
             to_host=_torch.to_host),
        *[i for i in fc if i.device == "gpu"],
        Impl("cupy", "gpu", _lazy(_numpy_im2col.fns, OPS), _cupy.available, to_native=_cupy.to_native,
             to_host=_cupy.to_host, sync=_cupy.sync, note="the numpy-im2col code on CuPy (cuBLAS GEMM)"),
        Impl("cudnn-torch", "gpu", _lazy(_torch.fns, ALL_OPS), lambda: _torch.available(cuda=True),
             to_native=_torch.cuda_to_native, to_host=_torch.to_host, sync=_torch.cuda_sync,
             note="cuDNN fp32, TF32 off"),
    ]


def impl_names(ops: Sequence[str]) -> list[str]:
    """Names of the implementations that have at least one of ``ops``."""
    return [i.name for i in implementations() if any(op in i.fns for op in ops)]


def get_impl(name: str) -> Impl:
    for impl in implementations():
        if impl.name == name:
            return impl
    raise KeyError(name)


def select(patterns: Sequence[str]) -> list[Impl]:
    """The implementations whose name matches any shell pattern (all when empty);
    e.g. ``["fastconv-cpu*", "torch-cpu"]``.  Unknown patterns raise ValueError."""
    impls = implementations()
    if not patterns:
        return impls
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(i.name, p) for i in impls)]
    if unmatched:
        raise ValueError(f"no implementation matches {', '.join(unmatched)}; "
                         f"known: {', '.join(i.name for i in impls)}")
    return [i for i in impls if any(fnmatch.fnmatchcase(i.name, p) for p in patterns)]


__all__ = ["ALL_OPS", "BASELINE", "CONV_OPS", "GRAD_X", "HEADLINE", "OPS", "POOL_OPS", "Impl", "get_impl", "impl_names",
           "implementations", "select"]
