"""Argument normalisation and validation for every op.

Each public op turns its loose arguments into one frozen parameter object here
(``Conv2dParams``, ``Pool2dParams``) or raises ``ValueError``/``TypeError``
naming the argument, what was expected and what was given.  Every user-facing
error message of fastconv lives in this module, so backends and kernels never
validate anything.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Conv2dParams",
    "Pool2dParams",
    "as_host_array",
    "compute_dtype",
    "conv2d_params",
    "pool2d_params",
    "check_grad_output",
    "check_pool_indices",
    "pair",
    "check_bool",
    "check_algorithm",
    "CONV_ALGORITHMS",
    "pool_input_shape",
    "pool_scatter_params",
    "check_pool_index_range",
]

_DTYPE_RULE = (
    "float32 and float64 are computed natively; other real inputs are promoted with "
    "numpy.result_type and then float16 -> float32, integers -> float64"
)


# --------------------------------------------------------------------------- scalars


def pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    """Normalise an int or a pair of ints to ``(a, b)``, each ``>= minimum``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, (int, np.integer)):
        vals = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value)
    ):
        vals = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(vals) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return vals


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- arrays


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind not in "fiu":
        raise TypeError(f"{name} must have a real numeric dtype (float32/float64 preferred), got dtype {dtype}")


def as_host_array(a: Any, name: str) -> np.ndarray:
    """Turn an array-like into a NumPy array and reject non-real dtypes."""
    if a is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like, got {type(a).__name__}: {exc}") from None
    _check_dtype(arr.dtype, name)
    return arr


def compute_dtype(*dtypes: np.dtype | None) -> np.dtype:
    """The dtype an op computes in: numpy.result_type, then float16 -> float32 and
    integers -> float64.  ``None`` entries (a missing bias) are ignored."""
    dt = np.result_type(*[d for d in dtypes if d is not None])
    if dt.kind in "iu":
        return np.dtype(np.float64)
    if dt == np.float16:
        return np.dtype(np.float32)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"unsupported dtype {dt}: {_DTYPE_RULE}")
    return np.dtype(dt)


def _check_ndim(shape: tuple[int, ...], name: str, layout: str) -> None:
    if len(shape) != 4:
        raise ValueError(f"{name} must be a 4-D array {layout}, got a {len(shape)}-D array of shape {tuple(shape)}")


# --------------------------------------------------------------------------- conv2d


@dataclass(frozen=True)
class Conv2dParams:
    """Validated geometry of one conv2d call (forward and backward share it).

    Padding may be asymmetric ("same" with an even effective kernel): ``ph``/``pw``
    are the top/left pads the kernels use for indexing, ``ph_end``/``pw_end`` the
    bottom/right pads, which only enter the output size.
    """

    n: int
    c: int
    h: int
    w: int
    k: int
    kh: int
    kw: int
    groups: int
    sh: int
    sw: int
    ph: int
    pw: int
    ph_end: int
    pw_end: int
    dh: int
    dw: int
    oh: int
    ow: int

    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.c // self.groups

    @property
    def kg(self) -> int:
        """Output channels per group."""
        return self.k // self.groups

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.cg, self.kh, self.kw)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.k, self.oh, self.ow)

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the forward pass."""
        return 2 * self.n * self.k * self.oh * self.ow * self.cg * self.kh * self.kw


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """Keras/TensorFlow "same": out = ceil(size/stride); odd extra pad at the end."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - size)
    return total // 2, total - total // 2


def conv2d_params(
    x_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: Any = 1,
) -> Conv2dParams:
    """Validate conv2d arguments (PyTorch semantics) and compute the output size.

    Cached when every argument is a plain int, str, None or tuple of them
    (exact types: ``True`` or ``1.0`` must not hit the entry of ``1``): a
    training step validates the same arguments on every call.  Invalid
    arguments raise every time (exceptions are not cached)."""
    args = (x_shape, weight_shape, bias_shape, stride, padding, dilation, groups)
    return (_conv2d_params_cached if all(_plain(a) for a in args) else _conv2d_params)(args)


