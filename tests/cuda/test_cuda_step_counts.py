"""Host round trips of a CUDA training step: launches and allocations per MNIST step
(counted by spying on numba, ``benchmarks/cuda_step_counts.py``), the caching
allocator, the device-side loss and the fused nn steps against the CPU.

Simulator only for the counts (they spy on the simulator's classes); skipped with the
reason otherwise (tests/cuda/conftest.py).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from tests.cuda.cudahelpers import SIM, dev, host

import fastconv
from fastconv import nn
from fastconv.nn import losses
from fastconv.nn.callbacks import Callback

sim_only = pytest.mark.skipif(not SIM, reason="the counts spy on numba-cuda's simulator")

# The Keras-book convnet, batch 64, on the reference GPU's launch plan (issue 16: 51 launches
# and 35 allocations per step before; 49 / 33 after the first round).
MAX_LAUNCHES = 25
MAX_ALLOCATIONS = 0  # steady state: every buffer comes from the cache


@pytest.fixture
def no_poison(monkeypatch):
    """Counts are those of a user's run: no NaN fill of new outputs (an extra launch each)."""
    monkeypatch.setattr(fastconv._alloc, "POISON", False)


@sim_only
def test_launches_and_allocations_per_mnist_step(no_poison):
    from benchmarks import cuda_step_counts as C

    first = C.count_train_on_batch(warm=0)
    steady = C.count_train_on_batch(warm=2)
    assert steady.launches <= MAX_LAUNCHES, steady
    assert steady.allocations <= MAX_ALLOCATIONS, steady
    assert first.allocations > steady.allocations  # the cache fills on the first steps
    assert steady.to_device == 2 and steady.to_host == 1  # batch + targets in; train_on_batch's loss out
    per_step = C.count_fit(batches=3)
    assert per_step.to_host <= 1 / 3 + 1e-12  # fit: one device-to-host copy per epoch
    assert per_step.launches <= MAX_LAUNCHES + 1  # + the epoch's loss array, spread over 3 steps


@sim_only
def test_dry_count_equals_real_run(no_poison):
    """The dry count (kernels configured, not run) sees what a real run launches and copies
    (allocations are left out: the simulator's kernel runs keep arrays alive a little
    longer, so its cache fills a step later)."""
    from benchmarks import cuda_step_counts as C

    counts = []
    for dry in (False, True):
        model = _small_net("cuda", np.float32)
        x, y = _data(np.random.default_rng(0), 4)
        with C.spy(dry):
            model.train_on_batch(x, y)
        with C.spy(dry) as c:
            model.train_on_batch(x, y)
        counts.append((c.launches, c.to_device, c.to_host, dict(c.kernels)))
    assert counts[0] == counts[1]


# --------------------------------------------------------------------------- caching allocator


def _address(a) -> int:
    if SIM:
        return a._ary.__array_interface__["data"][0]
    return int(a.device_ctypes_pointer.value)


def test_cache_reuses_a_released_block():
    from fastconv.cuda import _arrays, _device_cache

    gc.collect()
    _device_cache.empty_cache()  # no other free block of this size
    a = _arrays.device_array((7, 5), np.float32)
    where = _address(a)
    del a
    gc.collect()
    b = _arrays.device_array((35,), np.float32)  # same bytes, another shape
    assert _address(b) == where


def test_cache_never_hands_out_a_live_buffer():
    from fastconv.cuda import _arrays

    a = _arrays.device_array((6, 4), np.float64)
    view = a.reshape(24)[3:]  # a view keeps the block in use
    where = _address(a)
    del a
    gc.collect()
    live = [_arrays.device_array((6, 4), np.float64) for _ in range(3)]
    assert where not in {_address(b) for b in live}
    view[:] = 1.0  # still usable, and nobody else writes it
    for b in live:
        b[:] = 2.0
    assert (host(view) == 1.0).all()
    released = {where} | {_address(b) for b in live}
    del view, live, b
    gc.collect()
    assert _address(_arrays.device_array((24,), np.float64)) in released


def test_cache_is_per_stream_and_size():
    from fastconv.cuda import _arrays, _device_cache, _streams

    a = _arrays.device_array((16,), np.float32)
    where = _address(a)
    del a
    gc.collect()
    other = _streams.external_stream(0x1234, 0)
    token = _streams._call.set((0, other))
    try:
        on_other = _arrays.device_array((16,), np.float32)
    finally:
        _streams._call.reset(token)
    assert _address(on_other) != where and on_other.stream is other
    bigger = _arrays.device_array((4096,), np.float32)
    assert _address(bigger) != where
    info = _device_cache.cache_info()
    assert info["hits"] >= 0 and info["misses"] >= 1
    _device_cache.empty_cache()
    assert _device_cache.cache_info()["free_blocks"] == 0


