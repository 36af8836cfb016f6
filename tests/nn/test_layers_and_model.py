"""fastconv.nn: gradients by finite differences (float64), training, save/load, errors.

Every layer's backward is checked against central differences of
sum(forward(x) * R) for a random R, in float64, through the real fastconv ops;
so is a whole small network through the loss.  Optimizer steps are checked
against the update formulas written out independently here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastconv.nn import (SGD, Adadelta, Adam, Conv2D, Dense, Dropout, Flatten, MaxPool2D, MaxPooling2D,
                         ReLU, RMSprop, Sequential, load_model, to_categorical)
from fastconv.nn import losses as L
from fastconv.nn import _ops_cpu
from fastconv.nn.steps import ConvReLUPool, LayerStep, SoftmaxCrossEntropy
from tests.helpers import numeric_grad, quadrant_blobs, spy_calls

F64 = np.float64


# --------------------------------------------------------------------------- helpers


def distinct(rng, shape, scale=1.0):
    """Tie-free values (a shuffled linspace), so max-pool argmaxes and relu signs are stable."""
    n = int(np.prod(shape))
    v = np.linspace(-scale, scale, n) + rng.uniform(-0.1, 0.1) * scale / n
    return rng.permutation(v).reshape(shape)


def build(layer, in_shape, seed=0):
    layer.name = layer.name or "layer"
    layer.build(in_shape, np.random.default_rng(seed), F64)
    return layer


def assert_grad(analytic, numeric, what, tol=1e-6):
    analytic = np.asarray(analytic, dtype=F64)
    err = np.linalg.norm(analytic - numeric) / max(np.linalg.norm(numeric), 1e-12)
    assert err < tol, f"{what}: relative error {err:.2e} (analytic vs finite differences)"


def check_layer(layer, x, rng, reseed=None):
    """Backward of `layer` vs finite differences for input and every parameter."""
    layer.need_input_grad = True

    def run():
        if reseed:
            reseed()
        return layer.forward(x, training=True)

    y = run()
    r = rng.standard_normal(y.shape)

    def f():
        return float(np.sum(run() * r))

    run()
    gx = layer.backward(r.copy())
    grads = {k: np.array(v) for k, v in layer.grads.items()}
    assert_grad(gx, numeric_grad(f, x), f"{layer.type_name} grad_x")
    for k, p in layer.params.items():
        assert_grad(grads[k], numeric_grad(f, p), f"{layer.type_name} grad_{k}")


# --------------------------------------------------------------------------- layer gradients


@pytest.mark.parametrize("kw", [
    dict(padding="valid", activation=None),
    dict(padding="same", activation="relu"),
    dict(padding="same", strides=2, activation="tanh"),
    dict(padding="valid", dilation_rate=2, activation="sigmoid"),
    dict(padding="same", activation="softmax", use_bias=False),
    dict(padding="same", strides=(2, 1), kernel_size=(2, 3), activation=None),
], ids=["valid", "same-relu", "same-s2-tanh", "dil2-sigmoid", "softmax-nobias", "even-kernel-asym"])
def test_conv2d_gradients(rng, kw):
    kw = dict(kw)
    layer = build(Conv2D(3, kw.pop("kernel_size", 3), **kw), (2, 7, 6))
    check_layer(layer, distinct(rng, (2, 2, 7, 6)), rng)


@pytest.mark.parametrize("pool,strides,padding,hw", [
    (2, None, "valid", (6, 7)),
    (3, 2, "valid", (7, 7)),
    (2, None, "same", (5, 7)),   # asymmetric Keras "same": explicit -inf pad, then crop
    (3, 1, "same", (5, 5)),      # symmetric pad 1: the kernel's implicit padding
    ((2, 3), (1, 2), "same", (4, 6)),
])
def test_maxpool_gradients(rng, pool, strides, padding, hw):
    layer = build(MaxPool2D(pool, strides, padding), (3, *hw))
    check_layer(layer, distinct(rng, (2, 3, *hw)), rng)


@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "softmax"])
def test_dense_gradients(rng, activation):
    layer = build(Dense(4, activation=activation), (5,))
    check_layer(layer, distinct(rng, (3, 5)), rng)


def test_flatten_relu_dropout_gradients(rng):
    check_layer(build(Flatten(), (3, 2, 4)), distinct(rng, (2, 3, 2, 4)), rng)
    check_layer(build(ReLU(), (3, 2, 4)), distinct(rng, (2, 3, 2, 4)), rng)
    drop = build(Dropout(0.4), (10,))

    def reseed():
        drop.rng = np.random.default_rng(7)  # the same mask on every finite-difference evaluation

    check_layer(drop, distinct(rng, (6, 10)), rng, reseed=reseed)
    kept = drop.forward(np.ones((200, 10)), training=True)
    assert set(np.unique(kept)) <= {0.0, 1 / 0.6} and 0.3 < np.mean(kept == 0) < 0.5
    np.testing.assert_array_equal(drop.forward(np.ones((2, 10)), training=False), np.ones((2, 10)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_relu_matches_numpy(rng, dtype):
    """Large contiguous arrays take the Numba kernels: same values as NumPy, NaN/Inf included."""
    z = rng.standard_normal((4, 8, 40, 40)).astype(dtype)
    assert z.size >= _ops_cpu._PARALLEL_MIN
    z.reshape(-1)[:4] = [np.nan, -np.inf, np.inf, -0.0]
    g = rng.standard_normal(z.shape).astype(dtype)
    g.reshape(-1)[4:6] = [np.nan, np.inf]
    y = _ops_cpu.activation_forward("relu", z.copy())
    np.testing.assert_array_equal(y, np.maximum(z, 0))
    with np.errstate(invalid="ignore"):  # inf * 0 in the NumPy oracle
        expect = g * (y > 0)
    np.testing.assert_array_equal(_ops_cpu.activation_backward("relu", g.copy(), y), expect)


def small_net(last_activation="softmax", dtype="float64", seed=3):
    return Sequential([
        Conv2D(3, 3, padding="same", activation="relu", input_shape=(6, 6, 2)),
        MaxPool2D(2),
        Conv2D(4, 2, activation="tanh"),
        Flatten(),
        Dense(5, activation="relu"),
        Dropout(0.25),
        Dense(3, activation=last_activation),
    ], dtype=dtype, seed=seed)


@pytest.mark.parametrize("last,loss", [
    ("softmax", "sparse_categorical_crossentropy"),   # fused softmax + log-sum-exp
    ("sigmoid", "categorical_crossentropy"),           # Keras' probability path (normalise, clip)
])
def test_whole_network_gradient(rng, last, loss):
    m = small_net(last)
    m.compile(SGD(), loss)
    m.build()
    x = m._batch(rng.uniform(-1, 1, (4, 6, 6, 2)))
    labels = np.array([0, 2, 1, 2])
    y = labels if m.loss.sparse else to_categorical(labels, 3, dtype=F64)
    pipe = m._pipeline(with_loss=True)
    assert isinstance(pipe.steps[-1], SoftmaxCrossEntropy) == (last == "softmax")
    assert isinstance(pipe.steps[0], ConvReLUPool)
    drop = m.layers[5]

    def loss_value():
        drop.rng = np.random.default_rng(11)
        return pipe.loss(pipe.forward(x, True), y)[0]

    drop.rng = np.random.default_rng(11)
    _, g = pipe.loss(pipe.forward(x, True), y)
    pipe.backward(g)
    for layer in m.layers:
        for k, p in layer.params.items():
            assert_grad(layer.grads[k], numeric_grad(loss_value, p), f"{layer.name}.{k}")


# --------------------------------------------------------------------------- losses


def test_log_sum_exp_is_stable():
    z = np.array([[1000.0, 0.0, -1000.0], [-5e4, -5e4, -5e4]])
    loss, g = L.SparseCategoricalCrossentropy(from_logits=True)(z, np.array([0, 1]))
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    assert loss == pytest.approx(np.log(3) / 2)
    np.testing.assert_allclose(g[0], [0, 0, 0], atol=1e-300)
    np.testing.assert_allclose(g[1], np.array([1, -2, 1]) / 3 / 2)


def test_losses_agree(rng):
    z = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    onehot = to_categorical(labels, 4, dtype=F64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    expect = -logp[np.arange(5), labels].mean()
    for lossfn, y in ((L.SparseCategoricalCrossentropy(True), labels), (L.CategoricalCrossentropy(True), onehot),
                      (L.CategoricalCrossentropy(False), onehot), (L.SparseCategoricalCrossentropy(False), labels)):
        value, _ = lossfn(np.exp(logp) if not lossfn.from_logits else z, y)
        assert value == pytest.approx(expect, rel=1e-12), lossfn.get_config()


def test_probability_loss_gradient(rng):
    p = rng.uniform(0.05, 1.0, (3, 4))
    y = to_categorical([1, 3, 0], 4, dtype=F64)
    lossfn = L.CategoricalCrossentropy()
    _, g = lossfn(p, y)
    assert_grad(g, numeric_grad(lambda: lossfn(p, y)[0], p), "probability-path grad")


# --------------------------------------------------------------------------- optimizers


def _run_opt(opt, steps=3):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(6)
    gs = [rng.standard_normal(6) for _ in range(steps)]
    q = p.copy()
    for g in gs:
        opt.apply([q], [g.copy()], [True], _ops_cpu)
    return p, gs, q


def test_sgd_momentum_nesterov():
    p, gs, q = _run_opt(SGD(0.1, momentum=0.9, nesterov=True))
    v = np.zeros_like(p)
    for g in gs:
        v = 0.9 * v - 0.1 * g
        p = p + 0.9 * v - 0.1 * g
    np.testing.assert_allclose(q, p, rtol=1e-14)
    p, gs, q = _run_opt(SGD())  # Keras default lr 0.01, plain
    np.testing.assert_allclose(q, p - 0.01 * sum(gs), rtol=1e-14)


def test_rmsprop_adam_adadelta_formulas():
    p, gs, q = _run_opt(RMSprop())
    a = np.zeros_like(p)
    for g in gs:
        a = 0.9 * a + 0.1 * g * g
        p = p - 1e-3 * g / (np.sqrt(a) + 1e-7)
    np.testing.assert_allclose(q, p, rtol=1e-13)

    p, gs, q = _run_opt(Adam())
    m = v = np.zeros_like(p)
    for t, g in enumerate(gs, 1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 1e-3 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(q, p, rtol=1e-13)

    p, gs, q = _run_opt(Adadelta())
    a = b = np.zeros_like(p)
    for g in gs:
        a = 0.95 * a + 0.05 * g * g
        d = np.sqrt(b + 1e-7) / np.sqrt(a + 1e-7) * g
        b = 0.95 * b + 0.05 * d * d
        p = p - 1e-3 * d
    np.testing.assert_allclose(q, p, rtol=1e-13)


def test_weight_decay_applies_to_kernels_only():
    opt = SGD(0.1, weight_decay=0.5)
    k, b = np.ones(3), np.ones(3)
    opt.apply([k, b], [np.zeros(3), np.zeros(3)], [True, False], _ops_cpu)
    np.testing.assert_allclose(k, 1 - 0.1 * 0.5)
    np.testing.assert_allclose(b, 1.0)


# --------------------------------------------------------------------------- training


def mnist_like(n=48, seed=0):
    return quadrant_blobs(n, seed)


def toy_cnn(seed=0, optimizer="adam"):
    m = Sequential([Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)), MaxPool2D(2), Flatten(),
                    Dense(4, activation="softmax")], seed=seed)
    m.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


@pytest.mark.parametrize("optimizer", [Adam(0.01), RMSprop(0.01), SGD(0.1, momentum=0.9), Adadelta(1.0, epsilon=1e-6)],
                         ids=["adam", "rmsprop", "sgd-momentum", "adadelta"])
def test_loss_decreases_on_fixed_batch(optimizer):
    x, y = mnist_like()
    m = toy_cnn(optimizer=optimizer)
    first = m.train_on_batch(x, y)[0]
    for _ in range(40):
        last = m.train_on_batch(x, y)[0]
    assert last < 0.5 * first, (first, last)


def test_fit_history_validation_and_seeds():
    x, y = mnist_like(60)
    h1 = toy_cnn(seed=1).fit(x, y, epochs=2, batch_size=16, validation_split=0.25, verbose=0, seed=5)
    assert set(h1.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 2 for v in h1.history.values()) and len(h1.epoch_times) == 2
    m2 = toy_cnn(seed=1)
    h2 = m2.fit(x, y, epochs=2, batch_size=16, validation_split=0.25, verbose=0, seed=5)
    assert h1.history == h2.history  # same seeds -> the same run, bit for bit
    # validation_split holds out the *last* 25 %: the recorded val metrics are evaluate() on them
    assert m2.evaluate(x[45:], y[45:], batch_size=16) == pytest.approx(
        [h2.history["val_loss"][-1], h2.history["val_accuracy"][-1]], rel=1e-6)
    h3 = toy_cnn(seed=1).fit(x, y, epochs=2, batch_size=16, validation_split=0.25, verbose=0, seed=6)
    assert h3.history != h1.history


def test_unbuilt_model_builds_from_fit_data_with_fit_seed():
    x, y = mnist_like(16)

    def run():
        m = Sequential([Conv2D(2, 3, activation="relu"), Flatten(), Dense(4, activation="softmax")])
        m.compile("sgd", "sparse_categorical_crossentropy")
        m.fit(x[..., None], y, epochs=1, batch_size=8, verbose=0, seed=9)
        return m.get_weights()

    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


def test_categorical_targets_and_dense_only_model():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0)
    m = Sequential([Dense(16, activation="tanh", input_shape=(6,)), Dense(4, activation="softmax")], seed=0)
    m.compile(Adam(0.05), "categorical_crossentropy")
    h = m.fit(x, to_categorical(labels, 4), epochs=30, batch_size=40, verbose=0, seed=0)
    assert h.history["loss"][-1] < 0.5 * h.history["loss"][0]
    assert m.evaluate(x, to_categorical(labels, 4))[1] > 0.9


def test_predict_layouts_and_probabilities():
    x, _ = mnist_like(5)
    m = toy_cnn()
    p = m.predict(x)
    assert p.shape == (5, 4) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-6)
    np.testing.assert_array_equal(m.predict(x[..., None]), p)  # (N, H, W) == (N, H, W, 1)
    np.testing.assert_allclose(m.predict(x, batch_size=2), p, rtol=1e-5)


def test_verbose_modes(capsys):
    """verbose=0 prints nothing, 2 one line per epoch; 1 with stdout not a terminal
    (as under pytest) also one line per epoch, no carriage returns."""
    x, y = mnist_like(16)
    m = toy_cnn()
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert capsys.readouterr().out == ""
    m.fit(x, y, epochs=2, batch_size=8, verbose=2, validation_data=(x, y))
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2 ")
    assert "loss " in lines[0] and "acc " in lines[0] and "val_acc " in lines[0]
    m.fit(x, y, epochs=2, batch_size=8, verbose=1)
    out = capsys.readouterr().out
    assert "\r" not in out and len(out.strip().splitlines()) == 2 and "Epoch 1/2" in out


# --------------------------------------------------------------------------- Keras compatibility


def keras_book_model(seed=0):
    return Sequential([
        Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
        MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Conv2D(64, (3, 3), activation="relu"),
        Flatten(),
        Dense(64, activation="relu"),
        Dense(10, activation="softmax"),
    ], seed=seed)


def test_summary_matches_keras():
    lines = []
    keras_book_model().summary(print_fn=lines.append)
    text = "\n".join(lines)
    for row in (("conv2d (Conv2D)", "(None, 26, 26, 32)", "320"),
                ("max_pooling2d (MaxPooling2D)", "(None, 13, 13, 32)", "0"),
                ("conv2d_1 (Conv2D)", "(None, 11, 11, 64)", "18,496"),
                ("max_pooling2d_1 (MaxPooling2D)", "(None, 5, 5, 64)", "0"),
                ("conv2d_2 (Conv2D)", "(None, 3, 3, 64)", "36,928"),
                ("flatten (Flatten)", "(None, 576)", "0"),
                ("dense (Dense)", "(None, 64)", "36,928"),
                ("dense_1 (Dense)", "(None, 10)", "650")):
        assert any(all(cell in line for cell in row) for line in lines), row
    assert "Layer (type)" in text and "Output Shape" in text and "Param #" in text
    assert "Total params: 93,322" in text and "Trainable params: 93,322" in text


def test_keras_weight_layouts_and_flatten_order(rng):
    m = keras_book_model()
    w = m.get_weights()
    assert [a.shape for a in w[:2]] == [(3, 3, 1, 32), (32,)] and w[-2].shape == (64, 10)
    m.set_weights(w)
    for a, b in zip(m.get_weights(), w):
        np.testing.assert_array_equal(a, b)
    # Flatten is Keras' channels-last flatten: Dense weights are portable
    f = build(Flatten(), (3, 2, 4))
    x = rng.standard_normal((2, 3, 2, 4))
    np.testing.assert_array_equal(f.forward(x), x.transpose(0, 2, 3, 1).reshape(2, -1))
    # Conv2D.get_weights is (R, S, C, K) and the layer computes Keras' convolution with it
    conv = build(Conv2D(2, (2, 3), input_shape=(4, 5, 3)), (3, 4, 5))
    kernel, bias = conv.get_weights()
    xin = rng.standard_normal((1, 4, 5, 3))  # NHWC
    out = conv.forward(np.ascontiguousarray(xin.transpose(0, 3, 1, 2)))
    expect = np.zeros((1, 3, 3, 2))
    for i in range(3):
        for j in range(3):
            expect[0, i, j] = np.einsum("rsc,rsck->k", xin[0, i:i + 2, j:j + 3], kernel) + bias
    np.testing.assert_allclose(out.transpose(0, 2, 3, 1), expect, rtol=1e-12)


def test_same_pooling_is_keras_rule(rng):
    x = distinct(rng, (1, 1, 5, 5))
    layer = build(MaxPool2D(2, padding="same"), (1, 5, 5))
    y = layer.forward(x)
    assert y.shape == (1, 1, 3, 3)  # ceil(5 / 2)
    xp = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=-np.inf)  # extra pad bottom/right only
    np.testing.assert_array_equal(y, xp.reshape(1, 1, 3, 2, 3, 2).max(axis=(3, 5)))


# --------------------------------------------------------------------------- save / load


def test_save_load_bit_identical(tmp_path):
    x, y = mnist_like(20)
    m = toy_cnn(seed=2)
    m.fit(x, y, epochs=1, batch_size=8, verbose=0, seed=0)
    path = m.save(tmp_path / "model.npz")
    m2 = load_model(path)
    np.testing.assert_array_equal(m2.predict(x), m.predict(x))
    assert m2.loss.name == "sparse_categorical_crossentropy" and m2.optimizer.name == "adam"
    assert [layer.name for layer in m2.layers] == [layer.name for layer in m.layers]
    m2.fit(x, y, epochs=1, batch_size=8, verbose=0)  # comes back compiled and trainable
    path2 = keras_book_model().save(tmp_path / "uncompiled")  # no extension appended
    assert path2.endswith("uncompiled") and load_model(path2).loss is None


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    x, y = mnist_like(4)
    good = toy_cnn().save(tmp_path / "good.npz")
    data = open(good, "rb").read()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"trunc\.npz is not a readable fastconv model file"):
        load_model(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"junk\.npz is not a readable fastconv model file"):
        load_model(tmp_path / "junk.npz")
    np.savez(tmp_path / "foreign.npz", weights=np.ones(3))
    with pytest.raises(ValueError, match=r"foreign\.npz is not a fastconv model file \(no architecture entry"):
        load_model(tmp_path / "foreign.npz")
    # an object array would need pickle: refused, nothing is executed
    np.savez(tmp_path / "pickled.npz", __fastconv_model__=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"pickled\.npz is not a readable fastconv model file.*allow_pickle"):
        load_model(tmp_path / "pickled.npz")
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    cfg = json.loads(str(arrays["__fastconv_model__"]))
    cfg["layers"][0]["class"] = "Conv3D"
    np.savez(tmp_path / "unknown.npz", **{**arrays, "__fastconv_model__": np.array(json.dumps(cfg))})
    with pytest.raises(ValueError, match=r"unknown layer class 'Conv3D'"):
        load_model(tmp_path / "unknown.npz")
    del arrays["0/conv2d/kernel"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(ValueError, match=r"weight '0/conv2d/kernel' is missing"):
        load_model(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"no such model file"):
        load_model(tmp_path / "absent.npz")


# --------------------------------------------------------------------------- bad input


def test_bad_data_errors():
    x, y = mnist_like(8)
    m = toy_cnn()
    with pytest.raises(ValueError, match=r"x must have shape \(N, 8, 8, 1\) or \(N, 8, 8\) \(channels-last"):
        m.fit(x[:, :7], y, verbose=0)
    with pytest.raises(ValueError, match=r"looks like NCHW.*transpose\(0, 2, 3, 1\)"):
        m.predict(x[:, None])
    with pytest.raises(ValueError, match=r"y labels must lie in \[0, 4\) \(the model has 4 outputs\), got values in \[0, 7\]"):
        m.fit(x, np.where(y == y[0], 7, y), verbose=0)
    with pytest.raises(ValueError, match=r"y labels must lie in \[0, 4\).*\[-1, "):
        m.evaluate(x, np.full(8, -1))
    with pytest.raises(ValueError, match=r"y must hold integer class labels"):
        m.fit(x, y + 0.5, verbose=0)
    with pytest.raises(ValueError, match=r"x and y must have the same number of samples, got 8 and 7"):
        m.fit(x, y[:7], verbose=0)
    with pytest.raises(ValueError, match=r"y must be integer class labels of shape \(N,\).*categorical_crossentropy"):
        m.fit(x, to_categorical(y, 4), verbose=0)
    m.compile("sgd", "categorical_crossentropy")
    with pytest.raises(ValueError, match=r"one-hot targets of shape \(N, 4\).*to_categorical"):
        m.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match=r"validation_split must be in \[0, 1\)"):
        m.fit(x, to_categorical(y, 4), validation_split=1.5, verbose=0)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        m.fit(x, to_categorical(y, 4), batch_size=0, verbose=0)
    with pytest.raises(ValueError, match=r"verbose must be 0, 1 or 2"):
        m.fit(x, to_categorical(y, 4), verbose=3)
    with pytest.raises(TypeError, match=r"x must be a real numeric array"):
        m.predict(np.array([["a"] * 8] * 8).reshape(1, 8, 8))


def test_bad_names_and_configuration():
    with pytest.raises(ValueError, match=r"unknown loss 'mse'; expected one of"):
        toy_cnn().compile("adam", "mse")
    with pytest.raises(ValueError, match=r"unknown optimizer 'adagrad'"):
        toy_cnn().compile("adagrad", "categorical_crossentropy")
    with pytest.raises(ValueError, match=r"compile needs a loss"):
        toy_cnn().compile("adam")
    with pytest.raises(ValueError, match=r"metrics must be None or a list containing only 'accuracy'"):
        toy_cnn().compile("adam", "categorical_crossentropy", metrics=["mae"])
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'"):
        Dense(3, activation="gelu")
    with pytest.raises(ValueError, match=r"unknown kernel_initializer 'orthogonal'"):
        Conv2D(3, 3, kernel_initializer="orthogonal")
    with pytest.raises(TypeError, match=r"Sequential.add expects a fastconv.nn layer.*got str"):
        Sequential(["conv2d"])
    with pytest.raises(ValueError, match=r'Conv2D padding must be "valid" or "same", got \'full\''):
        Conv2D(3, 3, padding="full")
    with pytest.raises(ValueError, match=r"Conv2D filters must be a positive int, got 0"):
        Conv2D(0, 3)
    with pytest.raises(ValueError, match=r"Dropout rate must be in \[0, 1\), got 1.0"):
        Dropout(1.0)
    with pytest.raises(ValueError, match=r"learning_rate must be a finite number >= 0"):
        Adam(learning_rate=-1)
    with pytest.raises(ValueError, match=r'device must be "cpu" or "cuda", got \'tpu\''):
        Sequential(device="tpu")
    with pytest.raises(ValueError, match=r"layer names must be unique"):
        Sequential([Dense(2, name="a", input_shape=(3,)), Dense(2, name="a")])
    with pytest.raises(ValueError, match=r"input_shape is only allowed on the first layer"):
        Sequential([Dense(2, input_shape=(3,)), Dense(2, input_shape=(2,))])


def test_build_errors():
    with pytest.raises(RuntimeError, match=r"predict: the model is not built yet.*input_shape"):
        Sequential([Dense(3)]).predict(np.ones((2, 4)))
    with pytest.raises(RuntimeError, match=r"summary: the model is not built yet"):
        Sequential([Conv2D(2, 3)]).summary()
    with pytest.raises(RuntimeError, match=r"fit: call model.compile\(optimizer, loss\) first"):
        toy_cnn().__class__([Dense(2, input_shape=(3,))]).fit(np.ones((2, 3)), [0, 1])
    with pytest.raises(ValueError, match=r"Dense 'dense' needs a flat input.*\(26, 26, 4\): add a Flatten\(\) layer"):
        Sequential([Conv2D(4, 3, input_shape=(28, 28, 1)), Dense(10)]).build()
    with pytest.raises(ValueError, match=r"Conv2D 'conv2d' on input \(4, 4, 1\): Kernel size can't be greater"):
        Sequential([Conv2D(4, 5, input_shape=(4, 4))]).build()
    m = Sequential([Conv2D(4, 3, input_shape=(8, 8, 1))])
    m.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"needs a model output of shape \(None, classes\).*\(None, 6, 6, 4\)"):
        m.fit(np.ones((2, 8, 8)), [0, 1], verbose=0)


def test_cuda_device_without_gpu_is_a_clear_error():
    """to("cuda") without a usable GPU: one RuntimeError carrying fastconv.cuda's reason."""
    import fastconv.cuda as fc_cuda

    if fc_cuda.is_available():
        pytest.skip("a CUDA device (or the simulator) is available: covered by the CUDA tests")
    reason = (getattr(fc_cuda, "unavailable_reason", None) or fc_cuda._unavailable_reason)()
    assert reason
    with pytest.raises(RuntimeError, match=r"device='cuda' but no GPU can be used here: ") as info:
        toy_cnn().to("cuda")
    assert reason in str(info.value)
    with pytest.raises(RuntimeError, match=r"device='cuda' but no GPU can be used here: "):
        Sequential([Dense(2, input_shape=(3,))], device="cuda")


