"""fastconv.torch's device path: tensors in, fastconv's CUDA backend, tensors out.

In numba-cuda's simulator torch has no CUDA tensors, so the bridge's tensor<->array
adapter is swapped for one that moves CPU tensors to simulator device arrays and back:
every array fastconv sees is then a device array (a forgotten host array would make
fastconv raise its "same device" TypeError) and every result must come back as one,
which proves the CUDA backend ran.  On a real GPU the same checks run on torch CUDA
tensors, also on a non-default torch stream.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from tests.cuda.cudahelpers import SIM, gpu_only
from tests.helpers import spy_calls

torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")

import fastconv.cuda
import fastconv.torch as ft

F = torch.nn.functional
sim_only = pytest.mark.skipif(not SIM, reason="simulator adapter test (a GPU runs the real-tensor tests)")


class SimIO:
    """CPU tensor -> simulator device array; device array -> CPU tensor (asserting it is one)."""

    @staticmethod
    def to_array(t):
        from numba import cuda

        return cuda.to_device(np.ascontiguousarray(t.detach().numpy()))

    @staticmethod
    def to_tensor(a, device):
        from numba.cuda.cudadrv.devicearray import is_cuda_ndarray

        assert is_cuda_ndarray(a), f"fastconv returned {type(a).__name__}, not a device array"
        return torch.from_numpy(a.copy_to_host())


@pytest.fixture
def sim_io(monkeypatch):
    monkeypatch.setattr(ft, "_io", lambda device: SimIO)


def randn(shape, seed, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_(requires_grad)


def conv_and_grads(conv, x, w, b, **opts):
    y = conv(x, w, b, **opts)
    gy = randn(y.shape, 9, requires_grad=False)
    return (y, *torch.autograd.grad(y, [t for t in (x, w, b) if t is not None and t.requires_grad], gy))


def _need_input_grad(*args, **kwargs):
    """conv2d_backward's need_input_grad, positional (the sixth argument) or keyword."""
    return args[5] if len(args) > 5 else kwargs.get("need_input_grad")


@sim_only
@pytest.mark.parametrize("opts", [{"padding": 1}, {"stride": 2, "padding": "same"}, {"groups": 2, "dilation": 2}])
def test_conv2d_through_cuda_backend(sim_io, monkeypatch, opts):
    calls = spy_calls(monkeypatch, fastconv.cuda, "conv2d_backward", record=_need_input_grad)
    x, w, b = randn((2, 4, 6, 6), 1), randn((4, 2 if "groups" in opts else 4, 3, 3), 2), randn((4,), 3)
    got = conv_and_grads(ft.conv2d, x, w, b, **opts)
    monkeypatch.undo()  # the host path below must not go through the simulator adapter
    want = conv_and_grads(ft.conv2d, x, w, b, **opts)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g.detach().numpy(), r.detach().numpy(), rtol=1e-12, atol=1e-12)
    assert calls == [True]


@sim_only
def test_conv2d_frozen_input_skips_grad_x_on_device(sim_io, monkeypatch):
    calls = spy_calls(monkeypatch, fastconv.cuda, "conv2d_backward", record=_need_input_grad)
    x, w = randn((1, 2, 5, 5), 1, requires_grad=False), randn((2, 2, 3, 3), 2)
    ft.conv2d(x, w).sum().backward()
    assert calls == [False] and w.grad is not None


@sim_only
def test_max_pool2d_through_cuda_backend(sim_io):
    x = torch.randperm(2 * 3 * 7 * 7, generator=torch.Generator().manual_seed(0)).double().reshape(2, 3, 7, 7)
    x.requires_grad_()
    y, idx = ft.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    want, want_idx = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    torch.testing.assert_close(idx, want_idx, rtol=0, atol=0)
    gy = randn(y.shape, 4, requires_grad=False)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(want, x, gy)[0], rtol=0, atol=0)


# --------------------------------------------------------------------------- real GPU


@gpu_only
@pytest.mark.gpu
@pytest.mark.parametrize("side_stream", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_cuda_tensors_match_torch(dtype, side_stream):
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                 torch.nn.Conv2d(16, 8, 3, stride=2, groups=2)).to(dev, dtype)
    ours = copy.deepcopy(theirs)
    assert len(ft.convert(ours).replaced) == 3
    x = torch.randn(8, 3, 32, 32, device=dev, dtype=dtype, requires_grad=True)
    stream = torch.cuda.Stream() if side_stream else torch.cuda.current_stream()
    with torch.cuda.stream(stream):
        y_ours = ours(x)
        g_ours = torch.autograd.grad(y_ours.square().sum(), (x, *ours.parameters()))
        y_ref = theirs(x)
        g_ref = torch.autograd.grad(y_ref.square().sum(), (x, *theirs.parameters()))
    torch.cuda.synchronize()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert y_ours.is_cuda and y_ours.dtype == dtype
    for a, b in zip((y_ours, *g_ours), (y_ref, *g_ref)):
        err = float((a.double() - b.double()).norm() / b.double().norm())
        assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"