def _plain(a: Any) -> bool:
    t = type(a)
    return t is int or t is str or a is None or (t is tuple and all(type(v) is int for v in a))


def _conv2d_params(args: tuple[Any, ...]) -> Conv2dParams:
    """``conv2d_params`` of its arguments as one tuple."""
    x_shape, weight_shape, bias_shape, stride, padding, dilation, groups = args
    x_shape = tuple(int(v) for v in x_shape)
    weight_shape = tuple(int(v) for v in weight_shape)
    _check_ndim(x_shape, "x", "(N, C, H, W)")
    _check_ndim(weight_shape, "weight", "(K, C/groups, R, S)")
    groups = _positive_int(groups, "groups")
    sh, sw = pair(stride, "stride", 1)
    dh, dw = pair(dilation, "dilation", 1)
    n, c, h, w = x_shape
    k, cg, kh, kw = weight_shape
    if min(k, cg, kh, kw) < 1:
        raise ValueError(f"weight must have no zero-size dimension, got shape {weight_shape}")
    if min(c, h, w) < 1:
        raise ValueError(f"x must have C, H, W >= 1, got shape {x_shape}")
    if c % groups:
        raise ValueError(f"x channels ({c}) must be divisible by groups ({groups}), got x of shape {x_shape}")
    if k % groups:
        raise ValueError(
            f"weight out_channels ({k}) must be divisible by groups ({groups}), got weight of shape {weight_shape}"
        )
    if cg * groups != c:
        raise ValueError(
            f"Given groups={groups}, weight of size {list(weight_shape)}, expected input{list(x_shape)} "
            f"to have {cg * groups} channels, but got {c} channels instead"
        )
    if bias_shape is not None and tuple(bias_shape) != (k,):
        raise ValueError(f"bias must have shape ({k},) (one value per output channel), got {tuple(bias_shape)}")

    if isinstance(padding, str):
        if padding == "valid":
            ph = ph_end = pw = pw_end = 0
        elif padding == "same":
            ph, ph_end = _same_padding(h, kh, sh, dh)
            pw, pw_end = _same_padding(w, kw, sw, dw)
        else:
            raise ValueError(f'padding must be an int, a pair of ints, "same" or "valid", got {padding!r}')
    else:
        ph, pw = pair(padding, "padding", 0)
        ph_end, pw_end = ph, pw

    eff_h, eff_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    hp, wp = h + ph + ph_end, w + pw + pw_end
    if eff_h > hp or eff_w > wp:
        raise ValueError(
            f"Kernel size can't be greater than actual input size: dilated kernel ({eff_h}, {eff_w}) "
            f"(weight {kh}x{kw}, dilation ({dh}, {dw})) is larger than the padded input ({hp}, {wp})"
        )
    oh = (hp - eff_h) // sh + 1
    ow = (wp - eff_w) // sw + 1
    return Conv2dParams(n, c, h, w, k, kh, kw, groups, sh, sw, ph, pw, ph_end, pw_end, dh, dw, oh, ow)


_conv2d_params_cached = functools.lru_cache(maxsize=512)(_conv2d_params)


def check_grad_output(shape: tuple[int, ...], expected: tuple[int, ...], name: str = "grad_output") -> None:
    if tuple(int(v) for v in shape) != tuple(expected):
        raise ValueError(f"{name} must have the forward output's shape {tuple(expected)}, got {tuple(shape)}")


CONV_ALGORITHMS = ("auto", "direct", "im2col", "winograd")


def check_algorithm(algorithm: Any) -> str:
    if not isinstance(algorithm, str) or algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {CONV_ALGORITHMS}, got {algorithm!r}")
    return algorithm


# --------------------------------------------------------------------------- max_pool2d


