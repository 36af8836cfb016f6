"""fastconv.nn's ConvReLUPool step with the first layer's conv and pooling as
one CPU kernel each way (fastconv/cpu/conv_pool.py), against the same model
running the two ops (``Sequential._fused_kernels = False``)."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv.cpu import conv_pool
from fastconv.nn import SGD, Conv2D, Dense, Flatten, MaxPooling2D, Sequential
from fastconv.nn.steps import ConvReLUPool
from tests.helpers import TOL, rel_err, spy_calls


def _net(dtype, first=None, pool=None, second=None):
    first = first or Conv2D(8, 3, activation="relu", input_shape=(12, 12, 1))
    second = second or Conv2D(4, 3, activation="relu")  # 4 channels: Q-lane tiles, never fused
    m = Sequential([first, pool or MaxPooling2D(2), second, MaxPooling2D(2),
                    Flatten(), Dense(4, activation="softmax")], seed=3, dtype=dtype)
    m.compile(SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    m.build()
    return m


def _data(rng, n=20, shape=(12, 12, 1)):
    return rng.standard_normal((n, *shape)), rng.integers(0, 4, n)


@pytest.mark.parametrize("second_fused", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_steps_train_like_the_two_ops(rng, monkeypatch, dtype, second_fused):
    """The first layer fused (grad_weight from the codes); with ``second_fused`` the second
    conv too (32 channels on 8: its own forward runs on the pixel tiles; codes scattered)."""
    x, y = _data(rng)
    second = (lambda: Conv2D(32, 3, activation="relu")) if second_fused else (lambda: None)
    fused, plain = _net(dtype, second=second()), _net(dtype, second=second())
    plain._fused_kernels = False
    forwards = spy_calls(monkeypatch, conv_pool, "forward")
    backwards = spy_calls(monkeypatch, conv_pool, "grad_weight")
    scatters = spy_calls(monkeypatch, conv_pool, "scatter_gradient")
    tol = TOL[np.dtype(dtype)] * 10  # a few optimizer steps on sums taken in another order
    steps = 1 + second_fused
    assert rel_err(fused.predict(x), plain.predict(x)) <= tol
    assert len(forwards) == steps and not backwards  # predict: no codes kept
    for _ in range(3):
        a, b = fused.train_on_batch(x, y), plain.train_on_batch(x, y)
        assert abs(a[0] - b[0]) <= tol * abs(b[0])
    assert len(forwards) == 4 * steps and len(backwards) == 3 and len(scatters) == 3 * second_fused
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        assert rel_err(a, b) <= tol


def test_the_plan_keeps_the_two_ops_where_the_fused_kernels_do_not_apply(rng, monkeypatch):
    x, y = _data(rng, 6)
    forwards = spy_calls(monkeypatch, conv_pool, "forward")
    for channels, first, pool in [
        (1, Conv2D(8, 3, activation="relu", padding="same", padding_mode="reflect", input_shape=(12, 12, 1)), None),
        (1, Conv2D(8, 3, activation="relu", input_shape=(12, 12, 1)), MaxPooling2D(3, strides=2)),  # overlapping
        (1, Conv2D(8, 3, activation="relu", input_shape=(12, 12, 1)), MaxPooling2D(3, padding="same")),  # padded
        (4, Conv2D(8, 3, activation="relu", input_shape=(12, 12, 4)), None),  # 36 products per output
    ]:
        m = _net("float32", first, pool)
        m.train_on_batch(rng.standard_normal((6, 12, 12, channels)), y)
        assert isinstance(m._pipeline(with_loss=True).steps[0], ConvReLUPool)
    assert not forwards
    # the second conv+pool step of a fused model needs grad_x: never fused
    m = _net("float32")
    m.train_on_batch(x, y)
    assert len(forwards) == 1


def test_backward_needs_a_training_forward(rng):
    x, _ = _data(rng, 4)
    m = _net("float32")
    step = m._pipeline(with_loss=False).steps[0]
    xb = m._batch(x)
    step.forward(xb, training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        step.backward(np.ones((4, 8, 5, 5), np.float32))
    out = step.forward(xb, training=True)
    assert out.shape == (4, 8, 5, 5) and (out >= 0).all()
    assert step.backward(np.ones_like(out)) is None
    assert set(m.layers[0].grads) == {"kernel", "bias"}


@pytest.mark.parametrize("case", [
    dict(filters=6, kernel_size=5, padding="same", pool=2, shape=(14, 14, 1)),  # LeNet's first layer
    dict(filters=20, kernel_size=3, strides=2, pool=2, shape=(17, 15, 3)),  # stride, RGB, 20 channels
    dict(filters=70, kernel_size=2, dilation_rate=2, pool=(2, 3), shape=(13, 16, 2)),  # two channel blocks
    dict(filters=8, kernel_size=3, use_bias=False, pool=3, shape=(11, 11, 1)),  # windows leave a row
])
def test_fused_first_layers_of_other_shapes_train_like_the_two_ops(rng, monkeypatch, case):
    """float64, so the two orders of summation agree to 1e-11 after three steps; batches of
    7 and 5 (not multiples of the grad_weight chunk of 4 images)."""
    case = dict(case)
    pool, shape = case.pop("pool"), case.pop("shape")

    def net():
        m = Sequential([Conv2D(activation="relu", input_shape=shape, **case), MaxPooling2D(pool), Flatten(),
                        Dense(3, activation="softmax")], seed=5, dtype="float64")
        m.compile(SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
        m.build()
        return m

    forwards = spy_calls(monkeypatch, conv_pool, "forward")
    fused, plain = net(), net()
    plain._fused_kernels = False
    for n in (7, 5, 7):
        x, y = rng.standard_normal((n, *shape)), rng.integers(0, 3, n)
        a, b = fused.train_on_batch(x, y), plain.train_on_batch(x, y)
        assert abs(a[0] - b[0]) <= 1e-11 * abs(b[0])
    assert len(forwards) == 3
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        assert rel_err(a, b) <= 1e-11
    assert rel_err(fused.predict(x), plain.predict(x)) <= 1e-11