# --------------------------------------------------------------------------- device loss


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_cross_entropy_matches_host(rng, dtype):
    from fastconv.nn import _ops_cuda as G

    z = rng.standard_normal((9, 5)).astype(dtype) * 3
    labels = rng.integers(0, 5, 9)
    loss = losses.SparseCategoricalCrossentropy(from_logits=True)
    want_loss, want_grad = loss(z, labels)
    sink = G.zeros((3, 2), np.float64)
    g = G.xent_logits(dev(z), loss.targets(labels, 5, dtype), sink, 1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(host(g), want_grad, rtol=tol, atol=tol * 1e-2)
    got = host(sink)
    assert got[0].tolist() == [0.0, 0.0] and got[2].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(got[1, 0] / 9, want_loss, rtol=tol)
    assert got[1, 1] == np.count_nonzero(np.argmax(z, axis=1) == labels)


class _Recorder(Callback):
    def __init__(self):
        super().__init__()
        self.losses = []

    def on_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])


@pytest.mark.parametrize("with_callback", [False, True])
def test_fit_on_device_reports_the_host_losses(rng, with_callback):
    """The device loss read once per epoch (or every step for a callback) gives the CPU's numbers."""
    x, y = _data(rng, 5)
    runs = []
    for device in ("cpu", "cuda"):
        model = _small_net(device, np.float64)
        rec = _Recorder()
        h = model.fit(x, y, epochs=1, batch_size=3, verbose=0, seed=3, callbacks=[rec] if with_callback else None)
        runs.append((h, rec))
    (hc, rc), (hg, rg) = runs
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(hg.history[key], hc.history[key], rtol=1e-10)
    np.testing.assert_allclose(hg.batch_loss, hc.batch_loss, rtol=1e-10)
    np.testing.assert_allclose(hg.batch_accuracy, hc.batch_accuracy, rtol=1e-12)
    np.testing.assert_allclose(rg.losses, rc.losses, rtol=1e-10)
    assert len(rg.losses) == (2 if with_callback else 0)


# --------------------------------------------------------------------------- fused steps vs the CPU


def _small_net(device, dtype, dropout=False):
    """The Keras convnet's structure in miniature: ConvReLUPool, ReLUFlattenDense (with a
    Dropout after the Flatten: ReLUFlatten, Dropout, Dense), Dense relu, softmax + loss."""
    m = nn.Sequential([
        nn.Conv2D(3, 3, activation="relu", input_shape=(6, 6, 1)),
        nn.MaxPool2D(2),
        nn.Conv2D(4, 2, activation="relu"),
        nn.Flatten(),
        *([nn.Dropout(0.3)] if dropout else []),
        nn.Dense(5, activation="relu"),
        nn.Dense(3, activation="softmax"),
    ], device=device, dtype=dtype, seed=11)
    m.compile(nn.RMSprop(0.01), "sparse_categorical_crossentropy")
    return m


def _data(rng, n):
    return rng.uniform(-1, 1, (n, 6, 6, 1)), rng.integers(0, 3, n)


@pytest.mark.parametrize("dropout", [False, True])
def test_fused_steps_train_as_on_the_cpu(rng, dropout):
    """ConvReLUPool, ReLUFlattenDense / ReLUFlatten + device dropout (the CPU's masks) on CUDA
    give the CPU's losses, weights and predictions."""
    from fastconv.nn.steps import ConvReLUPool, ReLUFlatten, ReLUFlattenDense

    x, y = _data(rng, 4)
    x[0, 0, 0, 0] = -5.0
    cpu, gpu = _small_net("cpu", np.float64, dropout), _small_net("cuda", np.float64, dropout)
    steps = gpu._pipeline(with_loss=True).steps
    assert isinstance(steps[0], ConvReLUPool)
    assert isinstance(steps[1], ReLUFlatten if dropout else ReLUFlattenDense)
    hc = cpu.fit(x, y, epochs=1, batch_size=2, verbose=0, seed=5)
    hg = gpu.fit(x, y, epochs=1, batch_size=2, verbose=0, seed=5)
    np.testing.assert_allclose(hg.batch_loss, hc.batch_loss, rtol=1e-10)
    for a, b in zip(gpu.get_weights(), cpu.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_dropout_mask(dtype):
    """Drawn on the device: the CPU's mask for the same generator state, deterministic per
    seed, values 0 and 1/(1-rate), and a drop rate within 5 standard deviations of `rate`."""
    from fastconv.nn import _ops_cpu as Cpu
    from fastconv.nn import _ops_cuda as G

    rate, shape = 0.3, (16, 8, 8)
    m1 = host(G.dropout_mask(np.random.default_rng(2), shape, rate, dtype))
    m2 = host(G.dropout_mask(np.random.default_rng(2), shape, rate, dtype))
    other = host(G.dropout_mask(np.random.default_rng(3), shape, rate, dtype))
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(m1, Cpu.dropout_mask(np.random.default_rng(2), shape, rate, dtype))
    assert not np.array_equal(m1, other)
    assert m1.dtype == dtype and set(np.unique(m1).tolist()) == {0.0, float(dtype(1 / (1 - rate)))}
    n = m1.size
    assert abs(np.mean(m1 == 0) - rate) < 5 * np.sqrt(rate * (1 - rate) / n)