class _ChannelsPassThrough:
    """x_shape and y_shape of the poolings and the unpooling: channels pass
    through, (N, C, H, W) -> (N, C, OH, OW).  Not a dataclass: the fields
    are the subclass's."""

    n: int
    c: int
    h: int
    w: int
    oh: int
    ow: int

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.oh, self.ow)


@dataclass(frozen=True)
class Pool2dParams(_ChannelsPassThrough):
    """Validated geometry of one max_pool2d call; padding is implicit -inf."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int
    oh: int
    ow: int
    ceil_mode: bool


def _pool_out(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    # torch's pooling_output_shape: in ceil mode a last window must start inside
    # the input or the left padding, else it is dropped.
    num = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = num // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_empty_window(size: int, k: int, s: int, p: int, d: int, out: int) -> int:
    """First output position whose window has no tap inside the input, or -1.

    Only windows starting in the left padding can be empty: every other window
    starts inside the input (torch's size rules guarantee start < size).  With a
    large dilation all taps of such a window can skip the whole input (e.g.
    kernel 2, padding 1, dilation size + 1).
    """
    o = 0
    while o < out and o * s - p < 0:
        t = o * s - p
        a = (-t + d - 1) // d  # first tap at or after row/column 0
        if a >= k or t + a * d >= size:
            return o
        o += 1
    return -1


def pool2d_params(
    x_shape: tuple[int, ...],
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
) -> Pool2dParams:
    """Validate max_pool2d arguments (PyTorch semantics) and compute the output size."""
    x_shape = tuple(int(v) for v in x_shape)
    _check_ndim(x_shape, "x", "(N, C, H, W)")
    kh, kw = pair(kernel_size, "kernel_size", 1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        sh, sw = kh, kw
    else:
        sh, sw = pair(stride, "stride", 1)
    ph, pw = pair(padding, "padding", 0)
    dh, dw = pair(dilation, "dilation", 1)
    check_bool(ceil_mode, "ceil_mode")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"padding should be at most half of kernel size, but got padding=({ph}, {pw}) "
            f"and kernel_size=({kh}, {kw}) (PyTorch's rule: padding <= kernel_size // 2 in each "
            f"dimension, whatever the dilation)"
        )
    n, c, h, w = x_shape
    if min(c, h, w) < 1:
        raise ValueError(f"x must have C, H, W >= 1, got shape {x_shape}")
    oh = _pool_out(h, kh, sh, ph, dh, bool(ceil_mode))
    ow = _pool_out(w, kw, sw, pw, dw, bool(ceil_mode))
    if oh < 1 or ow < 1:
        raise ValueError(
            f"max_pool2d output size would be ({oh}, {ow}), which is too small: x of shape {x_shape} "
            f"with kernel_size=({kh}, {kw}), stride=({sh}, {sw}), padding=({ph}, {pw}), dilation=({dh}, {dw})"
        )
    for axis, size, k, s, pad, d, out in (("H", h, kh, sh, ph, dh, oh), ("W", w, kw, sw, pw, dw, ow)):
        o = _pool_empty_window(size, k, s, pad, d, out)
        if o >= 0:
            raise ValueError(
                f"max_pool2d window {o} along {axis} lies entirely in the padding: with kernel_size={k}, "
                f"padding={pad}, dilation={d} every tap misses the input of size {size} (PyTorch returns -inf "
                f"and out-of-range indices there); use a smaller dilation or padding"
            )
    return Pool2dParams(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, bool(ceil_mode))


def pool_input_shape(input_shape: Any) -> tuple[int, int, int, int]:
    """Validate the ``input_shape`` argument of max_pool2d_backward."""
    try:
        items = tuple(input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a sequence of 4 ints (N, C, H, W), got {input_shape!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in items):
        # int() would silently truncate 4.7 or parse "4"
        raise TypeError(f"input_shape must be a sequence of 4 ints (N, C, H, W), got {input_shape!r}")
    shape = tuple(int(v) for v in items)
    if len(shape) != 4 or min(shape) < 0 or min(shape[1:]) < 1:
        raise ValueError(f"input_shape must be 4 ints (N, C, H, W) with C, H, W >= 1, got {input_shape!r}")
    return shape  # type: ignore[return-value]


def check_pool_indices(
    indices_dtype: np.dtype, indices_shape: tuple[int, ...], grad_shape: tuple[int, ...], input_shape: tuple[int, ...]
) -> None:
    """Shape/dtype checks for max_pool2d_backward (the range check needs the data)."""
    _check_ndim(tuple(grad_shape), "grad_output", "(N, C, OH, OW)")
    if np.dtype(indices_dtype) != np.int64:
        raise TypeError(f"indices must have dtype int64 (as returned by max_pool2d), got {indices_dtype}")
    if tuple(indices_shape) != tuple(grad_shape):
        raise ValueError(f"indices must have the shape of grad_output {tuple(grad_shape)}, got {tuple(indices_shape)}")
    if tuple(grad_shape[:2]) != tuple(input_shape[:2]):
        raise ValueError(
            f"grad_output must have the (N, C) of input_shape {tuple(input_shape[:2])}, got {tuple(grad_shape[:2])}"
        )


def check_pool_index_range(lo: int, hi: int, input_shape: tuple[int, ...]) -> None:
    plane = int(input_shape[2]) * int(input_shape[3])
    if lo < 0 or hi >= plane:
        raise ValueError(
            f"indices must lie in [0, {plane}) (flat offsets into each {input_shape[2]}x{input_shape[3]} "
            f"input plane), got values in [{lo}, {hi}]"
        )


def pool_scatter_params(input_shape: tuple[int, int, int, int], grad_shape: tuple[int, ...]) -> Pool2dParams:
    """Sizes for max_pool2d_backward, which only scatters by index: the window
    geometry is unknown there and set to 1x1, stride 1 (unused by the kernels)."""
    n, c, h, w = input_shape
    return Pool2dParams(n, c, h, w, 1, 1, 1, 1, 0, 0, 1, 1, int(grad_shape[2]), int(grad_shape[3]), False)


# --------------------------------------------------------------------------- avg_pool2d


@dataclass(frozen=True)
class AvgPool2dParams(_ChannelsPassThrough):
    """Validated geometry of one avg_pool2d call (PyTorch semantics).

    ``divisor``: divisor_override, or 0 for "the window's size" (all taps
    including the padding up to H + ph when ``count_include_pad``, else only
    the taps inside the input)."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    oh: int
    ow: int
    ceil_mode: bool
    count_include_pad: bool
    divisor: int


def _divisor_override(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"divisor_override must be None or a non-zero int, got {value!r}")
    if value == 0:
        raise ValueError("divisor_override must be None or a non-zero int (PyTorch: divisor must be not zero), got 0")
    return int(value)


def avg_pool2d_params(
    x_shape: tuple[int, ...],
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Any = None,
) -> AvgPool2dParams:
    """Validate avg_pool2d arguments (PyTorch semantics) and compute the output size."""
    check_bool(count_include_pad, "count_include_pad")
    divisor = _divisor_override(divisor_override)
    try:
        q = pool2d_params(x_shape, kernel_size, stride, padding, 1, ceil_mode)
    except ValueError as exc:  # the shared checks speak of max_pool2d
        raise ValueError(str(exc).replace("max_pool2d", "avg_pool2d")) from None
    return AvgPool2dParams(
        q.n,
        q.c,
        q.h,
        q.w,
        q.kh,
        q.kw,
        q.sh,
        q.sw,
        q.ph,
        q.pw,
        q.oh,
        q.ow,
        q.ceil_mode,
        bool(count_include_pad),
        divisor,
    )


def avg_pool_input_shape(input_shape: Any) -> tuple[int, int, int, int]:
    """Validate the ``input_shape`` argument of avg_pool2d_backward."""
    return pool_input_shape(input_shape)


# --------------------------------------------------------------------------- conv_transpose2d


@dataclass(frozen=True)
class ConvTranspose2dParams:
    """Validated geometry of one conv_transpose2d call, as the conv2d whose
    grad_x it is: ``conv`` maps the transposed output (N, C_out, H_out, W_out)
    to (N, C_in, H + extra_h, W + extra_w).  ``extra_h``/``extra_w`` > 0 only
    when an output_padding >= stride (allowed while < dilation): x then gets
    that many zero rows/columns appended for the forward, and conv2d's
    forward (the transposed grad_x) is cropped by as many."""

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    conv: Conv2dParams
    extra_h: int
    extra_w: int

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c_in, self.h, self.w)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return self.conv.x_shape


