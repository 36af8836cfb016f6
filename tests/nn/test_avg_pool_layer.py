"""fastconv.nn.AveragePooling2D / AvgPool2D / GlobalAveragePooling2D: Keras'
defaults and "same" rule (the average over the cells inside the input),
gradients by finite differences, training, save/load through the registry."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import nn

from tests.helpers import check_grads


def keras_same_avg(x, k, s):
    """Keras/TensorFlow "same" average pooling: out ceil(H/s), the mean over each window's in-input cells."""
    n, c, h, w = x.shape
    oh, ow = -(-h // s[0]), -(-w // s[1])
    top = max(0, (oh - 1) * s[0] + k[0] - h) // 2
    left = max(0, (ow - 1) * s[1] + k[1] - w) // 2
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r, q = i * s[0] - top, j * s[1] - left
            y[:, :, i, j] = x[:, :, max(r, 0):min(r + k[0], h), max(q, 0):min(q + k[1], w)].mean(axis=(2, 3))
    return y


def test_defaults_are_keras():
    layer = nn.AvgPool2D()
    assert nn.AvgPool2D is nn.AveragePooling2D
    assert layer.pool_size == (2, 2) and layer.strides == (2, 2) and layer.padding == "valid"
    assert nn.AveragePooling2D(3).strides == (3, 3)


@pytest.mark.parametrize("hw, k, s", [((7, 6), (2, 2), (2, 2)), ((5, 5), (2, 2), (1, 1)), ((6, 7), (3, 2), (1, 2)),
                                      ((5, 8), (3, 3), (2, 3)), ((4, 4), (2, 2), (3, 3))])
def test_same_padding_matches_keras(rng, hw, k, s):
    layer = nn.AveragePooling2D(k, s, padding="same")
    layer.build((3,) + hw, rng, np.float64)
    x = rng.standard_normal((2, 3) + hw)
    y = layer.forward(x, training=True)
    want = keras_same_avg(x, k, s)
    assert y.shape == want.shape and layer.output_shape == want.shape[1:]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-15)
    gy = rng.standard_normal(y.shape)
    check_grads(lambda x: keras_same_avg(x, k, s), {"x": x}, {"x": layer.backward(gy)}, gy, rng)


def test_valid_padding_and_global(rng):
    layer = nn.AveragePooling2D((2, 3), padding="valid")
    layer.build((2, 5, 7), rng, np.float64)
    x = rng.standard_normal((1, 2, 5, 7))
    np.testing.assert_allclose(layer.forward(x), x[:, :, :4, :6].reshape(1, 2, 2, 2, 2, 3).mean(axis=(3, 5)),
                               rtol=1e-12)
    g = nn.GlobalAveragePooling2D()
    assert g.build((2, 5, 7), rng, np.float64) == (2,)
    np.testing.assert_allclose(g.forward(x), x.mean(axis=(2, 3)), rtol=1e-12)
    np.testing.assert_allclose(g.backward(np.ones((1, 2))), np.full(x.shape, 1 / 35), rtol=1e-12)


def test_train_save_load(rng, tmp_path):
    model = nn.Sequential([nn.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)),
                           nn.AveragePooling2D(padding="same"), nn.GlobalAveragePooling2D(),
                           nn.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    x = rng.standard_normal((16, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    before = model.get_weights()[0].copy()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert not np.array_equal(model.get_weights()[0], before)
    path = model.save(tmp_path / "avg.npz")
    loaded = nn.load_model(path)
    assert [type(layer).__name__ for layer in loaded.layers][1:3] == ["AveragePooling2D", "GlobalAveragePooling2D"]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_bad_arguments(rng):
    with pytest.raises(ValueError, match=r'AveragePooling2D padding must be "valid" or "same"'):
        nn.AveragePooling2D(padding="full")
    with pytest.raises(ValueError, match=r"AveragePooling2D pool_size must be >= 1"):
        nn.AveragePooling2D(0)
    with pytest.raises(ValueError, match=r"GlobalAveragePooling2D .* needs image input"):
        nn.GlobalAveragePooling2D().build((5,), rng)


def test_conv2d_padding_mode(rng, tmp_path):
    """Conv2D(padding="same", padding_mode=...) equals the functional conv2d with that mode; saved in its config."""
    import fastconv

    layer = nn.Conv2D(2, 3, padding="same", padding_mode="reflect", use_bias=False)
    layer.build((3, 5, 6), rng, np.float64)
    x = rng.standard_normal((2, 3, 5, 6))
    w = layer.params["kernel"]
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, fastconv.conv2d(x, w, padding="same", padding_mode="reflect"))
    gy = rng.standard_normal(y.shape)
    gx = layer.backward(gy)
    want = fastconv.conv2d_backward(gy, x, w, padding="same", padding_mode="reflect")
    np.testing.assert_array_equal(gx, want[0])
    np.testing.assert_array_equal(layer.grads["kernel"], want[1])
    assert layer.get_config()["padding_mode"] == "reflect"
    assert "padding_mode" not in nn.Conv2D(2, 3).get_config()
    with pytest.raises(ValueError, match=r"padding_mode must be one of"):
        nn.Conv2D(2, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match=r'padding_mode="reflect" needs padding smaller than the input'):
        nn.Conv2D(2, 5, padding="same", padding_mode="reflect").build((1, 2, 2), rng)
