"""conv2d / conv2d_backward with ``padding_mode`` ("reflect", "replicate",
"circular"; torch.nn.Conv2d's): an explicit pad, the convolution with padding
0, and the backward's fold of the padded cells' gradients.  Against the
float64 reference, torch.nn.Conv2d (float64), finite differences; torch's
limits; the pad and fold kernels alone against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv.cpu import pad as cpu_pad

from tests.helpers import assert_close, check_grads

DTYPES = [np.float32, np.float64]
MODES = ["reflect", "replicate", "circular"]
ALGORITHMS = ["auto", "direct", "im2col"]

CASES = [
    ((2, 3, 5, 6), (4, 3, 3, 3), dict(padding=2)),
    ((1, 2, 4, 4), (2, 1, 3, 2), dict(padding=(1, 3), stride=2, groups=2, dilation=(1, 2))),
    ((2, 3, 5, 6), (4, 3, 4, 4), dict(padding="same")),  # odd total padding: extra at the bottom/right
    ((3, 5, 6), (4, 3, 3, 3), dict(padding=1)),  # unbatched
]
IDS = [f"{'x'.join(map(str, s))}-" + "-".join(f"{k}{v}" for k, v in kw.items()) for s, w, kw in CASES]


def _fit(mode, kw):
    """Reflect needs padding < the input size."""
    return dict(kw, padding=(1, 2)) if mode == "reflect" and kw["padding"] == (1, 3) else kw


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("xs, ws, kw", CASES, ids=IDS)
def test_matches_reference(rng, xs, ws, kw, mode, dtype, alg):
    kw = _fit(mode, kw)
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    lift = (lambda a: a[None]) if len(xs) == 3 else (lambda a: a)
    ry = reference.conv2d_padded(lift(x), w, b, padding_mode=mode, **kw)
    y = fastconv.conv2d(x, w, b, padding_mode=mode, algorithm=alg, **kw)
    assert y.dtype == dtype
    assert_close(lift(y), ry, dtype, "y")
    gy = rng.standard_normal(y.shape).astype(dtype)
    got = fastconv.conv2d_backward(gy, x, w, padding_mode=mode, algorithm=alg, **kw)
    want = reference.conv2d_padded_backward(lift(gy), lift(x), w, padding_mode=mode, **kw)
    for g, r, what in zip(got, want, ("grad_x", "grad_weight", "grad_bias")):
        assert_close(lift(g) if what == "grad_x" else g, r, dtype, what)
    gx, gw, _ = fastconv.conv2d_backward(gy, x, w, padding_mode=mode, algorithm=alg, need_input_grad=False, **kw)
    assert gx is None
    assert_close(gw, got[1], dtype, "grad_weight without grad_x")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("xs, ws, kw", CASES, ids=IDS)
def test_matches_torch_conv2d_module(rng, torch, xs, ws, kw, mode):
    kw = _fit(mode, kw)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    m = torch.nn.Conv2d(xs[-3], ws[0], ws[2:], padding_mode=mode, dtype=torch.float64, **kw)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(w))
    b = m.bias.detach().numpy().copy()
    tx = torch.tensor(x, requires_grad=True)
    ty = m(tx)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    assert_close(fastconv.conv2d(x, w, b, padding_mode=mode, **kw), ty.detach().numpy(), np.float64, "y")
    gx, gw, gb = fastconv.conv2d_backward(gy, x, w, padding_mode=mode, **kw)
    assert_close(gx, tx.grad.numpy(), np.float64, "grad_x")
    assert_close(gw, m.weight.grad.numpy(), np.float64, "grad_weight")
    assert_close(gb, m.bias.grad.numpy(), np.float64, "grad_bias")


@pytest.mark.parametrize("mode", MODES)
def test_finite_differences(rng, mode):
    x, w = rng.standard_normal((1, 2, 4, 5)), rng.standard_normal((3, 2, 3, 3))
    kw = dict(padding=2, stride=(1, 2))
    gy = rng.standard_normal(fastconv.conv2d(x, w, padding_mode=mode, **kw).shape)
    gx, gw, _ = fastconv.conv2d_backward(gy, x, w, padding_mode=mode, **kw)
    check_grads(lambda x, w: fastconv.conv2d(x, w, padding_mode=mode, **kw), {"x": x, "w": w}, {"x": gx, "w": gw},
                gy, rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["zeros"] + MODES)
@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 2, 3, 0), (3, 4, 2, 4)])
def test_pad_and_fold_kernels(rng, mode, pads, dtype):
    if mode == "reflect" and max(pads) >= 4:
        pads = (1, 2, 3, 0)
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    xp = cpu_pad.pad(x, pads, mode)
    np.testing.assert_array_equal(xp, reference.pad(x, pads, mode).astype(dtype))
    g = rng.standard_normal(xp.shape).astype(dtype)
    # the fold is the adjoint of the pad: <pad(x), g> == <x, fold(g)>
    gx = cpu_pad.fold(g, pads, mode)
    assert gx.shape == x.shape
    np.testing.assert_allclose(np.sum(xp.astype(np.float64) * g), np.sum(x.astype(np.float64) * gx),
                               rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_nan_in_the_padded_border_propagates_as_torch(rng, torch):
    x = rng.standard_normal((1, 1, 4, 4))
    x[0, 0, 0, 1] = np.nan  # reflected into the top padding row
    w = rng.standard_normal((1, 1, 3, 3))
    m = torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect", bias=False, dtype=torch.float64)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(w))
        want = m(torch.tensor(x)).numpy()
    got = fastconv.conv2d(x, w, padding=1, padding_mode="reflect")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


X, W = np.zeros((1, 2, 3, 4)), np.zeros((2, 2, 3, 3))


@pytest.mark.parametrize("kw, exc, match", [
    (dict(padding=3, padding_mode="reflect"), ValueError,
     r'padding_mode="reflect" needs padding smaller than the input: padding \(3, 3\) along H of size 3'),
    (dict(padding=(0, 4), padding_mode="reflect"), ValueError, r"padding \(4, 4\) along W of size 4"),
    (dict(padding=4, padding_mode="circular"), ValueError,
     r'padding_mode="circular" needs padding at most the input size .* padding \(4, 4\) along H of size 3'),
    (dict(padding=1, padding_mode="mirror"), ValueError, r"padding_mode must be one of \('zeros', 'reflect'"),
    (dict(padding=1, padding_mode=None), ValueError, r"padding_mode must be one of"),
])
def test_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        fastconv.conv2d(X, W, **kw)
    with pytest.raises(exc, match=match):
        fastconv.conv2d_backward(np.zeros((1, 2, 3, 4)), X, W, **kw)


def test_limits_that_are_allowed():
    """Circular padding equal to the input size and replicate padding of any size run."""
    assert fastconv.conv2d(X, W, padding=3, padding_mode="circular").shape == (1, 2, 7, 8)
    assert fastconv.conv2d(X, W, padding=6, padding_mode="replicate").shape == (1, 2, 13, 14)
    assert fastconv.conv2d(X[:0], W, padding=2, padding_mode="reflect").shape == (0, 2, 5, 6)
