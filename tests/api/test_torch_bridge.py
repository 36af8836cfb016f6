"""fastconv.torch: autograd Functions, drop-in modules and convert() against torch's own layers.

Oracles: torch.autograd.gradcheck (float64 finite differences) for every option
class, and torch.nn.functional / torch.nn layers for values and gradients.
Pooling inputs are tie-free (a shuffled linspace) so finite differences and
argmax indices are well defined.  Shapes are tiny: gradcheck calls the
forward twice per input element.
"""

from __future__ import annotations

import copy
import inspect
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")

from tests.helpers import TOL, rel_err, spy_calls

import fastconv
import fastconv.torch as ft

F = torch.nn.functional


pytestmark = pytest.mark.usefixtures("torch")  # the conftest fixture: torch on 2 threads


@pytest.fixture(autouse=True)
def one_numba_thread():
    """These tests check the bridge, not the kernels' parallelism (tests/api/test_conv2d.py does):
    one thread keeps gradcheck's thousands of tiny calls fast on a loaded machine, where
    a parallel region waits for a descheduled worker."""
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(old)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype=torch.float64, seed=0, requires_grad=True):
    return torch.randn(shape, generator=seeded(seed), dtype=dtype).requires_grad_(requires_grad)


def tie_free(shape, dtype=torch.float64, seed=0, requires_grad=True):
    n = int(np.prod(shape))
    values = torch.linspace(-1.0, 1.0, n, dtype=dtype)[torch.randperm(n, generator=seeded(seed))]
    return values.reshape(shape).requires_grad_(requires_grad)


def grads(out, inputs, seed=1):
    """d(sum(out * g))/d(inputs) for a fixed random g (not all ones: catches transposed gradients)."""
    g = torch.randn(out.shape, generator=seeded(seed), dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, [t for t in inputs if t is not None], g)


def assert_rel(got, want, dtype, what):
    err = rel_err(got.detach().double().numpy(), want.detach().double().numpy())
    tol = TOL[np.dtype(str(dtype).removeprefix("torch."))]
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e} ({dtype})"


# --------------------------------------------------------------------------- conv2d: every option class

# (x shape, weight shape, bias, options) -- each a torch.nn.functional.conv2d call
CONV_CASES = {
    "plain": ((2, 2, 5, 5), (3, 2, 3, 3), True, {}),
    "no-bias": ((2, 2, 5, 5), (3, 2, 3, 3), False, {}),
    "stride2-pad1": ((1, 2, 6, 7), (2, 2, 3, 3), True, {"stride": 2, "padding": 1}),
    "stride(2,1)-pad(1,0)": ((1, 2, 6, 5), (2, 2, 3, 2), True, {"stride": (2, 1), "padding": (1, 0)}),
    "same": ((1, 2, 5, 5), (2, 2, 3, 3), True, {"padding": "same"}),
    "same-even-kernel": ((1, 2, 5, 6), (2, 2, 2, 4), True, {"padding": "same"}),
    "valid": ((1, 2, 5, 5), (2, 2, 3, 3), True, {"padding": "valid"}),
    "dilation2": ((1, 2, 7, 7), (2, 2, 3, 3), True, {"dilation": 2, "padding": 2}),
    "groups2": ((1, 4, 5, 5), (4, 2, 3, 3), True, {"groups": 2}),
    "depthwise": ((1, 3, 5, 5), (3, 1, 3, 3), False, {"groups": 3, "padding": 1}),
}


def conv_inputs(case, dtype=torch.float64):
    xs, ws, has_bias, opts = CONV_CASES[case]
    b = randn((ws[0],), dtype, seed=3) if has_bias else None
    return randn(xs, dtype, seed=1), randn(ws, dtype, seed=2), b, opts


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradcheck(case):
    x, w, b, opts = conv_inputs(case)
    inputs = (x, w) if b is None else (x, w, b)
    assert torch.autograd.gradcheck(lambda *t: ft.conv2d(*t, **opts), inputs)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_equals_torch(case, dtype):
    x, w, b, opts = conv_inputs(case, dtype)
    y = ft.conv2d(x, w, b, **opts)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    want = F.conv2d(x64, w64, b64, **opts)
    assert y.dtype == dtype and y.shape == want.shape
    assert_rel(y, want, dtype, "output")
    for got, ref, what in zip(grads(y, (x, w, b)), grads(want, (x64, w64, b64)), ("grad_x", "grad_w", "grad_b")):
        assert got.dtype == dtype
        assert_rel(got, ref, dtype, what)


