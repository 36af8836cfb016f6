"""The one shape table of every benchmark, and the flop and byte counters.

Shared by ``python -m benchmarks.report``, the pytest-benchmark suites
(``benchmarks/test_*_bench.py``) and the GPU script (``benchmarks/gpu_bench.py``).

Operations (``OPS``) and what one call computes:

    conv2d_fwd     conv2d with bias: (x, weight, bias) -> y
    conv2d_bwd     grad_x, grad_weight and grad_bias: (gy, x, weight) -> (gx, gw, gb)
    pool_fwd       max_pool2d values only: (x,) -> y
    pool_fwd_idx   max_pool2d with indices: (x,) -> (y, indices)
    pool_bwd       max_pool2d backward: (gy, indices, x) -> gx   (x only gives torch the shape)

The rest of PyTorch's surface (issue 15; ``SURFACE_OPS``, one family each):

    convt_fwd      conv_transpose2d without bias: (x, weight) -> y; its group also holds
                   fastconv's conv2d grad_x alone on the conv2d whose grad_x it is
                   (issue 15's goal: conv_transpose2d within 1.1x of that)
    convt_bwd      conv_transpose2d backward: (gy, x, weight) -> (gx, gw, gb)
    avgpool_fwd    avg_pool2d: (x,) -> y
    avgpool_bwd    avg_pool2d backward: (gy, x) -> gx   (x only gives torch the shape)
    unpool_fwd     max_unpool2d: (pooled x, indices) -> y
    unpool_bwd     max_unpool2d backward: (gy, indices) -> gx
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastconv._params import (
    AvgPool2dParams,
    Conv2dParams,
    ConvTranspose2dParams,
    Pool2dParams,
    Unpool2dParams,
    avg_pool2d_params,
    conv2d_params,
    conv_transpose2d_params,
    max_unpool2d_params,
    pool2d_params,
)

OPS = ("conv2d_fwd", "conv2d_bwd", "pool_fwd", "pool_fwd_idx", "pool_bwd")
CONV_OPS = ("conv2d_fwd", "conv2d_bwd")
POOL_OPS = ("pool_fwd", "pool_fwd_idx", "pool_bwd")
CONVT_OPS = ("convt_fwd", "convt_bwd")
AVGPOOL_OPS = ("avgpool_fwd", "avgpool_bwd")
UNPOOL_OPS = ("unpool_fwd", "unpool_bwd")
SURFACE_OPS = CONVT_OPS + AVGPOOL_OPS + UNPOOL_OPS
SURFACE_FAMILIES = {"convt": CONVT_OPS, "avgpool": AVGPOOL_OPS, "unpool": UNPOOL_OPS}
ALL_OPS = OPS + SURFACE_OPS
FLOP_OPS = CONV_OPS + CONVT_OPS  # measured in GFLOP/s; the others in GB/s


@dataclass(frozen=True)
class ConvCase:
    """One conv2d problem: x (n, c, h, w), weight (k, c/groups, r, s); ``source``
    names the network layer it comes from."""

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
    source: str = ""

    @property
    def params(self) -> Conv2dParams:
        return conv2d_params((self.n, self.c, self.h, self.w), (self.k, self.c // self.groups, self.r, self.s),
                             None, self.stride, self.padding, self.dilation, self.groups)

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def kwargs(self) -> dict[str, int]:
        """The op's keyword arguments (PyTorch names)."""
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}

    @property
    def label(self) -> str:
        extra = f" s{self.stride}" if self.stride != 1 else ""
        extra += f" g{self.groups}" if self.groups != 1 else ""
        return (f"({self.n},{self.c},{self.h},{self.w})->{self.k} {self.r}x{self.s} "
                f"p{self.padding} d{self.dilation}{extra}")

    @property
    def is_3x3_s1_wide(self) -> bool:
        """A 3x3 stride-1 undilated layer with C, K >= 64 (issue 10's Winograd goal)."""
        return (self.r, self.s, self.stride, self.dilation, self.groups) == (3, 3, 1, 1, 1) and min(self.c, self.k) >= 64


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
    source: str = ""

    @property
    def params(self) -> Pool2dParams:
        return pool2d_params((self.n, self.c, self.h, self.w), self.kernel, self.stride, self.padding,
                             self.dilation, self.ceil_mode)

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def args(self) -> tuple[int, int, int, int, bool]:
        """(kernel_size, stride, padding, dilation, ceil_mode) in max_pool2d's order."""
        return (self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)

    @property
    def label(self) -> str:
        extra = f" d{self.dilation}" if self.dilation != 1 else ""
        extra += " ceil" if self.ceil_mode else ""
        return f"({self.n},{self.c},{self.h},{self.w}) k{self.kernel} s{self.stride} p{self.padding}{extra}"