def test_to_categorical():
    np.testing.assert_array_equal(to_categorical([2, 0]), [[0, 0, 1], [1, 0, 0]])
    assert to_categorical(np.array([[1], [0]]), 3).shape == (2, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\), got values in \[0, 5\]"):
        to_categorical([0, 5], 2)


# --------------------------------------------------------------------------- first layer: no input gradient


def test_first_conv_layer_skips_input_gradient(monkeypatch):
    """A built model's first Conv2D asks conv2d_backward for no grad_x (and returns None);
    the other layers still get theirs, and training is bit-identical to computing it."""
    import fastconv

    x, y = mnist_like(16)
    flags = spy_calls(monkeypatch, fastconv.Conv2dOp, "backward",
                      record=lambda self, grad_output, *, need_input_grad=None: need_input_grad)

    def two_conv_net(first_needs_grad):
        m = Sequential([Conv2D(3, 3, padding="same", activation="relu", input_shape=(8, 8, 1)),
                        Conv2D(4, 3, strides=2, activation="relu"), Flatten(), Dense(4, activation="softmax")],
                       seed=3)
        m.compile(SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy")
        m.build()
        assert [layer.need_input_grad for layer in m.layers] == [False, True, True, True]
        m.layers[0].need_input_grad = first_needs_grad
        return m

    skip, full = two_conv_net(False), two_conv_net(True)
    flags.clear()
    losses_skip = [skip.train_on_batch(x, y)[0] for _ in range(3)]
    assert flags == [True, False] * 3  # backward order: second conv, then the first
    flags.clear()
    losses_full = [full.train_on_batch(x, y)[0] for _ in range(3)]
    assert flags == [True, True] * 3
    assert losses_skip == losses_full
    for a, b in zip(skip.get_weights(), full.get_weights()):
        assert np.array_equal(a, b)

    first = skip.layers[0]
    first.forward(skip._batch(x[:2]), training=True)
    assert first.backward(np.ones((2, 3, 8, 8), np.float32)) is None
    assert set(first.grads) == {"kernel", "bias"} and all(np.isfinite(g).all() for g in first.grads.values())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_moved_after_pooling_is_exact(dtype):
    """Sequential runs a Conv2D's ReLU after the MaxPooling2D that follows it
    (same values and gradients, less elementwise work): predictions, losses and
    weights after training steps equal those of the plain layer-by-layer order,
    including inputs with all-negative windows, and the layers' own
    forward/backward keep their documented behaviour."""

    def net():
        m = Sequential([Conv2D(4, 3, activation="relu", input_shape=(10, 10, 1)), MaxPooling2D(2),
                        Conv2D(6, 2, activation="relu"), MaxPooling2D(2, padding="same"),
                        Flatten(), Dense(5, activation="softmax")], seed=7, dtype=dtype)
        m.compile(SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
        m.build()
        return m

    rng = np.random.default_rng(11)
    x = rng.standard_normal((12, 10, 10, 1)) - 0.5  # many all-negative windows
    y = rng.integers(0, 5, 12)
    moved, plain = net(), net()
    assert [type(s) for s in moved._pipeline(with_loss=True).steps] == [ConvReLUPool, ConvReLUPool, LayerStep,
                                                                        SoftmaxCrossEntropy]
    moved._fused_kernels = False  # the first conv + pooling as one kernel: tests/nn/test_conv_pool_step.py
    plain._fuse_conv_pool = False
    assert all(type(s) is LayerStep for s in plain._pipeline(with_loss=False).steps)
    assert np.array_equal(moved.predict(x), plain.predict(x))
    for _ in range(3):
        assert moved.train_on_batch(x, y) == plain.train_on_batch(x, y)
    for a, b in zip(moved.get_weights(), plain.get_weights()):
        assert np.array_equal(a, b)
    # a layer used on its own still applies its activation itself
    z = moved.layers[0].forward(moved._batch(x[:2]), training=True)
    assert (z >= 0).all() and (z == 0).any()


def test_layers_keep_the_plain_contract():
    """Fusions live in nn/steps.py: every layer is just forward(x, training) / backward(grad)."""
    import inspect

    from fastconv.nn.layers import LAYER_CLASSES

    for cls in LAYER_CLASSES.values():
        assert list(inspect.signature(cls.forward).parameters) == ["self", "x", "training"], cls
        assert list(inspect.signature(cls.backward).parameters) == ["self", "grad"], cls
