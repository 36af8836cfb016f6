"""fastconv.conv_transpose2d / conv_transpose2d_backward on the CPU: torch's
argument order, weight layout and output size; against the float64 reference
and torch (float64) for every option and algorithm, finite differences,
NaN/Inf as torch, output_padding limits, bad arguments.  It must run on
conv2d's kernels (a spy checks the plan's grad_x path)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
import fastconv.cpu
from fastconv import reference
from fastconv._params import conv_transpose2d_params

from tests.helpers import assert_close, assert_same_nonfinite, check_grads, spy_calls

DTYPES = [np.float32, np.float64]
ALGORITHMS = ["auto", "direct", "im2col"]

# (x shape, weight shape (C_in, C_out/groups, R, S), options)
CASES = [
    ((2, 4, 5, 6), (4, 3, 3, 3), dict()),
    ((2, 4, 5, 6), (4, 3, 3, 2), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 5, 5), (4, 2, 3, 3), dict(dilation=2, output_padding=1, groups=2)),  # output_padding >= stride
    ((2, 4, 5, 5), (4, 1, 2, 3), dict(stride=(2, 3), padding=(1, 0), groups=4, dilation=(1, 2))),
    ((9, 3, 6, 6), (3, 9, 3, 3), dict(padding=1)),  # batch >= 8, stride 1: the batch-inner layout
    ((1, 8, 4, 4), (8, 8, 3, 3), dict(stride=1, padding=2)),
    ((2, 3, 3, 4), (3, 2, 1, 1), dict(stride=3, output_padding=(2, 1))),
    ((4, 5, 5), (4, 3, 3, 3), dict(stride=2)),  # unbatched
]
IDS = [f"{'x'.join(map(str, s))}-w{'x'.join(map(str, w))}-" + "-".join(f"{k}{v}" for k, v in kw.items())
       for s, w, kw in CASES]


def _args(rng, xs, ws, kw, dtype=np.float64):
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[1] * kw.get("groups", 1)).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, kw", CASES, ids=IDS)
def test_matches_reference(rng, xs, ws, kw, dtype, alg):
    x, w, b = _args(rng, xs, ws, kw, dtype)
    y = fastconv.conv_transpose2d(x, w, b, **kw, algorithm=alg)
    ry = reference.conv_transpose2d(x, w, b, **kw)
    assert y.dtype == dtype
    assert_close(y, ry, dtype, "y")
    assert_close(fastconv.conv_transpose2d(x, w, None, **kw, algorithm=alg), reference.conv_transpose2d(x, w, **kw),
                 dtype, "y without bias")
    gy = rng.standard_normal(ry.shape).astype(dtype)
    got = fastconv.conv_transpose2d_backward(gy, x, w, **kw, algorithm=alg)
    for g, r, what in zip(got, reference.conv_transpose2d_backward(gy, x, w, **kw), ("grad_x", "grad_weight",
                                                                                      "grad_bias")):
        assert g.dtype == dtype and g.shape == r.shape, what
        assert_close(g, r, dtype, what)
    gx, gw, gb = fastconv.conv_transpose2d_backward(gy, x, w, **kw, algorithm=alg, need_input_grad=False)
    assert gx is None
    assert_close(gw, got[1], dtype, "grad_weight without grad_x")


@pytest.mark.parametrize("xs, ws, kw", CASES, ids=IDS)
def test_matches_torch(rng, torch, xs, ws, kw):
    x, w, b = _args(rng, xs, ws, kw)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, **kw)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    assert_close(fastconv.conv_transpose2d(x, w, b, **kw), ty.detach().numpy(), np.float64, "y")
    for g, t, what in zip(fastconv.conv_transpose2d_backward(gy, x, w, **kw), (tx, tw, tb), ("x", "w", "b")):
        assert_close(g, t.grad.numpy(), np.float64, f"grad_{what}")
    # positional arguments in torch's order
    assert_close(fastconv.conv_transpose2d(x, w, b, kw.get("stride", 1), kw.get("padding", 0),
                                           kw.get("output_padding", 0), kw.get("groups", 1), kw.get("dilation", 1)),
                 ty.detach().numpy(), np.float64, "y, positional")


@pytest.mark.parametrize("xs, ws, kw", CASES[:4], ids=IDS[:4])
def test_finite_differences(rng, xs, ws, kw):
    x, w, b = _args(rng, xs, ws, kw)
    gy = rng.standard_normal(reference.conv_transpose2d(x, w, b, **kw).shape)
    gx, gw, gb = fastconv.conv_transpose2d_backward(gy, x, w, **kw)
    check_grads(lambda x, w, b: fastconv.conv_transpose2d(x, w, b, **kw), {"x": x, "w": w, "b": b},
                {"x": gx, "w": gw, "b": gb}, gy, rng)


def test_forward_is_conv2d_grad_x_on_the_plan(rng, monkeypatch):
    """The transposed forward runs conv2d's grad_x by the plan, not a kernel of its own."""
    calls = spy_calls(monkeypatch, fastconv.cpu, "conv2d_input_grad")
    x, w, b = _args(rng, (2, 4, 5, 6), (4, 3, 3, 3), {})
    fastconv.conv_transpose2d(x, w, b)
    (gy, weight, plan), = calls
    assert plan.params.x_shape == (2, 3, 7, 8) and plan.params.weight_shape == (4, 3, 3, 3)
    assert plan.backward_algorithm == "direct" and plan.cpu_part().grad_input is not None
    assert gy.shape == x.shape


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inf_as_torch(rng, torch, dtype):
    x, w, b = _args(rng, (1, 2, 4, 4), (2, 3, 3, 3), {})
    x[0, 0, 1, 1], x[0, 1, 2, 2] = np.nan, np.inf
    want = torch.nn.functional.conv_transpose2d(torch.tensor(x), torch.tensor(w), torch.tensor(b)).numpy()
    assert_same_nonfinite(fastconv.conv_transpose2d(x.astype(dtype), w.astype(dtype), b.astype(dtype)), want,
                          dtype, "y, non-finite x")
    x2, w2 = np.nan_to_num(x, nan=0.5, posinf=0.25), w.copy()
    w2[1, 2, 0, 0] = np.inf  # the scatter path (non-finite weights)
    want = torch.nn.functional.conv_transpose2d(torch.tensor(x2), torch.tensor(w2)).numpy()
    assert_same_nonfinite(fastconv.conv_transpose2d(x2.astype(dtype), w2.astype(dtype)), want, dtype,
                          "y, non-finite weight")


