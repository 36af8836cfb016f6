"""The CPU direct convolution's batch-inner layout (``conv_direct_bi``).

The plan (``fastconv._plan.use_batch_inner``) gives stride-1 problems with a
batch of >= 8 and small planes the batch-inner layout, which
``fastconv.cpu.conv_direct_bi`` runs.  tests/api/test_conv2d.py uses small batches
and never gets there, so this file runs the public API
(``fastconv.conv2d(..., algorithm="direct")``, ``fastconv.conv2d_backward``)
on shapes that do, and proves it for every case twice: the rule says so, and a
spy on the module's entry points sees the call (and, for finite inputs, that
the batch-inner backward did not fall back to its exact grad_weight, which
would hide its bugs).  Outputs are poisoned (conftest), so an
element left unwritten fails.  Covered: odd batches (not a multiple of the
vector width), padding (symmetric, asymmetric "same", wider than the kernel's
reach), dilation, groups and depthwise, rectangular kernels and planes, the
register tiles (1-channel loop for < 4 channels, 4-channel for 4..7, 8-channel
for >= 8, channel blocks past _CBLK) in the forward and in grad_x (whose
output channels are the input channels), NaN/Inf (the scatter grad_x for
non-finite weights, the exact grad_weight fallback), finite differences,
``need_input_grad=False``, PyTorch parity, and the rule's boundary.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import reference
from fastconv._params import conv2d_params
from fastconv._plan import use_batch_inner
from fastconv.cpu import conv_direct_bi

from tests.helpers import assert_close, assert_same_nonfinite, check_grads, spy_calls, spy_results

DTYPES = [np.float32, np.float64]

# (N, C, H, W, K, KH, KW, conv2d keyword arguments, bias?); every one must
# satisfy use_batch_inner (asserted in each test)
CASES = {
    "plain_n8": (8, 3, 5, 5, 5, 3, 3, {}, True),
    "plain_n13": (13, 3, 5, 5, 5, 3, 3, {}, True),
    "pad1_k5x5": (9, 3, 6, 6, 4, 5, 5, dict(padding=1), True),
    "same_even_kernel": (8, 3, 4, 4, 6, 4, 4, dict(padding="same"), True),
    "same_rect_even": (11, 2, 5, 4, 3, 4, 2, dict(padding="same"), True),
    "dil2": (8, 3, 7, 7, 5, 3, 3, dict(dilation=2), True),
    "dil_pair_pad": (10, 3, 7, 6, 5, 3, 2, dict(dilation=(2, 3), padding=(1, 0)), True),
    "pad_wider_than_kernel": (8, 3, 6, 3, 5, 4, 1, dict(padding=(0, 2)), True),
    "groups2": (8, 4, 5, 5, 6, 3, 3, dict(groups=2), True),
    "groups2_tile8": (9, 16, 5, 5, 20, 3, 3, dict(groups=2), True),
    "depthwise": (17, 5, 5, 5, 5, 3, 3, dict(groups=5), True),
    "depthwise_x2_dil": (8, 4, 7, 7, 8, 3, 3, dict(groups=4, dilation=2), True),
    "rect": (8, 3, 6, 5, 5, 3, 2, {}, True),
    "k1": (8, 3, 5, 5, 1, 3, 3, {}, True),
    # padded (unpadded, 7 and 12 output channels would run on the narrow pixel tiles)
    "k7_c6": (8, 6, 5, 6, 7, 3, 3, dict(padding=(0, 1)), True),
    "k12_c9": (8, 9, 5, 5, 12, 3, 3, dict(padding=(0, 1)), True),
    "deep_c40_k36": (8, 40, 5, 5, 36, 3, 3, {}, True),
    "no_bias": (12, 4, 6, 6, 6, 5, 5, dict(padding=1), False),
    "kernel_fills_input": (8, 3, 5, 5, 5, 5, 5, {}, True),
    "one_output_row": (8, 3, 3, 9, 5, 3, 3, {}, True),
    "ratio_exactly_075": (8, 2, 2, 3, 4, 3, 2, dict(padding=1), True),
    "big_batch": (160, 2, 5, 5, 4, 3, 3, {}, True),
}

TORCH_CASES = ["plain_n13", "same_rect_even", "dil_pair_pad", "groups2_tile8", "depthwise", "no_bias"]
NO_GX_CASES = ["plain_n8", "same_even_kernel", "groups2", "depthwise", "deep_c40_k36"]


def _params(case):
    n, c, h, w, k, kh, kw, opts, _ = case
    return conv2d_params((n, c, h, w), (k, c // opts.get("groups", 1), kh, kw), None, **opts)


def _inputs(rng, case, dtype):
    n, c, h, w, k, kh, kw, opts, has_bias = case
    p = _params(case)
    assert use_batch_inner(p), "case does not take the batch-inner path"
    x = rng.standard_normal(p.x_shape).astype(dtype)
    wt = rng.standard_normal(p.weight_shape).astype(dtype)
    b = rng.standard_normal(k).astype(dtype) if has_bias else None
    return x, wt, b, opts


def _output_of_forward(result):
    y, _kept = result  # the batch-inner forward returns (y, what it keeps for the backward)
    return y


@pytest.fixture
def bi_calls(monkeypatch):
    """Records the batch-inner entry points' calls as the backend makes them:
    "forward": [y], "backward": [need_input_grad], "exact": [exact grad_weight
    fallbacks]."""
    return {
        "forward": spy_results(monkeypatch, conv_direct_bi, "forward", record=_output_of_forward),
        "backward": spy_calls(monkeypatch, conv_direct_bi, "backward",
                              record=lambda *args, **kwargs: args[3].need_input_grad),  # the plan's
        "exact": spy_calls(monkeypatch, conv_direct_bi, "grad_weight_exact"),
    }


def _backward_took_bi(calls, need_input_grad=True):
    """One batch-inner backward call that computed its own grad_weight (no fallback)."""
    assert len(calls["backward"]) == 1, "the batch-inner backward was not called exactly once"
    assert calls["backward"][0] is need_input_grad
    assert not calls["exact"], "the batch-inner backward fell back to the exact grad_weight on finite inputs"


# --------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_matches_reference(dtype, case, rng, bi_calls):
    x, wt, b, opts = _inputs(rng, CASES[case], dtype)
    y = fastconv.conv2d(x, wt, b, **opts, algorithm="direct")
    assert len(bi_calls["forward"]) == 1 and bi_calls["forward"][0] is y
    ref = reference.conv2d(x, wt, b, **opts)
    assert y.dtype == dtype and y.flags.c_contiguous
    assert_close(y, ref, dtype, "y")
    gy = rng.standard_normal(ref.shape).astype(dtype)
    gx, gw, gb = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct")
    _backward_took_bi(bi_calls)
    rx, rw, rb = reference.conv2d_backward(gy, x, wt, **opts)
    for got, want, what in ((gx, rx, "grad_x"), (gw, rw, "grad_weight"), (gb, rb, "grad_bias")):
        assert got.dtype == dtype and got.flags.c_contiguous, what
        assert_close(got, want, dtype, what)


@pytest.mark.parametrize("case", NO_GX_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_need_input_grad_false(dtype, case, rng, bi_calls):
    x, wt, _, opts = _inputs(rng, CASES[case], dtype)
    gy = rng.standard_normal(_params(CASES[case]).y_shape).astype(dtype)
    gx, gw, gb = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct", need_input_grad=False)
    _backward_took_bi(bi_calls, need_input_grad=False)
    assert gx is None
    bi_calls["backward"].clear()
    full_gx, full_gw, full_gb = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct")
    _backward_took_bi(bi_calls)
    assert full_gx is not None and full_gx.shape == x.shape
    assert gw.dtype == dtype and gb.dtype == dtype
    assert np.array_equal(gw, full_gw), "grad_weight differs from the need_input_grad=True call"
    assert np.array_equal(gb, full_gb), "grad_bias differs from the need_input_grad=True call"
    _, rw, rb = reference.conv2d_backward(gy, x, wt, **opts)
    assert_close(gw, rw, dtype, "grad_weight")
    assert_close(gb, rb, dtype, "grad_bias")


@pytest.mark.parametrize("case", TORCH_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_torch_parity(dtype, case, rng, torch, bi_calls):
    x, wt, b, opts = _inputs(rng, CASES[case], dtype)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(wt).requires_grad_()
    tb = None if b is None else torch.from_numpy(b).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about uneven "same" padding
        ty = torch.nn.functional.conv2d(tx, tw, tb, **opts)
    y = fastconv.conv2d(x, wt, b, **opts, algorithm="direct")
    assert_close(y, ty.detach().numpy(), dtype, "y vs torch")
    gy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(gy))
    gx, gw, gb = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct")
    assert len(bi_calls["forward"]) == 1
    _backward_took_bi(bi_calls)
    assert_close(gx, tx.grad.numpy(), dtype, "grad_x vs torch")
    assert_close(gw, tw.grad.numpy(), dtype, "grad_weight vs torch")
    if tb is not None:
        assert_close(gb, tb.grad.numpy(), dtype, "grad_bias vs torch")
    else:
        assert_close(gb, gy.astype(np.float64).sum(axis=(0, 2, 3)), dtype, "grad_bias")


# --------------------------------------------------------------------------- NaN / Inf

# x (9, 4, 6, 6), weight (6, 2, 5, 5), padding 1, groups 2 -> y (9, 6, 4, 4)
NAN_OPTS = dict(padding=1, groups=2)


def _nan_inf_inputs(rng, where, dtype):
    x = rng.standard_normal((9, 4, 6, 6)).astype(dtype)
    wt = rng.standard_normal((6, 2, 5, 5)).astype(dtype)
    gy = rng.standard_normal((9, 6, 4, 4)).astype(dtype)
    if where == "x":
        x[0, 1, 2, 3] = np.nan
        x[8, 0, 5, 5] = np.inf    # last image's corner: garbage columns of the layout read it
        x[3, 3, 0, 0] = -np.inf
    elif where == "weight":
        wt[1, 0, 0, 0] = np.inf   # multiplies zero padding in the forward (NaN there, as in torch)
        wt[4, 1, 2, 1] = np.nan
    elif where == "grad_output_nan":
        gy[0, 2, 0, 0] = np.inf
        gy[8, 5, 3, 3] = np.nan
    elif where == "grad_output_inf":
        # one +inf whose 5x5 taps all read x (never padding): grad_weight is
        # +-inf without NaN, so the batch-inner grad_x itself sees the inf
        gy[4, 3, 1, 2] = np.inf
    return x, wt, gy


WHERE = ["x", "weight", "grad_output_nan", "grad_output_inf"]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_nan_inf_match_reference(dtype, where, rng, bi_calls):
    """NaN/Inf exactly where the reference has them.  Non-finite weights take
    the batch-inner backward's scatter grad_x (no fallback: grad_weight is
    finite); a NaN grad_weight (NaN grad_output, or a non-finite x read by a
    garbage Q) makes it recompute grad_weight over exact output rows."""
    x, wt, gy = _nan_inf_inputs(rng, where, dtype)
    assert use_batch_inner(conv2d_params(x.shape, wt.shape, None, **NAN_OPTS))
    b = rng.standard_normal(6).astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        y = fastconv.conv2d(x, wt, b, **NAN_OPTS, algorithm="direct")
        got = fastconv.conv2d_backward(gy, x, wt, **NAN_OPTS, algorithm="direct")
        want_y = reference.conv2d(x, wt, b, **NAN_OPTS)
        want = reference.conv2d_backward(gy, x, wt, **NAN_OPTS)
    assert len(bi_calls["forward"]) == 1 and len(bi_calls["backward"]) == 1
    if where in ("weight", "grad_output_inf"):
        _backward_took_bi(bi_calls)
    if where == "grad_output_nan":  # every grad_weight[k] of a NaN channel k is NaN
        assert len(bi_calls["exact"]) == 1
    assert_same_nonfinite(y, want_y, dtype, "y")
    for g, r, what in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
        assert_same_nonfinite(g, r, dtype, what)


@pytest.mark.parametrize("where", WHERE)
def test_nan_inf_match_torch(where, rng, torch):
    x, wt, gy = _nan_inf_inputs(rng, where, np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(wt).requires_grad_()
    tb = torch.from_numpy(b).requires_grad_()
    ty = torch.nn.functional.conv2d(tx, tw, tb, **NAN_OPTS)
    ty.backward(torch.from_numpy(gy))
    with np.errstate(invalid="ignore", over="ignore"):
        y = fastconv.conv2d(x, wt, b, **NAN_OPTS, algorithm="direct")
        grads = fastconv.conv2d_backward(gy, x, wt, **NAN_OPTS, algorithm="direct")
    assert_same_nonfinite(y, ty.detach().numpy(), np.float32, "y")
    for g, t, what in zip(grads, (tx.grad, tw.grad, tb.grad), ("grad_x", "grad_weight", "grad_bias")):
        assert_same_nonfinite(g, t.numpy(), np.float32, what)


# --------------------------------------------------------------------------- finite differences

FD_CASES = {
    "groups2_same_rect": ((8, 4, 5, 6), (6, 2, 4, 2), dict(padding="same", groups=2)),
    "dil_pad_odd_n": ((9, 3, 7, 6), (5, 3, 3, 2), dict(dilation=(2, 1), padding=(1, 0))),
}


@pytest.mark.parametrize("name", list(FD_CASES))
def test_finite_differences(name, rng, bi_calls):
    """Directional finite differences of L = sum(gy * conv2d(x, w, b)) in float64:
    (L(v + eps*d) - L(v - eps*d)) / (2 eps) == <grad_v, d> for v in x, w, b."""
    xs, ws, opts = FD_CASES[name]
    assert use_batch_inner(conv2d_params(xs, ws, None, **opts))
    x, wt, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])

    def conv(x, weight, bias):
        return fastconv.conv2d(x, weight, bias, **opts, algorithm="direct")

    gy = rng.standard_normal(conv(x, wt, b).shape)
    grads = dict(zip(("x", "weight", "bias"), fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct")))
    _backward_took_bi(bi_calls)
    check_grads(conv, {"x": x, "weight": wt, "bias": b}, grads, gy, rng, directional=True)
    assert len(bi_calls["forward"]) == 7  # every forward above ran in the batch-inner layout


# --------------------------------------------------------------------------- the rule's boundary

# (x shape, weight shape, options, expected use_batch_inner); Q per image
# batch-inner (OH-1)*Wp + OW vs standard (H + max pad)*(W + max pad)
RULE = {
    "n8_in": ((8, 3, 5, 5), (5, 3, 3, 3), {}, True),                       # 13 vs 25
    "n7_out": ((7, 3, 5, 5), (5, 3, 3, 3), {}, False),                     # batch < 8
    "ratio_075_in": ((8, 2, 2, 3), (4, 2, 3, 2), dict(padding=1), True),   # 9 vs 12
    "ratio_078_out": ((8, 3, 5, 6), (5, 3, 3, 3), dict(padding=(1, 0)), False),  # 28 vs 36
    "pad1_3x3_out": ((8, 3, 5, 5), (5, 3, 3, 3), dict(padding=1), False),  # 33 vs 36
    "plane13_out": ((8, 3, 13, 13), (5, 3, 3, 3), {}, False),              # 141 vs 169
    "stride2_out": ((8, 3, 5, 5), (5, 3, 3, 3), dict(stride=2), False),
    "stride_1x2_out": ((8, 3, 5, 5), (5, 3, 3, 3), dict(stride=(1, 2)), False),
}


@pytest.mark.parametrize("name", list(RULE))
def test_rule_boundary(name, rng, bi_calls):
    """The rule as documented, and the direct entry points follow it (either
    way the result is right)."""
    xs, ws, opts, expect = RULE[name]
    assert use_batch_inner(conv2d_params(xs, ws, None, **opts)) is expect
    x, wt, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    y = fastconv.conv2d(x, wt, b, **opts, algorithm="direct")
    assert_close(y, reference.conv2d(x, wt, b, **opts), np.float64, "y")
    gy = rng.standard_normal(y.shape)
    grads = fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct")
    for got, want in zip(grads, reference.conv2d_backward(gy, x, wt, **opts)):
        assert_close(got, want, np.float64, "grad")
    assert len(bi_calls["forward"]) == len(bi_calls["backward"]) == int(expect)


# --------------------------------------------------------------------------- properties


@st.composite
def bi_problems(draw):
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 3))
    k = groups * draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h, w = draw(st.integers(2, 9)), draw(st.integers(2, 9))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(st.sampled_from(["same", "valid"]),
                             st.tuples(st.integers(0, 2), st.integers(0, 2))))
    n = draw(st.integers(8, 20))
    opts = dict(padding=padding, dilation=dilation, groups=groups)
    try:
        p = conv2d_params((n, c, h, w), (k, c // groups, kh, kw), None, **opts)
    except ValueError:
        assume(False)
    assume(use_batch_inner(p))
    return (n, c, h, w), (k, c // groups, kh, kw), opts, draw(st.booleans()), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=30, deadline=None)
@given(prob=bi_problems(), dtype=st.sampled_from(DTYPES))
def test_property_matches_reference(prob, dtype):
    """Random batch-inner problems (fastconv._alloc.POISON is on: the autouse
    fixture wraps the whole hypothesis run)."""
    xs, ws, opts, has_bias, seed = prob
    rng = np.random.default_rng(seed)
    x, wt = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if has_bias else None
    ref = reference.conv2d(x, wt, b, **opts)
    assert_close(fastconv.conv2d(x, wt, b, **opts, algorithm="direct"), ref, dtype, "y")
    gy = rng.standard_normal(ref.shape).astype(dtype)
    for got, want, what in zip(fastconv.conv2d_backward(gy, x, wt, **opts, algorithm="direct"),
                               reference.conv2d_backward(gy, x, wt, **opts),
                               ("grad_x", "grad_weight", "grad_bias")):
        assert_close(got, want, dtype, what)
