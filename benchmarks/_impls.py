"""Every implementation the benchmarks compare, the standard shapes, and the
flop/byte counters: one place, shared by the pytest-benchmark suites and
``python -m benchmarks.report``.

Operations (``OPS``) and the arguments their callables take:

    conv2d_fwd     (x, weight, bias)     -> y
    conv2d_bwd     (gy, x, weight)       -> (gx, gw, gb)
    pool_fwd       (x,)                  -> y
    pool_fwd_idx   (x,)                  -> (y, indices)
    pool_bwd       (gy, indices, x)      -> gx        (x only gives torch the shape)

An ``Impl`` turns host arrays into its native arrays once (``to_native``,
outside timing), runs one op (``fns[op](case, *native)``; GPU impls then
synchronise) and brings results back for the one correctness check
(``to_host``).  Implementations that are not installed or do not apply to a
case say why (``skip_reason``), so every table row and every skipped test
carries a reason.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from fastconv._params import Conv2dParams, Pool2dParams, conv2d_params, pool2d_params

OPS = ("conv2d_fwd", "conv2d_bwd", "pool_fwd", "pool_fwd_idx", "pool_bwd")
CONV_OPS = ("conv2d_fwd", "conv2d_bwd")
POOL_OPS = ("pool_fwd", "pool_fwd_idx", "pool_bwd")

# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ConvCase:
    """One conv2d problem: x (n, c, h, w), weight (k, c/groups, r, s)."""

    name: str
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    padding: int = 0
    dilation: int = 1
    stride: int = 1
    groups: int = 1

    @property
    def params(self) -> Conv2dParams:
        return conv2d_params((self.n, self.c, self.h, self.w), (self.k, self.c // self.groups, self.r, self.s),
                             None, self.stride, self.padding, self.dilation, self.groups)

    @property
    def kwargs(self) -> dict[str, int]:
        """The op's keyword arguments (PyTorch names)."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    @property
    def label(self) -> str:
        extra = f" s{self.stride}" if self.stride != 1 else ""
        extra += f" g{self.groups}" if self.groups != 1 else ""
        return (f"({self.n},{self.c},{self.h},{self.w})->{self.k} {self.r}x{self.s} "
                f"p{self.padding} d{self.dilation}{extra}")


@dataclass(frozen=True)
class PoolCase:
    """One max_pool2d problem: x (n, c, h, w), square kernel/stride/padding."""

    name: str
    n: int
    c: int
    h: int
    w: int
    kernel: int
    stride: int
    padding: int = 0
    dilation: int = 1
    ceil_mode: bool = False

    @property
    def params(self) -> Pool2dParams:
        return pool2d_params((self.n, self.c, self.h, self.w), self.kernel, self.stride, self.padding,
                             self.dilation, self.ceil_mode)

    @property
    def args(self) -> tuple[int, int, int, int, bool]:
        """(kernel_size, stride, padding, dilation, ceil_mode) in max_pool2d's order."""
        return (self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)

    @property
    def label(self) -> str:
        extra = f" d{self.dilation}" if self.dilation != 1 else ""
        extra += " ceil" if self.ceil_mode else ""
        return f"({self.n},{self.c},{self.h},{self.w}) k{self.kernel} s{self.stride} p{self.padding}{extra}"


# Issue 2's five conv shapes (the first two are also the MNIST convnet's first two
# layers at batch 64) plus the MNIST convnet's third layer.
CONV_SHAPES = (
    ConvCase("mnist-conv1", 64, 1, 28, 28, 32, 3, 3),
    ConvCase("mnist-conv2", 64, 32, 13, 13, 64, 3, 3),
    ConvCase("resnet-56", 32, 64, 56, 56, 64, 3, 3, padding=1),
    ConvCase("resnet-14", 32, 256, 14, 14, 256, 3, 3, padding=1),
    ConvCase("dilated-56", 8, 64, 56, 56, 64, 3, 3, padding=2, dilation=2),
    ConvCase("mnist-conv3", 64, 64, 5, 5, 64, 3, 3),
)
# Issue 3's three pool shapes; the first two are the MNIST convnet's pools at batch 64.
POOL_SHAPES = (
    PoolCase("mnist-pool1", 64, 32, 26, 26, 2, 2),
    PoolCase("mnist-pool2", 64, 64, 11, 11, 2, 2),
    PoolCase("resnet-pool", 32, 64, 112, 112, 3, 2, padding=1),
)
# Test mode: seconds, not minutes, and still every code path (single channel for
# scipy, padding, dilation, stride, groups, overlapping pool windows, odd sizes).
TINY_CONV_SHAPES = (
    ConvCase("tiny-1ch", 2, 1, 9, 9, 4, 3, 3),
    ConvCase("tiny-pad", 2, 3, 8, 7, 4, 3, 3, padding=1),
    ConvCase("tiny-dil-s2-g2", 1, 4, 9, 9, 4, 3, 3, padding=2, dilation=2, stride=2, groups=2),
)
TINY_POOL_SHAPES = (
    PoolCase("tiny-k2", 2, 3, 8, 8, 2, 2),
    PoolCase("tiny-k3-p1", 2, 3, 9, 7, 3, 2, padding=1),
)