@dataclass(frozen=True)
class ConvTransposeCase:
    """One conv_transpose2d problem: x (n, c_in, h, w), weight (c_in, c_out/groups, r, s)."""

    name: str
    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    r: int
    s: int
    stride: int = 1
    padding: int = 0
    output_padding: int = 0
    dilation: int = 1
    groups: int = 1
    source: str = ""

    @property
    def params(self) -> ConvTranspose2dParams:
        return conv_transpose2d_params(self.x_shape, self.weight_shape, None, self.stride, self.padding,
                                       self.output_padding, self.groups, self.dilation)

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c_in, self.h, self.w)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.c_in, self.c_out // self.groups, self.r, self.s)

    @property
    def kwargs(self) -> dict[str, int]:
        """The op's keyword arguments (PyTorch names)."""
        return {"stride": self.stride, "padding": self.padding, "output_padding": self.output_padding,
                "groups": self.groups, "dilation": self.dilation}

    @property
    def label(self) -> str:
        t = self.params
        extra = f" op{self.output_padding}" if self.output_padding else ""
        extra += f" d{self.dilation}" if self.dilation != 1 else ""
        extra += f" g{self.groups}" if self.groups != 1 else ""
        return (f"({self.n},{self.c_in},{self.h},{self.w})->({self.c_out},{t.conv.h},{t.conv.w}) "
                f"{self.r}x{self.s} s{self.stride} p{self.padding}{extra}")


@dataclass(frozen=True)
class AvgPoolCase:
    """One avg_pool2d problem: x (n, c, h, w), square kernel/stride/padding."""

    name: str
    n: int
    c: int
    h: int
    w: int
    kernel: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None
    source: str = ""

    @property
    def params(self) -> AvgPool2dParams:
        return avg_pool2d_params(self.x_shape, *self.args)

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.c, self.h, self.w)

    @property
    def args(self) -> tuple[int, int, int, bool, bool, int | None]:
        """(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override) in avg_pool2d's order."""
        return (self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad, self.divisor_override)

    @property
    def label(self) -> str:
        extra = " ceil" if self.ceil_mode else ""
        extra += " excl-pad" if not self.count_include_pad else ""
        extra += f" div{self.divisor_override}" if self.divisor_override else ""
        return f"({self.n},{self.c},{self.h},{self.w}) k{self.kernel} s{self.stride} p{self.padding}{extra}"


@dataclass(frozen=True)
class UnpoolCase:
    """One max_unpool2d problem: the indices of max_pool2d(kernel, stride, padding) on
    (n, c, h, w), unpooled back to (h, w) (``output_size``)."""

    name: str
    n: int
    c: int
    h: int
    w: int
    kernel: int
    stride: int
    padding: int = 0
    source: str = ""

    @property
    def pool(self) -> Pool2dParams:
        """The max_pool2d whose values and indices are unpooled."""
        return pool2d_params((self.n, self.c, self.h, self.w), self.kernel, self.stride, self.padding)

    @property
    def params(self) -> Unpool2dParams:
        q = self.pool
        return max_unpool2d_params(q.y_shape, "int64", q.y_shape, *self.args)

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        """The unpooled input's (the pooled values') shape."""
        return self.pool.y_shape

    @property
    def args(self) -> tuple[int, int, int, tuple[int, int]]:
        """(kernel_size, stride, padding, output_size) in max_unpool2d's order."""
        return (self.kernel, self.stride, self.padding, (self.h, self.w))

    @property
    def label(self) -> str:
        q = self.pool
        return f"({self.n},{self.c},{q.oh},{q.ow})->({self.h},{self.w}) k{self.kernel} s{self.stride} p{self.padding}"


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


# --------------------------------------------------------------------------- the standard CPU set

