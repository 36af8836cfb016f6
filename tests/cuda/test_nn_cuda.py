"""fastconv.nn on the GPU: every CUDA helper op against its NumPy twin, and a
whole training run on the device against the same run on the host.

Runs under numba-cuda's simulator (tiny shapes) or on a real GPU; skipped with
the reason otherwise (tests/cuda/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.cuda.cudahelpers import dev, host

from fastconv import nn
from fastconv.nn import _ops_cpu as C


@pytest.fixture(scope="module")
def G():
    from fastconv.nn import _ops_cuda

    return _ops_cuda


@pytest.mark.parametrize("kind", ["relu", "sigmoid", "tanh", "softmax"])
def test_activations(G, rng, kind):
    z = rng.standard_normal((3, 4, 2, 2))
    z[0, 0, 0, 0] = np.nan if kind == "relu" else 0.0
    g = rng.standard_normal(z.shape)
    y = C.activation_forward(kind, z.copy())
    yd = G.activation_forward(kind, dev(z))
    np.testing.assert_allclose(host(yd), y, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(host(G.activation_backward(kind, dev(g), yd)),
                               C.activation_backward(kind, g.copy(), y), rtol=1e-12, equal_nan=True)


def test_dense_flatten_pad(G, rng):
    x, w, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3)), rng.standard_normal(3)
    g = rng.standard_normal((5, 3))
    np.testing.assert_allclose(host(G.dense_forward(dev(x), dev(w), dev(b))), C.dense_forward(x, w, b), rtol=1e-12)
    for got, want in zip(G.dense_backward(dev(g), dev(x), dev(w), True, True), C.dense_backward(g, x, w, True, True)):
        np.testing.assert_allclose(host(got), want, rtol=1e-12)
    x4 = rng.standard_normal((2, 3, 2, 4))
    f = G.flatten_forward(dev(x4))
    np.testing.assert_array_equal(host(f), C.flatten_forward(x4))
    np.testing.assert_array_equal(host(G.flatten_backward(f, x4.shape)), x4)
    p = G.pad_value(dev(x4), 0, 1, 1, 0, -np.inf)
    np.testing.assert_array_equal(host(p), C.pad_value(x4, 0, 1, 1, 0, -np.inf))
    np.testing.assert_array_equal(host(G.crop(p, 0, 1, 2, 4)), x4)


@pytest.mark.parametrize("opt", [lambda: nn.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
                                 lambda: nn.SGD(0.1, momentum=0.5), lambda: nn.SGD(0.1),
                                 lambda: nn.RMSprop(), lambda: nn.Adam(), lambda: nn.Adadelta()],
                         ids=["sgd-nesterov", "sgd-momentum", "sgd", "rmsprop", "adam", "adadelta"])
def test_optimizer_kernels(G, rng, opt):
    p = rng.standard_normal((2, 3))
    grads = [rng.standard_normal((2, 3)) for _ in range(3)]
    cpu_opt, gpu_opt, pd = opt(), opt(), dev(p)
    for g in grads:
        cpu_opt.apply([p], [g.copy()], [True], C)
        gpu_opt.apply([pd], [dev(g)], [True], G)
    np.testing.assert_allclose(host(pd), p, rtol=1e-12)


def _net(device):
    m = nn.Sequential([
        nn.Conv2D(2, 3, padding="same", activation="relu", input_shape=(6, 6, 1)),
        nn.MaxPool2D(2, padding="same"),
        nn.Conv2D(3, 2, activation="tanh"),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Dense(3, activation="softmax"),
    ], device=device, dtype="float64", seed=4)
    m.compile(nn.Adam(0.01), "sparse_categorical_crossentropy")
    return m


def test_training_on_device_matches_host(rng, tmp_path):
    x = rng.uniform(0, 1, (6, 6, 6))
    y = rng.integers(0, 3, 6)
    cpu, gpu = _net("cpu"), _net("cuda")
    assert gpu.device == "cuda"
    h_cpu = cpu.fit(x, y, epochs=1, batch_size=3, verbose=0, seed=1)
    h_gpu = gpu.fit(x, y, epochs=1, batch_size=3, verbose=0, seed=1)
    np.testing.assert_allclose(h_gpu.history["loss"], h_cpu.history["loss"], rtol=1e-10)
    for a, b in zip(gpu.get_weights(), cpu.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), rtol=1e-10)
    back = nn.load_model(gpu.save(tmp_path / "m.npz"), device="cuda")
    np.testing.assert_array_equal(back.predict(x), gpu.predict(x))
    np.testing.assert_allclose(gpu.to("cpu").predict(x), cpu.predict(x), rtol=1e-10)


def test_resume_on_device(rng, tmp_path):
    """Optimizer state and generators survive save/load on the device: 1 + 1 epochs == 2."""
    x = rng.uniform(0, 1, (6, 6, 6))
    y = rng.integers(0, 3, 6)
    straight, first = _net("cuda"), _net("cuda")
    straight.fit(x, y, epochs=2, batch_size=3, verbose=0, seed=1)
    first.fit(x, y, epochs=1, batch_size=3, verbose=0, seed=1)
    resumed = nn.load_model(first.save(tmp_path / "ckpt.npz"), device="cuda")
    assert resumed.device == "cuda" and resumed.optimizer.iterations == 2
    resumed.fit(x, y, epochs=2, initial_epoch=1, batch_size=3, verbose=0)
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)