@dataclass(frozen=True)
class MnistCase:
    """The Keras book's MNIST convnet trained with RMSprop, batch ``batch``.

    An epoch-equivalent is ``steps`` training steps through ``fit`` (each on a
    fresh batch of synthetic MNIST-shaped data), timed and scaled to
    ``epoch_images`` images: time * epoch_images / (steps * batch).
    """

    name: str
    batch: int
    steps: int
    epoch_images: int = 60000

    @property
    def label(self) -> str:
        return f"batch {self.batch}, {self.steps} steps"


MNIST_CASE = MnistCase("mnist-keras", 64, 20)
TINY_MNIST_CASE = MnistCase("mnist-tiny", 8, 2)

# Layer sizes of the Keras book convnet: conv 32, pool, conv 64, pool, conv 64, dense 64, dense 10.
MNIST_CONVS = ((1, 32, 28), (32, 64, 13), (64, 64, 5))  # (in, out, input size), 3x3 valid
MNIST_DENSE = ((3 * 3 * 64, 64), (64, 10))


def shapes(full: bool) -> tuple[tuple[ConvCase, ...], tuple[PoolCase, ...], MnistCase]:
    """(conv cases, pool cases, mnist case) of the full standard suite or of test mode."""
    if full:
        return CONV_SHAPES, POOL_SHAPES, MNIST_CASE
    return TINY_CONV_SHAPES, TINY_POOL_SHAPES, TINY_MNIST_CASE


# --------------------------------------------------------------------------- counters


def conv_flops(case: ConvCase, op: str = "conv2d_fwd") -> int:
    """2*N*K*OH*OW*(C/groups)*R*S for the forward; the backward (grad_x plus
    grad_weight, each a GEMM of the forward's size; grad_bias is negligible)
    counts twice that."""
    f = case.params.flops
    return 2 * f if op == "conv2d_bwd" else f


def pool_bytes(case: PoolCase, op: str, itemsize: int = 4) -> int:
    """Minimal DRAM traffic: every input read once and every output written once.

    pool_fwd: x + y; pool_fwd_idx: x + y + int64 indices; pool_bwd: gy + int64
    indices read, gx written (its zero fill included: every gx element is
    written exactly once at minimum).
    """
    p = case.params
    nx, ny = p.n * p.c * p.h * p.w, p.n * p.c * p.oh * p.ow
    if op == "pool_fwd":
        return (nx + ny) * itemsize
    if op == "pool_fwd_idx":
        return (nx + ny) * itemsize + ny * 8
    if op == "pool_bwd":
        return ny * (itemsize + 8) + nx * itemsize
    raise ValueError(f"op must be one of {POOL_OPS}, got {op!r}")


def mnist_step_flops(batch: int) -> int:
    """Flops of one training step: forward of every conv and dense layer, times 3
    (the backward computes two products of the forward's size per layer; the
    first conv's unneeded grad_x is counted too, as fastconv computes it).
    Pooling, activations, loss and the optimizer are memory-bound and not counted."""
    fwd = 0
    for cin, cout, size in MNIST_CONVS:
        fwd += 2 * batch * cout * (size - 2) ** 2 * cin * 9
    for fin, fout in MNIST_DENSE:
        fwd += 2 * batch * fin * fout
    return 3 * fwd


# --------------------------------------------------------------------------- inputs


ROTATE_BYTES = 32 << 20  # inputs cycled per benchmark: >= 8x this machine's 4 MiB L2


def n_buffers(nbytes: int, target: int = ROTATE_BYTES, lo: int = 2, hi: int = 16) -> int:
    """How many input sets to cycle so their total reaches ``target`` bytes (clamped)."""
    return int(min(hi, max(lo, math.ceil(target / max(nbytes, 1)))))


def _normal(rng: np.random.Generator, shape: Sequence[int], scale: float = 1.0) -> np.ndarray:
    a = rng.standard_normal(shape, dtype=np.float32)
    if scale != 1.0:
        a *= np.float32(scale)
    return a


