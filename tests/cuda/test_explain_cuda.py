"""Sequential.activations and explain on the GPU: the same records as on the host,
as host arrays.  Tiny shapes, so it also runs in numba-cuda's simulator; skipped,
with the reason, when neither a GPU nor the simulator is present (conftest)."""

from __future__ import annotations

import numpy as np

from fastconv import nn


def _net(device):
    return nn.Sequential([
        nn.Conv2D(2, 3, padding="same", activation="relu", input_shape=(6, 6, 1)),
        nn.MaxPool2D(2),
        nn.Conv2D(3, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dense(3, activation="softmax"),
    ], device=device, dtype="float64", seed=4)


def test_activations_on_device_match_host(tmp_path):
    cpu, gpu = _net("cpu"), _net("cuda")
    x = np.random.default_rng(0).uniform(-1, 1, (3, 6, 6))
    on_host, on_device = cpu.activations(x), gpu.activations(x, batch_size=2)
    assert [r[:3] for r in on_device] == [r[:3] for r in on_host]
    for d, h in zip(on_device, on_host):
        assert type(d.output) is np.ndarray, type(d.output)
        np.testing.assert_allclose(d.output, h.output, rtol=1e-10, atol=1e-12, err_msg=d.name)
    page = nn.explain(gpu, x[0], tmp_path / "gpu.html", label=1)
    with open(page, encoding="utf-8") as f:
        assert f.read().count('<section class="card layer"') == 6