def conv_transpose2d_params(
    x_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: Any = 1,
    dilation: Any = 1,
) -> ConvTranspose2dParams:
    """Validate conv_transpose2d arguments (PyTorch semantics) and compute the output size
    H_out = (H - 1)*stride - 2*padding + dilation*(R - 1) + output_padding + 1."""
    x_shape = tuple(int(v) for v in x_shape)
    weight_shape = tuple(int(v) for v in weight_shape)
    _check_ndim(x_shape, "x", "(N, C_in, H, W)")
    _check_ndim(weight_shape, "weight", "(C_in, C_out/groups, R, S)")
    groups = _positive_int(groups, "groups")
    sh, sw = pair(stride, "stride", 1)
    dh, dw = pair(dilation, "dilation", 1)
    if isinstance(padding, str):
        raise TypeError(
            f'padding must be an int or a pair of ints (conv_transpose2d takes no "same"/"valid"), got {padding!r}'
        )
    ph, pw = pair(padding, "padding", 0)
    oph, opw = pair(output_padding, "output_padding", 0)
    n, c, h, w = x_shape
    cin, cog, kh, kw = weight_shape
    if min(cin, cog, kh, kw) < 1:
        raise ValueError(f"weight must have no zero-size dimension, got shape {weight_shape}")
    if min(c, h, w) < 1:
        raise ValueError(f"x must have C, H, W >= 1, got shape {x_shape}")
    if cin % groups:
        raise ValueError(
            f"weight in_channels ({cin}) must be divisible by groups ({groups}), got weight of shape {weight_shape}"
        )
    if c != cin:
        raise ValueError(
            f"Given transposed=1, weight of size {list(weight_shape)}, expected input{list(x_shape)} "
            f"to have {cin} channels, but got {c} channels instead"
        )
    cout = cog * groups
    if bias_shape is not None and tuple(bias_shape) != (cout,):
        raise ValueError(f"bias must have shape ({cout},) (one value per output channel), got {tuple(bias_shape)}")
    if (oph >= sh and oph >= dh) or (opw >= sw and opw >= dw):
        raise ValueError(
            f"output_padding must be smaller than either stride or dilation (PyTorch's rule), but got "
            f"output_padding=({oph}, {opw}), stride=({sh}, {sw}), dilation=({dh}, {dw})"
        )
    ho = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    wo = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    if ho < 1 or wo < 1:
        raise ValueError(
            f"conv_transpose2d output size would be ({ho}, {wo}), which is too small: x of shape "
            f"{x_shape}, weight {weight_shape}, stride=({sh}, {sw}), padding=({ph}, {pw}), "
            f"dilation=({dh}, {dw}), output_padding=({oph}, {opw})"
        )
    conv = conv2d_params((n, cout, ho, wo), (cin, cog, kh, kw), None, (sh, sw), (ph, pw), (dh, dw), groups)
    return ConvTranspose2dParams(n, cin, h, w, cout, conv, conv.oh - h, conv.ow - w)