def test_conv2d_same_with_stride_follows_fastconv():
    """torch refuses padding="same" with stride > 1; the bridge has fastconv's rule (ceil(H/stride))."""
    x, w, b = randn((1, 2, 7, 6)), randn((2, 2, 3, 3), seed=2), randn((2,), seed=3)
    y = ft.conv2d(x, w, b, stride=2, padding="same")
    assert y.shape == (1, 2, 4, 3)
    np.testing.assert_allclose(y.detach().numpy(), fastconv.reference.conv2d(
        x.detach().numpy(), w.detach().numpy(), b.detach().numpy(), stride=2, padding="same"), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *t: ft.conv2d(*t, stride=2, padding="same"), (x, w, b))


def test_conv2d_non_contiguous_inputs_and_grad():
    """Strided views (a slice, channels_last) go to fastconv as NumPy views; results match."""
    big = randn((2, 3, 9, 11), requires_grad=False)
    x = big[:, 1:, ::2, 1::2].requires_grad_()
    w = randn((4, 2, 3, 3), seed=2, requires_grad=False).to(memory_format=torch.channels_last).requires_grad_()
    assert not x.is_contiguous() and not w.is_contiguous()
    y = ft.conv2d(x, w, padding=1)
    want = F.conv2d(x, w, padding=1)
    assert_rel(y, want, torch.float64, "output")
    gy = torch.randn(y.shape, dtype=y.dtype, generator=seeded(5)).transpose(2, 3).contiguous().transpose(2, 3)
    for got, ref in zip(torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(want, (x, w), gy)):
        assert_rel(got, ref, torch.float64, "gradient")


def test_conv2d_unbatched_input():
    x, w, b = randn((2, 5, 5)), randn((3, 2, 3, 3), seed=2), randn((3,), seed=3)
    y = ft.conv2d(x, w, b, padding=1)
    assert y.shape == (3, 5, 5)
    assert_rel(y, F.conv2d(x, w, b, padding=1), torch.float64, "output")
    assert torch.autograd.gradcheck(lambda *t: ft.conv2d(*t, padding=1), (x, w, b))


def test_cpu_tensors_reach_fastconv_as_numpy_views(monkeypatch):
    """Zero-copy: fastconv.conv2d receives NumPy arrays sharing the tensors' memory."""
    seen = spy_calls(monkeypatch, fastconv, "conv2d", record=lambda x, weight, *args, **kwargs: (x, weight))
    x, w = randn((1, 2, 5, 5)), randn((2, 2, 3, 3), seed=2)
    ft.conv2d(x, w)
    (xa, wa), = seen
    assert isinstance(xa, np.ndarray) and xa.__array_interface__["data"][0] == x.data_ptr()
    assert isinstance(wa, np.ndarray) and wa.__array_interface__["data"][0] == w.data_ptr()


# --------------------------------------------------------------------------- which gradients run


def backward_spy(monkeypatch) -> list[bool]:
    """The need_input_grad of each fastconv.conv2d_backward call (the real one runs)."""
    return spy_calls(monkeypatch, fastconv, "conv2d_backward",
                     record=lambda *args, need_input_grad=True, **kwargs: need_input_grad)


def test_input_without_requires_grad_computes_no_grad_x(monkeypatch):
    calls = backward_spy(monkeypatch)
    x = randn((1, 2, 5, 5), requires_grad=False)
    w, b = randn((3, 2, 3, 3), seed=2), randn((3,), seed=3)
    y = ft.conv2d(x, w, b, padding=1)
    gw, gb = grads(y, (w, b))
    assert calls == [False]
    want = F.conv2d(x, w, b, padding=1)
    for got, ref in zip((gw, gb), grads(want, (w, b))):
        assert_rel(got, ref, torch.float64, "gradient")