def make_inputs(op: str, case: ConvCase | PoolCase, rng: np.random.Generator,
                count: int | None = None) -> list[tuple[np.ndarray, ...]]:
    """``count`` float32 input sets for ``op`` (default: enough to cycle ROTATE_BYTES).

    pool_bwd's indices come from ``numpy_max_pool2d`` on a fresh x (tie-free in
    practice: continuous random values).
    """
    p = case.params
    if op in CONV_OPS:
        fan_in = p.cg * p.kh * p.kw
        one = 4 * (p.n * p.c * p.h * p.w + p.k * fan_in + (p.n * p.k * p.oh * p.ow if op == "conv2d_bwd" else p.k))
        count = count or n_buffers(one)
        sets = []
        for _ in range(count):
            x = _normal(rng, p.x_shape)
            w = _normal(rng, p.weight_shape, 1.0 / math.sqrt(fan_in))
            if op == "conv2d_fwd":
                sets.append((x, w, _normal(rng, (p.k,))))
            else:
                sets.append((_normal(rng, p.y_shape), x, w))
        return sets
    if op in POOL_OPS:
        nx, ny = p.n * p.c * p.h * p.w, p.n * p.c * p.oh * p.ow
        one = 4 * nx + (12 * ny if op == "pool_bwd" else 0)
        count = count or n_buffers(one)
        sets = []
        for _ in range(count):
            x = _normal(rng, p.x_shape)
            if op == "pool_bwd":
                _, idx = numpy_max_pool2d(x, *case.args, return_indices=True)
                sets.append((_normal(rng, p.y_shape), idx, x))
            else:
                sets.append((x,))
        return sets
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


# --------------------------------------------------------------------------- NumPy im2col (also CuPy)