# Issue 2's five 3x3 shapes (the first two are also the MNIST convnet's first two
# layers at batch 64) and the MNIST convnet's third layer ...
_CONV_3X3 = (
    ConvCase("mnist-conv1", 64, 1, 28, 28, 32, 3, 3, source="Keras MNIST convnet, conv 1"),
    ConvCase("mnist-conv2", 64, 32, 13, 13, 64, 3, 3, source="Keras MNIST convnet, conv 2"),
    ConvCase("resnet-56", 32, 64, 56, 56, 64, 3, 3, padding=1, source="ResNet-18 layer 1"),
    ConvCase("resnet-14", 32, 256, 14, 14, 256, 3, 3, padding=1, source="ResNet-18 layer 3"),
    ConvCase("dilated-56", 8, 64, 56, 56, 64, 3, 3, padding=2, dilation=2, source="dilated ResNet layer 1"),
    ConvCase("mnist-conv3", 64, 64, 5, 5, 64, 3, 3, source="Keras MNIST convnet, conv 3"),
)
# ... and issue 10's layer classes: a batch of one, 5x5 kernels, 7x7 planes with
# 512 channels, stride 2, depthwise, 1x1.
_CONV_CLASSES = (
    ConvCase("lenet-c3-5x5", 64, 6, 14, 14, 16, 5, 5, source="LeNet-5 C3 (5x5)"),
    ConvCase("resnet-b1", 1, 64, 56, 56, 64, 3, 3, padding=1, source="ResNet-18 layer 1, batch 1"),
    ConvCase("vgg-b1-14", 1, 512, 14, 14, 512, 3, 3, padding=1, source="VGG-16 conv 5, batch 1"),
    ConvCase("resnet-7x7x512", 16, 512, 7, 7, 512, 3, 3, padding=1, source="ResNet-18 layer 4 (7x7x512)"),
    ConvCase("resnet-s2", 16, 128, 28, 28, 256, 3, 3, padding=1, stride=2, source="ResNet-18 layer 3 entry, stride 2"),
    ConvCase("mobilenet-dw", 32, 128, 56, 56, 128, 3, 3, padding=1, groups=128,
             source="MobileNet v1 depthwise 3x3"),
    ConvCase("mobilenet-pw", 16, 128, 56, 56, 128, 1, 1, source="MobileNet v1 pointwise 1x1"),
    ConvCase("resnet50-1x1", 32, 256, 14, 14, 1024, 1, 1, source="ResNet-50 bottleneck expand 1x1"),
)
CONV_SHAPES = _CONV_3X3 + _CONV_CLASSES

# Issue 3's three pool shapes; the first two are the MNIST convnet's pools at batch 64.
POOL_SHAPES = (
    PoolCase("mnist-pool1", 64, 32, 26, 26, 2, 2, source="Keras MNIST convnet, pool 1"),
    PoolCase("mnist-pool2", 64, 64, 11, 11, 2, 2, source="Keras MNIST convnet, pool 2"),
    PoolCase("resnet-pool", 32, 64, 112, 112, 3, 2, padding=1, source="ResNet stem pool"),
)
# A fast subset of the standard set (``--fast``): the MNIST layers and one layer of
# every class, so a loaded machine still gets a complete goal table in minutes.
FAST_CONV_NAMES = ("mnist-conv1", "mnist-conv2", "mnist-conv3", "resnet-14", "lenet-c3-5x5", "resnet-b1",
                   "resnet-7x7x512", "resnet-s2", "mobilenet-dw", "resnet50-1x1")
FAST_POOL_NAMES = ("mnist-pool1", "mnist-pool2")

# Test mode: seconds, not minutes, and still every code path (single channel for
# scipy, padding, dilation, stride, groups, 1x1, overlapping pool windows, odd sizes).
TINY_CONV_SHAPES = (
    ConvCase("tiny-1ch", 2, 1, 9, 9, 4, 3, 3),
    ConvCase("tiny-pad", 2, 3, 8, 7, 4, 3, 3, padding=1),
    ConvCase("tiny-dil-s2-g2", 1, 4, 9, 9, 4, 3, 3, padding=2, dilation=2, stride=2, groups=2),
    ConvCase("tiny-1x1", 2, 4, 5, 6, 6, 1, 1),
)
TINY_POOL_SHAPES = (
    PoolCase("tiny-k2", 2, 3, 8, 8, 2, 2),
    PoolCase("tiny-k3-p1", 2, 3, 9, 7, 3, 2, padding=1),
)