def test_input_with_requires_grad_computes_grad_x(monkeypatch):
    calls = backward_spy(monkeypatch)
    x, w = randn((1, 2, 5, 5)), randn((3, 2, 3, 3), seed=2, requires_grad=False)
    (gx,) = grads(ft.conv2d(x, w), (x,))
    assert calls == [True]
    assert_rel(gx, grads(F.conv2d(x, w), (x,))[0], torch.float64, "grad_x")


def test_bias_only_gradient_runs_no_kernel(monkeypatch):
    calls = backward_spy(monkeypatch)
    x = randn((2, 2, 5, 5), requires_grad=False)
    w, b = randn((3, 2, 3, 3), seed=2, requires_grad=False), randn((3,), seed=3)
    (gb,) = grads(ft.conv2d(x, w, b), (b,))
    assert calls == []
    assert_rel(gb, grads(F.conv2d(x, w, b), (b,))[0], torch.float64, "grad_bias")


def test_no_grad_builds_no_graph_and_pools_without_indices(monkeypatch):
    calls = spy_calls(monkeypatch, fastconv, "max_pool2d",
                      record=lambda *args, **kwargs: kwargs.get("return_indices", False))
    x, w = randn((1, 2, 6, 6)), randn((2, 2, 3, 3), seed=2)
    with torch.no_grad():
        y = ft.max_pool2d(ft.conv2d(x, w, padding=1), 2)
    assert y.grad_fn is None and not y.requires_grad
    assert calls == [False]
    assert_rel(y, F.max_pool2d(F.conv2d(x, w, padding=1), 2), torch.float64, "output")
    ft.max_pool2d(x, 2)  # with grad: indices are needed for the backward
    assert calls == [False, True]