# --------------------------------------------------------------------------- max_unpool2d


@dataclass(frozen=True)
class Unpool2dParams(_ChannelsPassThrough):
    """Validated geometry of one max_unpool2d call: x (N, C, H, W) -> (N, C, OH, OW)."""

    n: int
    c: int
    h: int
    w: int
    oh: int
    ow: int


def _unpool_output_size(output_size: Any, default: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """torch's _unpool_output_size: (H, W) or a longer shape ending in them,
    each strictly between default - stride and default + stride."""
    if output_size is None:
        return default
    try:
        items = tuple(output_size)
    except TypeError:
        raise TypeError(f"output_size must be None or a sequence of ints (H, W), got {output_size!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in items):
        raise TypeError(f"output_size must be None or a sequence of ints (H, W), got {output_size!r}")
    if len(items) not in (2, 3, 4):
        raise ValueError(
            f"output_size must have 2 elements (H, W) (or end in them with 3 or 4), got {len(items)}: {output_size!r}"
        )
    size = (int(items[-2]), int(items[-1]))
    for d in range(2):
        lo, hi = default[d] - stride[d], default[d] + stride[d]
        if not lo < size[d] < hi:
            raise ValueError(f'invalid output_size "{tuple(items)}" (dim {d} must be between {lo} and {hi}, exclusive)')
    return size


def max_unpool2d_params(
    x_shape: tuple[int, ...],
    indices_dtype: np.dtype,
    indices_shape: tuple[int, ...],
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    output_size: Any = None,
) -> Unpool2dParams:
    """Validate max_unpool2d arguments (PyTorch semantics) and compute the output size
    (H - 1)*stride - 2*padding + kernel_size, or ``output_size``."""
    x_shape = tuple(int(v) for v in x_shape)
    _check_ndim(x_shape, "x", "(N, C, H, W)")
    kh, kw = pair(kernel_size, "kernel_size", 1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        sh, sw = kh, kw
    else:
        sh, sw = pair(stride, "stride", 1)
    ph, pw = pair(padding, "padding", 0)
    if np.dtype(indices_dtype) != np.int64:
        raise TypeError(f"indices must have dtype int64 (as returned by max_pool2d), got {indices_dtype}")
    if tuple(int(v) for v in indices_shape) != x_shape:
        raise ValueError(f"indices must have the shape of x {x_shape}, got {tuple(indices_shape)}")
    n, c, h, w = x_shape
    default = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
    oh, ow = _unpool_output_size(output_size, default, (sh, sw))
    if oh < 1 or ow < 1:
        raise ValueError(
            f"max_unpool2d output size would be ({oh}, {ow}), which is too small: x of shape "
            f"{x_shape}, kernel_size=({kh}, {kw}), stride=({sh}, {sw}), padding=({ph}, {pw})"
        )
    return Unpool2dParams(n, c, h, w, oh, ow)


def check_unpool_index_range(lo: int, hi: int, p: Unpool2dParams) -> None:
    plane = p.oh * p.ow
    if lo < 0 or hi >= plane:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"indices must lie in [0, {plane}) (flat offsets into each {p.oh}x{p.ow} output plane), "
            f"found an invalid max index {bad} (values in [{lo}, {hi}])"
        )


# --------------------------------------------------------------------------- padding_mode


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def check_padding_mode(padding_mode: Any) -> str:
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return padding_mode


def explicit_pads(p: Conv2dParams, padding_mode: str) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of conv2d's padding, checked against the
    mode's limits (PyTorch: reflect pads < the input size, circular <= it)."""
    pads = (p.ph, p.pw, p.ph_end, p.pw_end)
    for axis, size, a, b in (("H", p.h, p.ph, p.ph_end), ("W", p.w, p.pw, p.pw_end)):
        if padding_mode == "reflect" and max(a, b) >= size:
            raise ValueError(
                f'padding_mode="reflect" needs padding smaller than the input: padding ({a}, {b}) '
                f"along {axis} of size {size}"
            )
        if padding_mode == "circular" and max(a, b) > size:
            raise ValueError(
                f'padding_mode="circular" needs padding at most the input size (wrapping around '
                f"more than once): padding ({a}, {b}) along {axis} of size {size}"
            )
    return pads