# Issue 15's ops.  Transposed convolutions: DCGAN's generator (k4 s2 p1, no bias) and
# decoders (U-Net's 2x2 up-convolution, the k3 s2 p1 output_padding 1 doubling).
CONVT_SHAPES = (
    ConvTransposeCase("dcgan-g2", 32, 512, 4, 4, 256, 4, 4, stride=2, padding=1,
                      source="DCGAN generator, layer 2 (batch 32)"),
    ConvTransposeCase("dcgan-g4", 32, 128, 16, 16, 64, 4, 4, stride=2, padding=1,
                      source="DCGAN generator, layer 4 (batch 32)"),
    ConvTransposeCase("unet-up2x2", 2, 512, 28, 28, 256, 2, 2, stride=2, source="U-Net up-convolution 2x2 (batch 2)"),
    ConvTransposeCase("decoder-k3-op1", 4, 256, 28, 28, 128, 3, 3, stride=2, padding=1, output_padding=1,
                      source="segmentation decoder 3x3 s2 output_padding 1 (batch 4)"),
)
# Average pools: DenseNet's transition, Inception's 3x3 branch pool, ResNet-D's shortcut
# (ceil_mode, count_include_pad=False) and a global average pool (ResNet-50's last planes).
AVGPOOL_SHAPES = (
    AvgPoolCase("densenet-trans1", 16, 128, 56, 56, 2, 2, source="DenseNet-121 transition 1"),
    AvgPoolCase("inception-3x3", 16, 192, 35, 35, 3, 1, padding=1, source="Inception-v3 branch pool 3x3 s1"),
    AvgPoolCase("resnet-d-down", 8, 256, 56, 56, 2, 2, ceil_mode=True, count_include_pad=False,
                source="ResNet-D shortcut avg pool (ceil_mode, count_include_pad=False)"),
    AvgPoolCase("resnet50-gap", 32, 2048, 7, 7, 7, 7, source="ResNet-50 global average pool 7x7"),
)
# Max unpooling: SegNet's decoder (2x2 s2 indices of its encoder pools).
UNPOOL_SHAPES = (
    UnpoolCase("segnet-unpool2", 4, 128, 112, 112, 2, 2, source="SegNet decoder, unpool 2 (batch 4)"),
    UnpoolCase("segnet-unpool5", 8, 512, 14, 14, 2, 2, source="SegNet decoder, unpool 5 (batch 8)"),
)
FAST_SURFACE_NAMES = ("dcgan-g2", "decoder-k3-op1", "densenet-trans1", "resnet50-gap", "segnet-unpool5")

TINY_CONVT_SHAPES = (
    ConvTransposeCase("tiny-t-s2-op1", 2, 3, 4, 5, 4, 3, 3, stride=2, padding=1, output_padding=1),
    ConvTransposeCase("tiny-t-k4-g2", 1, 4, 3, 3, 2, 4, 4, stride=2, padding=1, groups=2),
    # output_padding >= stride (allowed below the dilation): x is padded, no plain conv2d grad_x matches
    ConvTransposeCase("tiny-t-d2-op1", 1, 2, 4, 4, 3, 3, 3, output_padding=1, dilation=2),
)
TINY_AVGPOOL_SHAPES = (
    AvgPoolCase("tiny-avg-k2", 2, 3, 8, 8, 2, 2),
    AvgPoolCase("tiny-avg-k3-ceil", 2, 3, 9, 7, 3, 2, padding=1, ceil_mode=True, count_include_pad=False),
    AvgPoolCase("tiny-avg-div", 1, 2, 6, 6, 3, 1, padding=1, divisor_override=4),
    AvgPoolCase("tiny-gap", 2, 4, 5, 5, 5, 5),
)
TINY_UNPOOL_SHAPES = (
    UnpoolCase("tiny-unpool-k2", 2, 3, 8, 8, 2, 2),
    UnpoolCase("tiny-unpool-k3-p1", 2, 3, 9, 7, 3, 2, padding=1),
)

MNIST_CASE = MnistCase("mnist-keras", 64, 20)
TINY_MNIST_CASE = MnistCase("mnist-tiny", 8, 2)

# Layer sizes of the Keras book convnet: conv 32, pool, conv 64, pool, conv 64, dense 64, dense 10.
MNIST_CONVS = ((1, 32, 28), (32, 64, 13), (64, 64, 5))  # (in, out, input size), 3x3 valid
MNIST_DENSE = ((3 * 3 * 64, 64), (64, 10))

# --------------------------------------------------------------------------- the GPU set