def test_empty_batch():
    y = fastconv.conv_transpose2d(np.zeros((0, 2, 3, 3)), np.zeros((2, 4, 3, 3)), stride=2)
    assert y.shape == (0, 4, 7, 7)
    gx, gw, gb = fastconv.conv_transpose2d_backward(np.zeros((0, 4, 7, 7)), np.zeros((0, 2, 3, 3)),
                                                    np.zeros((2, 4, 3, 3)), stride=2)
    assert gx.shape == (0, 2, 3, 3) and gw.shape == (2, 4, 3, 3) and gb.shape == (4,)
    assert not gw.any() and not gb.any()


X, W = np.zeros((1, 4, 5, 5)), np.zeros((4, 3, 3, 3))


@pytest.mark.parametrize("mod", [fastconv, reference], ids=["fastconv", "reference"])
@pytest.mark.parametrize("args, kw, exc, match", [
    ((X, W), dict(stride=2, output_padding=2),
     ValueError, r"output_padding must be smaller than either stride or dilation .* output_padding=\(2, 2\), "
                 r"stride=\(2, 2\), dilation=\(1, 1\)"),
    ((X, W), dict(output_padding=(0, 1)), ValueError, r"output_padding must be smaller than either stride or"),
    ((X, W), dict(output_padding=-1), ValueError, r"output_padding must be >= 0"),
    ((X, W[:2]), dict(), ValueError, r"Given transposed=1, weight of size \[2, 3, 3, 3\], expected input\[1, 4, 5, "
                                     r"5\] to have 2 channels, but got 4 channels instead"),
    ((X, W), dict(groups=3), ValueError, r"weight in_channels \(4\) must be divisible by groups \(3\)"),
    ((X, W), dict(padding="same"), TypeError, r"padding must be an int or a pair of ints"),
    ((X, W), dict(padding=5), ValueError, r"conv_transpose2d output size would be \(-3, -3\)"),
    ((X, W[0]), dict(), ValueError, r"weight must be a 4-D array \(C_in, C_out/groups, R, S\)"),
    ((X, W, np.zeros(4)), dict(), ValueError, r"bias must have shape \(3,\)"),
])
def test_bad_arguments(mod, args, kw, exc, match):
    with pytest.raises(exc, match=match):
        mod.conv_transpose2d(*args, **kw)


def test_bad_ndim_and_grad_output():
    with pytest.raises(ValueError, match=r"x must be a 3-D \(C_in, H, W\) \(unbatched\) or 4-D \(N, C_in, H, W\) "
                                         r"\(batched\) array, got a 5-D array"):
        fastconv.conv_transpose2d(X[None], W)
    with pytest.raises(ValueError, match=r"grad_output must have the forward output's shape \(1, 3, 7, 7\), got"):
        fastconv.conv_transpose2d_backward(np.zeros((1, 3, 7, 6)), X, W)
    with pytest.raises(ValueError, match=r"algorithm must be one of"):
        fastconv.conv_transpose2d(X, W, algorithm="fft")
    with pytest.raises(TypeError, match=r"need_input_grad must be a bool"):
        fastconv.conv_transpose2d_backward(np.zeros((1, 3, 7, 7)), X, W, need_input_grad=None)


@st.composite
def transpose_problems(draw):
    g = draw(st.sampled_from([1, 1, 2]))
    cin, cog = g * draw(st.integers(1, 3)), draw(st.integers(1, 3))
    xs = (draw(st.integers(1, 2)), cin, draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    ws = (cin, cog, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s, d = (draw(st.integers(1, 3)), draw(st.integers(1, 3))), (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    kw = dict(stride=s, padding=(draw(st.integers(0, 2)), draw(st.integers(0, 2))),
              output_padding=(draw(st.integers(0, max(s[0], d[0]) - 1)), draw(st.integers(0, max(s[1], d[1]) - 1))),
              groups=g, dilation=d)
    return xs, ws, kw, draw(st.sampled_from(ALGORITHMS)), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None)
@given(problem=transpose_problems())
def test_property_matches_torch(problem):
    torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
    xs, ws, kw, alg, seed = problem
    try:
        conv_transpose2d_params(xs, ws, None, **kw)
    except ValueError:
        assume(False)
    x, w, b = _args(np.random.default_rng(seed), xs, ws, kw)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, **kw)
    gy = np.random.default_rng(seed + 1).standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    assert_close(fastconv.conv_transpose2d(x, w, b, **kw, algorithm=alg), ty.detach().numpy(), np.float64, "y")
    for g, t, what in zip(fastconv.conv_transpose2d_backward(gy, x, w, **kw, algorithm=alg), (tx, tw, tb), "xwb"):
        assert_close(g, t.grad.numpy(), np.float64, f"grad_{what}")
