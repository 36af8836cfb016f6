"""PyTorch (CPU: oneDNN; GPU: cuDNN with TF32 off), the library fastconv is
measured against: ``F.conv2d`` with bias, and for the backward the bare ATen
ops autograd calls (``convolution_backward`` with all three outputs in its
mask, ``max_pool2d_with_indices_backward``), so no graph is built or timed;
issue 15's ops likewise (``F.conv_transpose2d`` and ``convolution_backward``
with ``transposed=True``, ``F.avg_pool2d`` and ``avg_pool2d_backward``,
``F.max_unpool2d`` and the gather autograd runs for its backward)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def available(cuda: bool = False) -> str | None:
    try:
        import torch
    except ImportError:
        return "torch not installed (pip install torch==2.13.0)"
    if cuda and not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


def fns() -> dict[str, Callable[..., Any]]:
    import torch
    import torch.nn.functional as F

    aten = torch.ops.aten

    def conv_bwd(c: Any, gy: Any, x: Any, w: Any) -> Any:
        # bias_sizes [K] and output_mask (grad_x, grad_weight, grad_bias), as autograd passes them
        return aten.convolution_backward(gy, x, w, [c.k], [c.stride] * 2, [c.padding] * 2, [c.dilation] * 2,
                                         False, [0, 0], c.groups, [True, True, True])

    def pool_bwd(c: Any, gy: Any, idx: Any, x: Any) -> Any:
        k, s, p, d, ceil = c.args
        return aten.max_pool2d_with_indices_backward(gy, x, [k, k], [s, s], [p, p], [d, d], ceil, idx)

    return {
        "conv2d_fwd": lambda c, x, w, b: F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups),
        "conv2d_bwd": conv_bwd,
        "pool_fwd": lambda c, x: F.max_pool2d(x, *c.args),
        "pool_fwd_idx": lambda c, x: F.max_pool2d(x, *c.args, return_indices=True),
        "pool_bwd": pool_bwd,
        **surface_fns(),
    }


def surface_fns() -> dict[str, Callable[..., Any]]:
    """Issue 15's ops: the functional forward, the backward as what autograd calls."""
    import torch
    import torch.nn.functional as F

    aten = torch.ops.aten

    def convt_bwd(c: Any, gy: Any, x: Any, w: Any) -> Any:
        return aten.convolution_backward(gy, x, w, [c.c_out], [c.stride] * 2, [c.padding] * 2, [c.dilation] * 2,
                                         True, [c.output_padding] * 2, c.groups, [True, True, True])

    def avgpool_bwd(c: Any, gy: Any, x: Any) -> Any:
        k, s, p, ceil, include_pad, divisor = c.args
        return aten.avg_pool2d_backward(gy, x, [k, k], [s, s], [p, p], ceil, include_pad, divisor)

    def unpool_bwd(c: Any, gy: Any, idx: Any) -> Any:
        # max_unpool2d's derivative in autograd (max_pool_double_backward): a gather per plane
        n, ch = idx.shape[:2]
        return gy.contiguous().view(n, ch, -1).gather(-1, idx.view(n, ch, -1)).view(idx.shape)

    return {
        "convt_fwd": lambda c, x, w: F.conv_transpose2d(x, w, None, c.stride, c.padding, c.output_padding, c.groups,
                                                        c.dilation),
        "convt_bwd": convt_bwd,
        "avgpool_fwd": lambda c, x: F.avg_pool2d(x, *c.args),
        "avgpool_bwd": avgpool_bwd,
        "unpool_fwd": lambda c, x, idx: F.max_unpool2d(x, idx, *c.args),
        "unpool_bwd": unpool_bwd,
    }


def to_native(a: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(a)  # shares memory: no copy, no timing of a conversion


def to_host(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


def cuda_to_native(a: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(a).cuda()


def cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()