# The 3x3 shapes at batch 128 (a GPU needs the work to fill its SMs).
GPU_CONV_SHAPES = (
    ConvCase("mnist-13 3x3", 128, 32, 13, 13, 64, 3, 3),
    ConvCase("mnist-5 3x3", 128, 64, 5, 5, 64, 3, 3),
    ConvCase("mnist-26 3x3", 128, 32, 26, 26, 64, 3, 3),
    ConvCase("resnet-56 3x3 pad1", 128, 64, 56, 56, 64, 3, 3, padding=1),
    ConvCase("resnet-14 3x3 pad1", 128, 256, 14, 14, 256, 3, 3, padding=1),
)
GPU_POOL_SHAPES = (
    PoolCase("2x2 s2", 128, 64, 56, 56, 2, 2),
    PoolCase("3x3 s2 pad1", 128, 64, 112, 112, 3, 2, padding=1),
)
QUICK_GPU_CONV_SHAPES = (ConvCase("quick 3x3", 8, 16, 14, 14, 32, 3, 3, padding=1),)
QUICK_GPU_POOL_SHAPES = (PoolCase("quick 2x2", 8, 16, 28, 28, 2, 2),)


def shapes(full: bool, fast: bool = False) -> tuple[tuple[ConvCase, ...], tuple[PoolCase, ...], MnistCase]:
    """(conv cases, pool cases, mnist case): the standard set, its ``fast`` subset, or test mode."""
    if not full:
        return TINY_CONV_SHAPES, TINY_POOL_SHAPES, TINY_MNIST_CASE
    if fast:
        return (tuple(c for c in CONV_SHAPES if c.name in FAST_CONV_NAMES),
                tuple(p for p in POOL_SHAPES if p.name in FAST_POOL_NAMES), MNIST_CASE)
    return CONV_SHAPES, POOL_SHAPES, MNIST_CASE


def surface_shapes(full: bool, fast: bool = False) -> dict[str, tuple[Any, ...]]:
    """Issue 15's cases per family (``SURFACE_FAMILIES``): the standard set, its ``fast``
    subset, or test mode."""
    if not full:
        return {"convt": TINY_CONVT_SHAPES, "avgpool": TINY_AVGPOOL_SHAPES, "unpool": TINY_UNPOOL_SHAPES}
    sets = {"convt": CONVT_SHAPES, "avgpool": AVGPOOL_SHAPES, "unpool": UNPOOL_SHAPES}
    if fast:
        return {f: tuple(c for c in cases if c.name in FAST_SURFACE_NAMES) for f, cases in sets.items()}
    return sets


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


def surface_work(case: Any, op: str, itemsize: int = 4) -> int:
    """Flops (convt: conv2d's count of the conv2d whose grad_x the forward is; the backward
    twice that) or minimal bytes (every input read once, every output written once;
    max_unpool2d's output zero fill included, its backward reads only the gathered
    gradients) of ``op`` on ``case``."""
    if op in CONVT_OPS:
        f = case.params.conv.flops
        return 2 * f if op == "convt_bwd" else f
    p = case.params
    nx, ny = p.n * p.c * p.h * p.w, p.n * p.c * p.oh * p.ow
    if op in AVGPOOL_OPS:
        return (nx + ny) * itemsize
    if op == "unpool_fwd":
        return nx * (itemsize + 8) + ny * itemsize
    if op == "unpool_bwd":
        return nx * (2 * itemsize + 8)
    raise ValueError(f"op must be one of {SURFACE_OPS}, got {op!r}")


def op_work(case: Any, op: str) -> tuple[int, str]:
    """(work, metric) of one benchmark group: flops and "GFLOP/s" or bytes and "GB/s"."""
    if op in CONV_OPS:
        return conv_flops(case, op), "GFLOP/s"
    if op in POOL_OPS:
        return pool_bytes(case, op), "GB/s"
    return surface_work(case, op), "GFLOP/s" if op in FLOP_OPS else "GB/s"


def mnist_step_flops(batch: int) -> int:
    """Flops of one training step: forward of every conv and dense layer, times 3
    (the backward computes two products of the forward's size per layer; the
    first conv's unneeded grad_x is counted too).  Pooling, activations, loss
    and the optimizer are memory-bound and not counted."""
    fwd = 0
    for cin, cout, size in MNIST_CONVS:
        fwd += 2 * batch * cout * (size - 2) ** 2 * cin * 9
    for fin, fout in MNIST_DENSE:
        fwd += 2 * batch * fin * fout
    return 3 * fwd