def _xp(a: Any) -> tuple[Any, Callable[..., Any]]:
    """(array module, as_strided) for a NumPy or CuPy array, so one im2col serves both."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy, cupy.lib.stride_tricks.as_strided
    return np, np.lib.stride_tricks.as_strided


def _conv_columns(x: Any, p: Conv2dParams) -> tuple[Any, Any]:
    """(padded x, columns (groups, C/groups*R*S, N*OH*OW)): the cs231n im2col.

    A stride-tricks view (C, R, S, N, OH, OW) of the padded input is reshaped,
    which copies it once into GEMM-ready rows (channel, tap) x columns (pixel).
    """
    xp, as_strided = _xp(x)
    if p.ph or p.ph_end or p.pw or p.pw_end:
        x = xp.pad(x, ((0, 0), (0, 0), (p.ph, p.ph_end), (p.pw, p.pw_end)))
    s_n, s_c, s_h, s_w = x.strides
    win = as_strided(x, shape=(p.c, p.kh, p.kw, p.n, p.oh, p.ow),
                     strides=(s_c, p.dh * s_h, p.dw * s_w, s_n, p.sh * s_h, p.sw * s_w))
    return x, win.reshape(p.groups, p.cg * p.kh * p.kw, p.n * p.oh * p.ow)


def _gemm(a: Any, b: Any) -> Any:
    """Batched (groups) GEMM; a plain 2-D product (one BLAS call) when groups == 1."""
    if a.shape[0] == 1:
        return (a[0] @ b[0])[None]
    return a @ b


def numpy_im2col_conv2d(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                        dilation: Any = 1, groups: int = 1) -> Any:
    """conv2d as im2col (stride tricks) + one BLAS GEMM per group, in x's dtype.

    Works on NumPy and CuPy arrays (CuPy's GEMM is cuBLAS).
    """
    xp, _ = _xp(x)
    p = conv2d_params(x.shape, weight.shape, None if bias is None else bias.shape, stride, padding, dilation,
                      groups)
    _, cols = _conv_columns(x, p)
    y = _gemm(weight.reshape(p.groups, p.kg, -1), cols).reshape(p.k, p.n * p.oh * p.ow)
    if bias is not None:
        y += bias[:, None]
    return xp.ascontiguousarray(y.reshape(p.k, p.n, p.oh, p.ow).transpose(1, 0, 2, 3))


def numpy_im2col_conv2d_backward(gy: Any, x: Any, weight: Any, stride: Any = 1, padding: Any = 0,
                                 dilation: Any = 1, groups: int = 1) -> tuple[Any, Any, Any]:
    """(gx, gw, gb) by GEMMs on the im2col columns; col2im adds one strided
    slice per kernel tap (R*S NumPy adds, no per-pixel Python loop)."""
    xp, _ = _xp(x)
    p = conv2d_params(x.shape, weight.shape, None, stride, padding, dilation, groups)
    xpad, cols = _conv_columns(x, p)
    gy2 = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(p.groups, p.kg, p.n * p.oh * p.ow)
    gw = _gemm(gy2, cols.transpose(0, 2, 1)).reshape(weight.shape)
    gb = gy.sum(axis=(0, 2, 3))
    gcols = _gemm(weight.reshape(p.groups, p.kg, -1).transpose(0, 2, 1), gy2)
    gcols = gcols.reshape(p.c, p.kh, p.kw, p.n, p.oh, p.ow)
    gxp = xp.zeros(xpad.shape, dtype=gy.dtype)
    for i in range(p.kh):
        for j in range(p.kw):
            r0, c0 = i * p.dh, j * p.dw
            gxp[:, :, r0:r0 + p.sh * (p.oh - 1) + 1:p.sh, c0:c0 + p.sw * (p.ow - 1) + 1:p.sw] += \
                gcols[:, i, j].transpose(1, 0, 2, 3)
    gx = xp.ascontiguousarray(gxp[:, :, p.ph:p.ph + p.h, p.pw:p.pw + p.w])
    return gx, gw, gb


def numpy_max_pool2d(x: Any, kernel_size: int, stride: int | None = None, padding: int = 0, dilation: int = 1,
                     ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """max_pool2d on a stride-tricks window view (N, C, OH, OW, KH*KW) of the
    -inf-padded input: ``max`` and ``argmax`` over the last axis (the first
    maximum wins a tie, as in torch; benchmark inputs hold no NaN)."""
    xp, as_strided = _xp(x)
    p = pool2d_params(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    # ceil_mode's last window may reach past the right padding: pad far enough for it.
    hp = max(p.h + 2 * p.ph, (p.oh - 1) * p.sh + p.dh * (p.kh - 1) + 1)
    wp = max(p.w + 2 * p.pw, (p.ow - 1) * p.sw + p.dw * (p.kw - 1) + 1)
    if (hp, wp) != (p.h, p.w):
        xpad = xp.full((p.n, p.c, hp, wp), -xp.inf, dtype=x.dtype)
        xpad[:, :, p.ph:p.ph + p.h, p.pw:p.pw + p.w] = x
    else:
        xpad = xp.ascontiguousarray(x)
    s_n, s_c, s_h, s_w = xpad.strides
    win = as_strided(xpad, shape=(p.n, p.c, p.oh, p.ow, p.kh, p.kw),
                     strides=(s_n, s_c, p.sh * s_h, p.sw * s_w, p.dh * s_h, p.dw * s_w))
    win = win.reshape(p.n, p.c, p.oh, p.ow, p.kh * p.kw)
    if not return_indices:
        return win.max(axis=-1)
    a = win.argmax(axis=-1)
    y = xp.take_along_axis(win, a[..., None], axis=-1)[..., 0]
    ai, aj = a // p.kw, a % p.kw
    rows = (xp.arange(p.oh) * p.sh - p.ph)[:, None] + ai * p.dh
    cols = (xp.arange(p.ow) * p.sw - p.pw)[None, :] + aj * p.dw
    return y, (rows * p.w + cols).astype(xp.int64)


def numpy_max_pool2d_backward(gy: Any, indices: Any, input_shape: Sequence[int]) -> Any:
    """Scatter-add of gy to the argmax positions with one ``bincount`` (sums
    overlapping windows; accumulates in float64, returned in gy's dtype)."""
    xp, _ = _xp(gy)
    n, c, h, w = (int(v) for v in input_shape)
    plane = (xp.arange(n * c, dtype=xp.int64) * (h * w))[:, None]
    flat = (indices.reshape(n * c, -1) + plane).ravel()
    gx = xp.bincount(flat, weights=gy.ravel(), minlength=n * c * h * w)
    return gx.astype(gy.dtype).reshape(n, c, h, w)


# --------------------------------------------------------------------------- SciPy


def scipy_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, padding: Any = 0) -> np.ndarray:
    """Single-channel conv2d (C == 1, stride 1, dilation 1): one
    ``scipy.signal.correlate`` of the (N, H, W) batch per output channel
    (SciPy picks direct or FFT by its own estimate)."""
    from scipy.signal import correlate

    p = conv2d_params(x.shape, weight.shape, None if bias is None else bias.shape, 1, padding, 1, 1)
    xs = np.pad(x[:, 0], ((0, 0), (p.ph, p.ph_end), (p.pw, p.pw_end)))
    y = np.empty(p.y_shape, dtype=np.result_type(x, weight))
    for k in range(p.k):
        y[:, k] = correlate(xs, weight[k, 0][None], mode="valid")
        if bias is not None:
            y[:, k] += bias[k]
    return y


def scipy_conv2d_backward(gy: np.ndarray, x: np.ndarray, weight: np.ndarray,
                          padding: Any = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single-channel backward: grad_x as a full ``scipy.signal.convolve`` of gy
    with each filter, grad_weight as a valid ``correlate`` of x with gy."""
    from scipy.signal import convolve, correlate

    p = conv2d_params(x.shape, weight.shape, None, 1, padding, 1, 1)
    xs = np.pad(x[:, 0], ((0, 0), (p.ph, p.ph_end), (p.pw, p.pw_end)))
    gxp = np.zeros(xs.shape, dtype=gy.dtype)
    gw = np.empty(weight.shape, dtype=gy.dtype)
    for k in range(p.k):
        gw[k, 0] = correlate(xs, gy[:, k], mode="valid")[0]
        gxp += convolve(gy[:, k], weight[k, 0][None], mode="full")
    gx = np.ascontiguousarray(gxp[:, None, p.ph:p.ph + p.h, p.pw:p.pw + p.w])
    return gx, gw, gy.sum(axis=(0, 2, 3))


# --------------------------------------------------------------------------- registry


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


def _fastconv_available(*modules: str) -> str | None:
    """None if the fastconv CPU kernel modules (default: all) import, else why not."""
    import importlib

    for mod in modules or ("conv_direct", "conv_im2col", "pool"):
        try:
            importlib.import_module(f"fastconv.cpu.{mod}")
        except ImportError as exc:
            return f"fastconv.cpu.{mod} not importable ({exc})"
    return None


def _fastconv_fns(algorithm: str | None) -> dict[str, Callable[..., Any]]:
    import fastconv

    if algorithm is None:
        return {
            "pool_fwd": lambda c, x: fastconv.max_pool2d(x, *c.args),
            "pool_fwd_idx": lambda c, x: fastconv.max_pool2d(x, *c.args, return_indices=True),
            "pool_bwd": lambda c, gy, idx, x: fastconv.max_pool2d_backward(gy, idx, (c.n, c.c, c.h, c.w)),
        }
    return {
        "conv2d_fwd": lambda c, x, w, b: fastconv.conv2d(x, w, b, **c.kwargs, algorithm=algorithm),
        "conv2d_bwd": lambda c, gy, x, w: fastconv.conv2d_backward(gy, x, w, **c.kwargs, algorithm=algorithm),
    }


def _reference_fns() -> dict[str, Callable[..., Any]]:
    from fastconv import reference

    return {
        "conv2d_fwd": lambda c, x, w, b: reference.conv2d(x, w, b, **c.kwargs),
        "conv2d_bwd": lambda c, gy, x, w: reference.conv2d_backward(gy, x, w, **c.kwargs),
        "pool_fwd": lambda c, x: reference.max_pool2d(x, *c.args),
        "pool_fwd_idx": lambda c, x: reference.max_pool2d(x, *c.args, return_indices=True),
        "pool_bwd": lambda c, gy, idx, x: reference.max_pool2d_backward(gy, idx, (c.n, c.c, c.h, c.w)),
    }


def _im2col_fns() -> dict[str, Callable[..., Any]]:
    return {
        "conv2d_fwd": lambda c, x, w, b: numpy_im2col_conv2d(x, w, b, **c.kwargs),
        "conv2d_bwd": lambda c, gy, x, w: numpy_im2col_conv2d_backward(gy, x, w, **c.kwargs),
        "pool_fwd": lambda c, x: numpy_max_pool2d(x, *c.args),
        "pool_fwd_idx": lambda c, x: numpy_max_pool2d(x, *c.args, return_indices=True),
        "pool_bwd": lambda c, gy, idx, x: numpy_max_pool2d_backward(gy, idx, (c.n, c.c, c.h, c.w)),
    }


def _scipy_applies(op: str, case: Any) -> str | None:
    if case.c != 1 or case.stride != 1 or case.dilation != 1 or case.groups != 1:
        return "scipy.signal.correlate applies to single-channel input, stride 1, dilation 1 only"
    return None


# The float64 NumPy reference loops over kernel taps (conv) or output pixels
# (pool) in Python: it is timed only below these sizes (it still checks every
# other implementation once on every shape).
REFERENCE_MAX_FLOPS = 2_000_000_000
REFERENCE_MAX_POOL_OUTPUTS = 1_000


def _reference_applies(op: str, case: Any) -> str | None:
    if isinstance(case, ConvCase) and conv_flops(case, op) > REFERENCE_MAX_FLOPS:
        return f"not timed above {REFERENCE_MAX_FLOPS / 1e9:g} GFLOP (float64 reference too slow)"
    if isinstance(case, PoolCase) and op != "pool_bwd" and case.params.oh * case.params.ow > REFERENCE_MAX_POOL_OUTPUTS:
        return f"not timed above {REFERENCE_MAX_POOL_OUTPUTS} output pixels per plane (Python loop over windows)"
    return None


def _torch_available(cuda: bool = False) -> str | None:
    try:
        import torch
    except ImportError:
        return "torch not installed (pip install torch==2.13.0)"
    if cuda and not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


def _torch_fns() -> dict[str, Callable[..., Any]]:
    import torch
    import torch.nn.functional as F

    aten = torch.ops.aten

    def conv_bwd(c: ConvCase, gy: Any, x: Any, w: Any) -> Any:
        # The op autograd calls, without building a graph: all three gradients.
        return aten.convolution_backward(gy, x, w, [c.k], [c.stride] * 2, [c.padding] * 2, [c.dilation] * 2,
                                         False, [0, 0], c.groups, [True, True, True])

    def pool_bwd(c: PoolCase, gy: Any, idx: Any, x: Any) -> Any:
        k, s, p, d, ceil = c.args
        return aten.max_pool2d_with_indices_backward(gy, x, [k, k], [s, s], [p, p], [d, d], ceil, idx)

    return {
        "conv2d_fwd": lambda c, x, w, b: F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups),
        "conv2d_bwd": conv_bwd,
        "pool_fwd": lambda c, x: F.max_pool2d(x, *c.args),
        "pool_fwd_idx": lambda c, x: F.max_pool2d(x, *c.args, return_indices=True),
        "pool_bwd": pool_bwd,
    }


def _fastconv_cuda_available() -> str | None:
    try:
        import fastconv.cuda as fcuda
    except ImportError as exc:
        return f"fastconv.cuda not importable ({exc})"
    is_available = getattr(fcuda, "is_available", None)
    if is_available is None:
        return "fastconv.cuda backend not built yet"
    if not is_available():
        return "no CUDA GPU (fastconv.cuda.is_available() is False)"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "numba CUDA simulator: timings would mean nothing"
    return None


def _cupy_available() -> str | None:
    try:
        import cupy
    except ImportError:
        return "cupy not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA GPU visible to cupy"
    except Exception as exc:  # no driver
        return f"no CUDA GPU visible to cupy ({exc})"
    return None


def _lazy(factory: Callable[[], dict[str, Callable[..., Any]]], ops: Sequence[str]) -> dict[str, Callable[..., Any]]:
    """Op table whose functions import their library on first call (so listing
    implementations never imports torch/cupy/numba.cuda)."""
    table: dict[str, Callable[..., Any]] = {}
    cache: dict[str, Any] = {}

    def make(op: str) -> Callable[..., Any]:
        def fn(*args: Any) -> Any:
            if "t" not in cache:
                cache["t"] = factory()
            return cache["t"][op](*args)

        return fn

    for op in ops:
        table[op] = make(op)
    return table


def _torch_to_native(a: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(a)  # shares memory: no copy, no timing of a conversion


def _torch_cuda_to_native(a: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(a).cuda()


def _torch_sync() -> None:
    import torch

    torch.cuda.synchronize()


def _numba_cuda_to_native(a: np.ndarray) -> Any:
    from numba import cuda

    return cuda.to_device(a)


def _numba_cuda_sync() -> None:
    from numba import cuda

    cuda.synchronize()


def _cupy_to_native(a: np.ndarray) -> Any:
    import cupy

    return cupy.asarray(a)


def _cupy_to_host(a: Any) -> np.ndarray:
    import cupy

    return cupy.asnumpy(a)


def _cupy_sync() -> None:
    import cupy

    cupy.cuda.Device().synchronize()


def implementations() -> list[Impl]:
    """Every implementation, in table order (fastconv first, torch last per device)."""
    return [
        Impl("fastconv-cpu-direct", "cpu", _lazy(lambda: _fastconv_fns("direct"), CONV_OPS),
             lambda: _fastconv_available("conv_direct")),
        Impl("fastconv-cpu-im2col", "cpu", _lazy(lambda: _fastconv_fns("im2col"), CONV_OPS),
             lambda: _fastconv_available("conv_im2col")),
        Impl("fastconv-cpu", "cpu", _lazy(lambda: _fastconv_fns(None), POOL_OPS), lambda: _fastconv_available("pool")),
        Impl("numpy-ref", "cpu", _lazy(_reference_fns, OPS), lambda: None, _reference_applies,
             note="fastconv.reference, float64"),
        Impl("numpy-im2col", "cpu", _lazy(_im2col_fns, OPS), lambda: None,
             note="stride tricks + BLAS GEMM (conv); window view + max/argmax, bincount (pool)"),
        Impl("scipy-correlate", "cpu", {
            "conv2d_fwd": lambda c, x, w, b: scipy_conv2d(x, w, b, c.padding),
            "conv2d_bwd": lambda c, gy, x, w: scipy_conv2d_backward(gy, x, w, c.padding),
        }, lambda: None, _scipy_applies),
        Impl("torch-cpu", "cpu", _lazy(_torch_fns, OPS), _torch_available, to_native=_torch_to_native,
             to_host=lambda t: t.numpy()),
        Impl("fastconv-cuda-direct", "gpu", _lazy(lambda: _fastconv_fns("direct"), CONV_OPS),
             _fastconv_cuda_available, to_native=_numba_cuda_to_native, to_host=lambda a: a.copy_to_host(),
             sync=_numba_cuda_sync),
        Impl("fastconv-cuda-im2col", "gpu", _lazy(lambda: _fastconv_fns("im2col"), CONV_OPS),
             _fastconv_cuda_available, to_native=_numba_cuda_to_native, to_host=lambda a: a.copy_to_host(),
             sync=_numba_cuda_sync),
        Impl("fastconv-cuda", "gpu", _lazy(lambda: _fastconv_fns(None), POOL_OPS), _fastconv_cuda_available,
             to_native=_numba_cuda_to_native, to_host=lambda a: a.copy_to_host(), sync=_numba_cuda_sync),
        Impl("cupy", "gpu", _lazy(_im2col_fns, OPS), _cupy_available, to_native=_cupy_to_native,
             to_host=_cupy_to_host, sync=_cupy_sync, note="the numpy-im2col code on CuPy (cuBLAS GEMM)"),
        Impl("cudnn-torch", "gpu", _lazy(_torch_fns, OPS), lambda: _torch_available(cuda=True),
             to_native=_torch_cuda_to_native, to_host=lambda t: t.cpu().numpy(), sync=_torch_sync,
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


# --------------------------------------------------------------------------- threads


def set_threads(n: int) -> dict[str, Any]:
    """Give every library in this process the same thread count; returns what was set.

    numba (fastconv's kernels) via ``numba.set_num_threads`` (at most
    NUMBA_NUM_THREADS, fixed at numba's import), torch via
    ``torch.set_num_threads``.  OpenBLAS (NumPy's and SciPy's GEMM, which
    fastconv's im2col also calls) reads OPENBLAS_NUM_THREADS at load time, so
    the report sets it before importing NumPy; here it is only recorded.
    """
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


# --------------------------------------------------------------------------- checking

CHECK_TOL = 1e-4  # float32 vs float64, norm-wise: loose enough for any summation order, far below a wrong kernel's ~1


def rel_err(y: Any, ref: Any) -> float:
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if y.shape != ref.shape:
        raise AssertionError(f"shape {y.shape} != reference shape {ref.shape}")
    den = float(np.linalg.norm(ref))
    num = float(np.linalg.norm(y - ref))  # NaN anywhere -> NaN -> fails the check
    return num / den if den > 0 else num


def expected(op: str, case: Any, inputs: tuple[np.ndarray, ...]) -> Any:
    """The float64 reference result of ``op`` on one input set."""
    return _reference_fns()[op](case, *inputs)


def check(op: str, result: Any, ref: Any, tol: float = CHECK_TOL) -> float:
    """Largest relative error of a host result against the reference; raises
    AssertionError when above ``tol`` (pooling indices must match exactly)."""
    if op == "pool_fwd_idx":
        (y, idx), (ry, ridx) = result, ref
        if np.asarray(idx).dtype != np.int64 or not np.array_equal(idx, ridx):
            raise AssertionError("pooling indices differ from the reference")
        result, ref = y, ry
    outs = result if isinstance(result, tuple) else (result,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    if len(outs) != len(refs):
        raise AssertionError(f"{len(outs)} outputs, reference has {len(refs)}")
    err = max(rel_err(o, r) for o, r in zip(outs, refs))
    if not err <= tol:
        raise AssertionError(f"{op}: relative error {err:.3e} > {tol:.0e} against the float64 reference")
    return err


# --------------------------------------------------------------------------- MNIST training

MNIST_IMPLS = ("fastconv-cpu", "torch-cpu", "fastconv-cuda", "cudnn-torch")


def mnist_data(case: MnistCase, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic MNIST-shaped data for ``case.steps`` batches: x (N, 28, 28, 1)
    float32 in [0, 1) (Keras channels-last, already scaled), y (N,) int64 in [0, 10).
    Speed does not depend on the pixel values, so no dataset is needed."""
    n = case.batch * case.steps
    return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)


class MnistRunner:
    """The Keras-book convnet (conv 32 3x3 relu, pool 2, conv 64 3x3 relu, pool 2,
    conv 64 3x3 relu, flatten, dense 64 relu, dense 10 softmax; RMSprop with
    Keras' defaults, sparse categorical cross-entropy) in one implementation.

    ``step(i)`` trains on batch i, ``epoch_chunk()`` on all ``case.steps``
    batches in one pass (fastconv: one ``fit`` call, which converts NHWC to NCHW
    per batch; torch: the usual zero_grad/forward/backward/step loop on NCHW
    tensors prepared once), ``loss(i)`` is the loss on batch i.
    """

    def __init__(self, name: str, case: MnistCase, x: np.ndarray, y: np.ndarray) -> None:
        self.name, self.case, self.x, self.y = name, case, x, y
        self.sync: Callable[[], None] = _noop
        if name.startswith("fastconv"):
            self._build_fastconv(device="cuda" if name == "fastconv-cuda" else None)
        else:
            self._build_torch(cuda=name == "cudnn-torch")

    @staticmethod
    def skip_reason(name: str) -> str | None:
        if name == "fastconv-cpu":
            try:
                from fastconv import nn  # noqa: F401
            except ImportError as exc:
                return f"fastconv.nn not importable ({exc})"
            return _fastconv_available()
        if name == "fastconv-cuda":
            return MnistRunner.skip_reason("fastconv-cpu") or _fastconv_cuda_available()
        return _torch_available(cuda=name == "cudnn-torch")

    def _batch(self, i: int) -> slice:
        b = self.case.batch
        i %= self.case.steps
        return slice(i * b, (i + 1) * b)

    # fastconv.nn, through its public Keras-style API only
    def _build_fastconv(self, device: str | None) -> None:
        from fastconv.nn.zoo import keras_mnist_convnet

        model, optimizer, _ = keras_mnist_convnet(device="cpu" if device is None else device)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        self.model = model
        self.step = self._fastconv_step
        self.epoch_chunk = self._fastconv_chunk
        self.loss = self._fastconv_loss

    def _fastconv_step(self, i: int) -> None:
        s = self._batch(i)
        self.model.fit(self.x[s], self.y[s], epochs=1, batch_size=self.case.batch, verbose=0, shuffle=False)

    def _fastconv_chunk(self) -> None:
        self.model.fit(self.x, self.y, epochs=1, batch_size=self.case.batch, verbose=0, shuffle=False)

    def _fastconv_loss(self, i: int) -> float:
        s = self._batch(i)
        try:
            out = self.model.evaluate(self.x[s], self.y[s], verbose=0)
        except TypeError:
            out = self.model.evaluate(self.x[s], self.y[s])
        return float(out[0])

    # the same model in torch
    def _build_torch(self, cuda: bool) -> None:
        import torch
        from torch import nn as tnn

        dev = torch.device("cuda" if cuda else "cpu")
        self.model = tnn.Sequential(
            tnn.Conv2d(1, 32, 3), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(32, 64, 3), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(64, 64, 3), tnn.ReLU(), tnn.Flatten(),
            tnn.Linear(3 * 3 * 64, 64), tnn.ReLU(), tnn.Linear(64, 10),
        ).to(dev)
        # Keras RMSprop defaults: learning rate 1e-3, rho 0.9, epsilon 1e-7.
        self.opt = torch.optim.RMSprop(self.model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        self.xt = torch.from_numpy(np.ascontiguousarray(self.x.transpose(0, 3, 1, 2))).to(dev)
        self.yt = torch.from_numpy(self.y).to(dev)
        self.F = torch.nn.functional
        self.torch = torch
        if cuda:
            self.sync = torch.cuda.synchronize
        self.step = self._torch_step
        self.epoch_chunk = self._torch_chunk
        self.loss = self._torch_loss

    def _torch_step(self, i: int) -> None:
        s = self._batch(i)
        self.opt.zero_grad()
        # cross_entropy = log-softmax + NLL: the softmax output layer fused with the loss, as fastconv does
        loss = self.F.cross_entropy(self.model(self.xt[s]), self.yt[s])
        loss.backward()
        self.opt.step()
        self.sync()

    def _torch_chunk(self) -> None:
        for i in range(self.case.steps):
            self._torch_step(i)

    def _torch_loss(self, i: int) -> float:
        s = self._batch(i)
        with self.torch.no_grad():
            return float(self.F.cross_entropy(self.model(self.xt[s]), self.yt[s]))

    def check_learns(self, steps: int = 3) -> tuple[float, float]:
        """Warm-up that doubles as the one check: a few steps on batch 0 must lower
        its loss (a kernel that computes garbage gradients does not)."""
        before = self.loss(0)
        for _ in range(steps):
            self.step(0)
        after = self.loss(0)
        if not after < before:
            raise AssertionError(f"{self.name}: loss on a fixed batch did not fall ({before:.4f} -> {after:.4f})")
        return before, after
