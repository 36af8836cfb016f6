"""The CUDA checks at real sizes, on a real GPU only (``-m gpu``; skipped in the
simulator and without a GPU): forward/backward against the float64 reference,
torch-CUDA parity with zero-copy inputs (TF32 off), determinism, pooling, and
int64 indexing past 2^31 elements.

Run on a GPU machine:  python -m pytest tests/cuda -m gpu -q
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import conv2d_params

from tests.cuda.cudahelpers import dev, gpu_only, host
from tests.helpers import assert_close, tie_free

pytestmark = [pytest.mark.gpu, gpu_only]

ALGORITHMS = ["direct", "im2col"]
# The foundation issue's 3x3 shapes (and a strided, a grouped and a depthwise one).
SHAPES = [
    ((64, 32, 13, 13), (64, 32, 3, 3), dict()),
    ((32, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
    ((16, 64, 28, 28), (128, 64, 3, 3), dict(stride=2, padding="same")),
    ((8, 64, 28, 28), (64, 16, 3, 3), dict(padding=2, dilation=2, groups=4)),
    ((8, 64, 28, 28), (64, 1, 3, 3), dict(padding=1, groups=64)),
]
IDS = [f"{'x'.join(map(str, xs))}-{ws[0]}-{kw}" for xs, ws, kw in SHAPES]
# torch has no Keras "same" at stride 2: explicit paddings for the parity check.
TORCH_SHAPES = [SHAPES[0], SHAPES[1], ((16, 64, 28, 28), (128, 64, 3, 3), dict(stride=2, padding=1))]


@pytest.fixture(scope="module")
def torch_cuda():
    torch = pytest.importorskip("torch", reason="torch not installed")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("xs, ws, kw", SHAPES, ids=IDS)
def test_conv_real_sizes_match_reference(rng, xs, ws, kw, algorithm):
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    y = fastconv.conv2d(dev(x), dev(w), dev(b), algorithm=algorithm, **kw)
    assert_close(host(y), reference.conv2d(x, w, b, **kw), np.float32, "y")
    p = conv2d_params(xs, ws, None, **kw)
    gy = rng.standard_normal(p.y_shape).astype(np.float32)
    grads = fastconv.conv2d_backward(dev(gy), dev(x), dev(w), algorithm=algorithm, **kw)
    for got, ref, what in zip(grads, reference.conv2d_backward(gy, x, w, **kw), ("grad_x", "grad_weight", "grad_bias")):
        assert_close(host(got), ref, np.float32, what)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_conv_float64_real_size(rng, algorithm):
    xs, ws, kw = SHAPES[0]
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    y = fastconv.conv2d(dev(x), dev(w), algorithm=algorithm, **kw)
    assert_close(host(y), reference.conv2d(x, w, **kw), np.float64, "y")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("xs, ws, kw", TORCH_SHAPES, ids=["13x13", "56x56", "28x28s2"])
def test_conv_matches_torch_cuda_zero_copy(torch_cuda, xs, ws, kw, algorithm):
    torch = torch_cuda
    F = torch.nn.functional
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(xs, device="cuda", generator=g, requires_grad=True)
    w = torch.randn(ws, device="cuda", generator=g, requires_grad=True)
    b = torch.randn(ws[0], device="cuda", generator=g, requires_grad=True)
    ty = F.conv2d(x, w, b, **kw)
    gy = torch.randn(ty.shape, device="cuda", generator=g)
    ty.backward(gy)
    y = fastconv.conv2d(x.detach(), w.detach(), b.detach(), algorithm=algorithm, **kw)  # torch tensors in
    gx, gw, gb = fastconv.conv2d_backward(gy, x.detach(), w.detach(), algorithm=algorithm, **kw)
    for got, want, what in ((y, ty, "y"), (gx, x.grad, "grad_x"), (gw, w.grad, "grad_weight"), (gb, b.grad, "grad_bias")):
        assert_close(host(got), want.detach().cpu().numpy(), np.float32, what)


def test_zero_copy_of_torch_tensors(torch_cuda):
    torch = torch_cuda
    t = torch.arange(24, dtype=torch.float32, device="cuda").reshape(1, 2, 3, 4)
    a = fastconv.cuda.asarray(t, "x")
    assert a.__cuda_array_interface__["data"][0] == t.data_ptr()
    y = fastconv.max_pool2d(t, 2)
    assert np.array_equal(host(y), torch.nn.functional.max_pool2d(t, 2).cpu().numpy())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_deterministic_real_size(rng, algorithm):
    xs, ws, kw = SHAPES[1]
    x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    gy = rng.standard_normal(conv2d_params(xs, ws, None, **kw).y_shape).astype(np.float32)
    runs = [[host(a) for a in (fastconv.conv2d(dev(x), dev(w), algorithm=algorithm, **kw),
                               *fastconv.conv2d_backward(dev(gy), dev(x), dev(w), algorithm=algorithm, **kw))]
            for _ in range(2)]
    for a, b in zip(*runs):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)], ids=["2x2", "3x3s2p1"])
def test_pool_real_size(rng, kw):
    x = tie_free(rng, (32, 64, 56, 56), np.float32)
    y, idx = fastconv.max_pool2d(dev(x), return_indices=True, **kw)
    ry, ridx = reference.max_pool2d(x, return_indices=True, **kw)
    assert np.array_equal(host(y), ry.astype(np.float32)) and np.array_equal(host(idx), ridx)
    gy = rng.standard_normal(ry.shape).astype(np.float32)
    gx = fastconv.max_pool2d_backward(dev(gy), idx, x.shape)
    assert_close(host(gx), reference.max_pool2d_backward(gy, ridx, x.shape), np.float32, "grad_x")


def test_beyond_2_31_elements(torch_cuda):
    """Tensors of more than 2^31 elements: offsets are int64 everywhere (checked on the tail)."""
    torch = torch_cuda
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip("needs ~40 GiB of free GPU memory")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn((2, 1024, 1024, 1026), device="cuda", generator=g)  # 2.15e9 elements
    assert x.numel() > 2**31
    y = torch.as_tensor(fastconv.max_pool2d(x, 2), device="cuda")  # zero-copy view back
    want = torch.nn.functional.max_pool2d(x[-1:, -4:], 2)
    assert torch.equal(y[-1:, -4:], want)
    del y
    w = torch.randn((2, 1024, 1, 1), device="cuda", generator=g)
    for algorithm in ALGORITHMS:
        yc = torch.as_tensor(fastconv.conv2d(x, w, algorithm=algorithm), device="cuda")
        tail = yc[-1:, :, -2:, :].cpu().numpy()
        ref = torch.nn.functional.conv2d(x[-1:, :, -2:, :], w).cpu().numpy()
        assert_close(tail, ref, np.float32, f"conv tail ({algorithm})")
        del yc


def test_cupy_arrays_zero_copy(rng):
    cupy = pytest.importorskip("cupy", reason="cupy not installed")
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    cx, cw = cupy.asarray(x), cupy.asarray(w)
    assert fastconv.cuda.asarray(cx, "x").__cuda_array_interface__["data"][0] == cx.data.ptr
    y = fastconv.conv2d(cx, cw, padding=1)
    assert_close(host(y), reference.conv2d(x, w, padding=1), np.float32, "y")
    y2, idx = fastconv.max_pool2d(cx, 2, return_indices=True)
    ry, ridx = reference.max_pool2d(x, 2, return_indices=True)
    assert np.array_equal(host(y2), ry.astype(np.float32)) and np.array_equal(host(idx), ridx)


def _handle(stream) -> int:
    h = getattr(stream, "handle", stream)
    return int(getattr(h, "value", h) or 0) if not hasattr(h, "getPtr") else int(h.getPtr())


def test_runs_on_torchs_current_stream(torch_cuda):
    """Inside torch.cuda.stream(s) the kernels are enqueued on s (docs/cuda.md)."""
    torch = torch_cuda
    F = torch.nn.functional
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn((8, 16, 14, 14), device="cuda", generator=g)
    w = torch.randn((32, 16, 3, 3), device="cuda", generator=g)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y = fastconv.conv2d(x, w, padding=1, algorithm="im2col")
        want = F.conv2d(x, w, padding=1)
    assert _handle(y.stream) == s.cuda_stream
    got = y.copy_to_host()  # asynchronous on y.stream (= s)
    s.synchronize()
    assert_close(got, want.cpu().numpy(), np.float32, "y")
