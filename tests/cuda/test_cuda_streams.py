"""The device/stream rule of the CUDA backend (``fastconv.cuda._streams``, docs/cuda.md):
every launch goes to the stream of the inputs and the device holding them.

Under the simulator the inputs are fake objects exposing ``__cuda_array_interface__``
(host memory is the simulator's device memory), and a spy on the simulator's kernel
launch records the stream each launch names.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv.cuda import _streams

from tests.cuda.cudahelpers import SIM, FakeArray, FakeTorchTensor, dev, host, stream_handle
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not SIM, reason="fake interface objects need the simulator's host memory")


def _conv_inputs(rng):
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    return x, w, b


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
def test_interface_stream_is_the_launch_stream(rng, launches, algorithm):
    x, w, b = _conv_inputs(rng)
    y = fastconv.conv2d(FakeArray(x, 0xABC), dev(w), dev(b), padding=1, algorithm=algorithm)
    assert launches and all(stream_handle(s) == 0xABC for s in launches), launches
    assert stream_handle(y.stream) == 0xABC  # outputs carry the stream: the next call stays on it
    assert_close(host(y), reference.conv2d(x, w, b, padding=1), np.float64, "y")
    launches.clear()
    gx, gw, gb = fastconv.conv2d_backward(FakeArray(np.ones((1, 3, 5, 5)), 0xDEF), dev(x), dev(w), padding=1,
                                          algorithm=algorithm)
    assert launches and all(stream_handle(s) == 0xDEF for s in launches), launches
    rx, rw, rb = reference.conv2d_backward(np.ones((1, 3, 5, 5)), x, w, padding=1)
    assert_close(host(gx), rx, np.float64, "grad_x")
    assert_close(host(gw), rw, np.float64, "grad_weight")


def test_pool_launches_on_the_input_stream(rng, launches):
    x = rng.permutation(np.linspace(-1, 1, 2 * 16)).reshape(1, 2, 4, 4)
    y, idx = fastconv.max_pool2d(FakeArray(x, 0x51), 2, return_indices=True)
    gx = fastconv.max_pool2d_backward(FakeArray(np.ones((1, 2, 2, 2)), 0x52), idx, x.shape)
    handles = [stream_handle(s) for s in launches]
    assert 0x51 in handles and 0x52 in handles and 0 not in handles, handles
    assert np.array_equal(host(y), reference.max_pool2d(x, 2))
    assert host(gx).sum() == 8


def test_numba_array_stream_and_default_stream(rng, launches):
    from numba import cuda

    x, w, _ = _conv_inputs(rng)
    fastconv.conv2d(dev(x), dev(w))
    assert launches and all(s == 0 for s in launches), "plain numba arrays: numba's default stream"
    launches.clear()
    s = cuda.stream()
    fastconv.conv2d(dev(x).bind(s), dev(w))  # a numba array bound to stream s
    assert launches and all(l is s for l in launches)


def test_legacy_and_per_thread_default_streams(rng, launches):
    x, w, _ = _conv_inputs(rng)
    fastconv.conv2d(FakeArray(x, 1), dev(w))  # v3: 1 is the legacy default stream
    assert launches and all(s == 0 for s in launches)
    assert _streams.external_stream(2, 0) is not None and _streams.external_stream(2, 0) != 0


def test_torch_tensor_uses_torchs_current_stream(rng, launches, monkeypatch):
    x, w, _ = _conv_inputs(rng)
    asked = []

    def current(t):
        asked.append(t)
        return _streams.external_stream(0x70, t.device.index)

    monkeypatch.setattr(_streams, "torch_current_stream", current)
    tx = FakeTorchTensor(x)
    fastconv.conv2d(tx, FakeArray(w))
    assert asked == [tx], "torch's current stream is asked for the torch tensor only"
    assert launches and all(stream_handle(s) == 0x70 for s in launches)


def test_non_torch_objects_never_ask_torch(rng, launches, monkeypatch):
    def boom(t):
        raise AssertionError("torch asked for a non-torch array")

    monkeypatch.setattr(_streams, "torch_current_stream", boom)
    x, w, _ = _conv_inputs(rng)
    fastconv.conv2d(FakeArray(x, 0x99), FakeArray(w))


def test_second_stream_is_awaited_with_an_event(rng, launches, monkeypatch):
    from numba import cuda

    events = []

    class Event:
        def record(self, stream=0):
            events.append(("record", stream_handle(stream)))

        def wait(self, stream=0):
            events.append(("wait", stream_handle(stream)))

    monkeypatch.setattr(cuda, "event", lambda *a, **k: Event())
    x, w, _ = _conv_inputs(rng)
    fastconv.conv2d(FakeArray(x, 0xA1), FakeArray(w, 0xB2))
    assert launches and all(stream_handle(s) == 0xA1 for s in launches), "the first input's stream decides"
    assert events == [("record", 0xB2), ("wait", 0xA1)]


def test_inputs_on_two_devices_are_refused_before_any_launch(rng, launches, monkeypatch):
    x, w, _ = _conv_inputs(rng)
    fx, fw = FakeArray(x), FakeArray(w)
    on_one = {fw.__cuda_array_interface__["data"][0]}
    monkeypatch.setattr(_streams, "pointer_device", lambda ptr: 1 if ptr in on_one else 0)
    with pytest.raises(ValueError, match=r"same device, got x on cuda:0, weight on cuda:1"):
        fastconv.conv2d(fx, fw)
    assert launches == []


def test_launches_run_in_the_inputs_device_context(rng, launches, monkeypatch):
    from numba import cuda

    entered = []
    real = cuda.gpus

    class Gpus:
        def __getitem__(self, i):
            entered.append(i)
            return contextlib.nullcontext()

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(cuda, "gpus", Gpus())
    monkeypatch.setattr(_streams, "pointer_device", lambda ptr: 1)
    x, w, _ = _conv_inputs(rng)
    y = fastconv.conv2d(FakeArray(x), FakeArray(w), algorithm="im2col")
    assert entered and set(entered) == {1}
    assert_close(host(y), reference.conv2d(x, w), np.float64, "y")


def test_no_indices_buffer_is_per_device(monkeypatch):
    from fastconv.cuda import pool

    monkeypatch.setattr(pool, "_no_indices_cache", {})
    monkeypatch.setattr(_streams, "current_device", lambda: 0)
    a = pool._no_indices()
    assert pool._no_indices() is a
    monkeypatch.setattr(_streams, "current_device", lambda: 1)
    assert pool._no_indices() is not a
    assert set(pool._no_indices_cache) == {0, 1}