def test_double_backward_is_refused():
    x, w = randn((1, 1, 4, 4)), randn((1, 1, 3, 3), seed=2)
    (gx,) = torch.autograd.grad((ft.conv2d(x, w) ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        gx.sum().backward()


# --------------------------------------------------------------------------- max_pool2d

POOL_CASES = {
    "k2": ((1, 2, 6, 6), {"kernel_size": 2}),
    "k3-s2-p1": ((1, 2, 7, 7), {"kernel_size": 3, "stride": 2, "padding": 1}),
    "k(3,2)-s(1,2)": ((1, 2, 6, 5), {"kernel_size": (3, 2), "stride": (1, 2)}),
    "ceil_mode": ((1, 2, 7, 6), {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
    "ceil_mode-pad": ((1, 1, 6, 6), {"kernel_size": 2, "stride": 2, "padding": 1, "ceil_mode": True}),
    "dilation2": ((1, 2, 7, 7), {"kernel_size": 2, "dilation": 2, "padding": 1}),
}


@pytest.mark.parametrize("return_indices", [False, True])
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_gradcheck(case, return_indices):
    shape, opts = POOL_CASES[case]
    x = tie_free(shape)

    def pool(t):
        out = ft.max_pool2d(t, return_indices=return_indices, **opts)
        return out[0] if return_indices else out

    assert torch.autograd.gradcheck(pool, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_equals_torch(case, dtype):
    shape, opts = POOL_CASES[case]
    x = tie_free(shape, dtype, seed=4)
    y, idx = ft.max_pool2d(x, return_indices=True, **opts)
    want, want_idx = F.max_pool2d(x, return_indices=True, **opts)
    assert idx.dtype == torch.int64 and not idx.requires_grad
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    torch.testing.assert_close(idx, want_idx, rtol=0, atol=0)
    torch.testing.assert_close(grads(y, (x,))[0], grads(want, (x,))[0], rtol=0, atol=0)


def test_max_pool2d_indices_work_with_torch_unpool():
    x = tie_free((1, 2, 6, 6), requires_grad=False)
    y, idx = ft.MaxPool2d(2, return_indices=True)(x)
    torch.testing.assert_close(torch.nn.MaxUnpool2d(2)(y, idx), F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2))


def test_max_pool2d_unbatched_and_non_contiguous():
    x = tie_free((3, 8, 10), requires_grad=False)[:, ::2, 1:].requires_grad_()
    y, idx = ft.max_pool2d(x, 2, return_indices=True)
    want, want_idx = F.max_pool2d(x, 2, return_indices=True)
    assert y.shape == want.shape == (3, 2, 4)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    torch.testing.assert_close(idx, want_idx, rtol=0, atol=0)
    torch.testing.assert_close(grads(y, (x,))[0], grads(want, (x,))[0], rtol=0, atol=0)


def test_max_pool2d_returned_indices_guarded_against_in_place_edits():
    x = tie_free((1, 1, 4, 4))
    y, idx = ft.max_pool2d(x, 2, return_indices=True)
    idx.zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


# --------------------------------------------------------------------------- modules


def test_module_signatures_match_torch():
    def params(cls):  # names, defaults and kinds (annotations are spelled differently)
        return [(p.name, p.default, p.kind) for p in inspect.signature(cls).parameters.values()]

    assert params(ft.Conv2d) == params(torch.nn.Conv2d)
    assert params(ft.MaxPool2d) == params(torch.nn.MaxPool2d)


def test_conv2d_module_same_init_and_state_dict_as_torch():
    torch.manual_seed(7)
    ours = ft.Conv2d(3, 8, (3, 5), stride=2, padding=(1, 2), dilation=1, groups=1, bias=True)
    torch.manual_seed(7)
    theirs = torch.nn.Conv2d(3, 8, (3, 5), stride=2, padding=(1, 2), dilation=1, groups=1, bias=True)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0)
    assert repr(ours) == repr(theirs)


def test_load_state_dict_from_plain_torch_model():
    def model(conv, pool):
        return torch.nn.Sequential(conv(1, 4, 3, padding="same"), torch.nn.ReLU(), pool(2), torch.nn.Flatten(),
                                   torch.nn.Linear(4 * 3 * 3, 5)).double()

    torch.manual_seed(0)
    theirs = model(torch.nn.Conv2d, torch.nn.MaxPool2d)
    ours = model(ft.Conv2d, ft.MaxPool2d)
    ours.load_state_dict(theirs.state_dict())  # strict: same keys, same shapes
    x = randn((2, 1, 7, 7), requires_grad=False)
    assert_rel(ours(x), theirs(x), torch.float64, "output")


def test_conv2d_module_float32_matches_torch():
    torch.manual_seed(1)
    theirs = torch.nn.Conv2d(4, 6, 3, stride=1, padding=1, groups=2)
    ours = ft.Conv2d(4, 6, 3, stride=1, padding=1, groups=2)
    ours.load_state_dict(theirs.state_dict())
    x = randn((3, 4, 8, 8), torch.float32)
    y, want = ours(x), theirs(x)
    assert_rel(y, want, torch.float32, "output")
    for got, ref in zip(grads(y, (x, ours.weight, ours.bias)), grads(want, (x, theirs.weight, theirs.bias))):
        assert_rel(got, ref, torch.float32, "gradient")


# --------------------------------------------------------------------------- convert


def lenet(dtype=torch.float64, seed=0):
    """LeNet-5 (modern form) for 28x28 inputs, in plain torch."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(16 * 5 * 5, 120), torch.nn.ReLU(),
        torch.nn.Linear(120, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10),
    ).to(dtype)


def train(model, optimizer, batches):
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# float32: ~1e-7 seen here; the margin covers a max-pooling window whose two largest values are
# within rounding of each other and swap on a CPU whose kernels sum in another order.
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-3)])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_convert_lenet_trains_like_torch(optimizer, dtype, rtol):
    theirs = lenet(dtype)
    ours = copy.deepcopy(theirs)
    report = ft.convert(ours)
    assert report.replaced == ["0 (Conv2d)", "2 (MaxPool2d)", "3 (Conv2d)", "5 (MaxPool2d)"]
    assert report.left == []
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
            "adam": lambda p: torch.optim.Adam(p, lr=1e-3)}[optimizer]
    gen = seeded(11)
    batches = [(torch.randn(8, 1, 28, 28, generator=gen, dtype=dtype), torch.randint(0, 10, (8,), generator=gen))
               for _ in range(4)]
    ours_losses = train(ours, make(ours.parameters()), batches)
    theirs_losses = train(theirs, make(theirs.parameters()), batches)
    np.testing.assert_allclose(ours_losses, theirs_losses, rtol=rtol)
    assert ours_losses[-1] != ours_losses[0]  # it did train
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        err = rel_err(a.detach().numpy(), b.detach().numpy())
        assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.0e} after {len(batches)} steps"


def test_convert_keeps_parameters_hooks_and_optimizer():
    model = lenet(torch.float32)
    params = [id(p) for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(type(m)))
    ft.convert(model)
    assert [id(p) for p in model.parameters()] == params
    assert type(model[0]) is ft.Conv2d and type(model[2]) is ft.MaxPool2d
    assert model[0].weight.dtype == torch.float32
    before = model[0].weight.detach().clone()
    train(model, optimizer, [(torch.randn(2, 1, 28, 28, generator=seeded(0)), torch.tensor([1, 2]))])
    assert seen == [ft.Conv2d]
    assert not torch.equal(before, model[0].weight)


def test_convert_reports_what_it_left():
    class MyConv(torch.nn.Conv2d):
        pass

    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
        torch.nn.Conv2d(2, 2, 3).half(),
        MyConv(2, 2, 1),
        torch.nn.AvgPool2d(2),
        torch.nn.Conv1d(2, 2, 1),
        ft.MaxPool2d(2),
        torch.nn.Sequential(torch.nn.MaxPool2d(3, ceil_mode=True, return_indices=True)),
        torch.nn.Linear(2, 2),
    )
    report = ft.convert(model)
    assert report.replaced == ["6.0 (MaxPool2d)"]
    assert dict(report.left) == {
        "0 (Conv2d)": 'padding_mode="reflect" (fastconv pads with zeros only)',
        "1 (Conv2d)": "dtype torch.float16 (fastconv computes in float32 and float64)",
        "2 (MyConv)": "MyConv subclasses torch's layer (its forward may differ): left as is",
        "3 (AvgPool2d)": "fastconv has no AvgPool2d",
        "4 (Conv1d)": "fastconv has no Conv1d",
        "5 (MaxPool2d)": "already a fastconv.torch layer",
    }
    assert type(model[0]) is torch.nn.Conv2d and type(model[2]) is MyConv
    assert "left     0 (Conv2d): padding_mode=\"reflect\"" in str(report)


def test_convert_a_bare_layer():
    conv = torch.nn.Conv2d(1, 1, 3)
    assert ft.convert(conv).replaced == ["<root> (Conv2d)"] and type(conv) is ft.Conv2d


# --------------------------------------------------------------------------- errors


def test_error_padding_mode():
    with pytest.raises(ValueError, match='padding_mode="circular" is not supported'):
        ft.Conv2d(1, 1, 3, padding_mode="circular")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64])
def test_error_unsupported_dtype(dtype):
    x, w = torch.zeros(1, 1, 4, 4, dtype=dtype), torch.zeros(1, 1, 3, 3, dtype=dtype)
    with pytest.raises(TypeError, match=rf"fastconv.torch.conv2d: input has dtype {dtype}; fastconv computes in "
                                        r"torch.float32 and torch.float64 only"):
        ft.conv2d(x, w)
    with pytest.raises(TypeError, match=rf"fastconv.torch.max_pool2d: input has dtype {dtype}"):
        ft.max_pool2d(x, 2)


def test_error_mixed_dtypes():
    with pytest.raises(TypeError, match="weight has dtype torch.float64 but input has torch.float32"):
        ft.conv2d(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 3, dtype=torch.float64))


def test_error_unsupported_device():
    x = torch.zeros(1, 1, 4, 4, device="meta")
    with pytest.raises(TypeError, match="runs on CPU and CUDA tensors, got a tensor on device meta"):
        ft.max_pool2d(x, 2)


def test_error_bad_option_is_fastconvs_message():
    x, w = randn((1, 2, 5, 5)), randn((3, 2, 3, 3), seed=2)
    with pytest.raises(ValueError, match="groups"):
        ft.conv2d(x, w, groups=2)
    with pytest.raises(ValueError, match="padding"):
        ft.max_pool2d(x, 2, padding=2)


def test_error_convert_needs_a_module():
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got list"):
        ft.convert([torch.nn.Conv2d(1, 1, 1)])


def test_import_without_torch_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.delitem(sys.modules, "fastconv.torch")
    with pytest.raises(ImportError) as err:
        import fastconv.torch  # noqa: F401
    message = str(err.value)
    assert "\n" not in message and "pip install 'fastconv[torch]'" in message and "pip install torch" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__
