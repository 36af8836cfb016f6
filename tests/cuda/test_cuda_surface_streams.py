"""The device/stream rule (``fastconv.cuda._streams``, docs/cuda.md) for the issue-15
surface ops: avg_pool2d, conv_transpose2d, max_unpool2d and conv2d's padding modes,
forward and backward.  Every launch of one op goes to the stream its arguments
choose (the first one naming a non-default stream: x in a forward, grad_output in
a backward), on the device holding them, even where the op is several backend
calls (casts, padding, the convolution, the bias, the index check).

As in ``test_cuda_streams.py``: fake objects exposing ``__cuda_array_interface__``
over host memory (the simulator's device memory) and a spy on the simulator's
kernel launch that records the stream each launch names.
"""

from __future__ import annotations


import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import conv_transpose2d_params
from fastconv.cuda import _streams

from tests.cuda.cudahelpers import SIM, FakeArray, FakeTorchTensor, dev, host, stream_handle
from tests.helpers import assert_close, tie_free

pytestmark = pytest.mark.skipif(not SIM, reason="fake interface objects need the simulator's host memory")


def _all_on(launches, handle):
    return bool(launches) and all(stream_handle(s) == handle for s in launches)


# --------------------------------------------------------------------------- avg_pool2d


AVG = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)


def test_avg_pool2d_runs_on_the_input_stream(rng, launches):
    x = rng.standard_normal((2, 3, 6, 5))
    y = fastconv.avg_pool2d(FakeArray(x, 0xA1), **AVG)
    assert _all_on(launches, 0xA1), launches
    assert stream_handle(y.stream) == 0xA1  # the next call stays on it
    ry = reference.avg_pool2d(x, **AVG)
    assert_close(host(y), ry, np.float64, "y")
    launches.clear()
    gy = rng.standard_normal(ry.shape)
    gx = fastconv.avg_pool2d_backward(FakeArray(gy, 0xA2), x.shape, **AVG)
    assert _all_on(launches, 0xA2), launches
    assert stream_handle(gx.stream) == 0xA2
    assert_close(host(gx), reference.avg_pool2d_backward(gy, x.shape, **AVG), np.float64, "grad_x")


def test_avg_pool2d_cast_runs_on_the_input_stream(rng, launches):
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float16)  # cast to float32 on the device first
    y = fastconv.avg_pool2d(FakeArray(x, 0xA3), 2)
    assert len(launches) >= 2 and _all_on(launches, 0xA3), launches
    assert y.dtype == np.float32


def test_avg_pool2d_torch_tensor_uses_torchs_current_stream(rng, launches, monkeypatch):
    asked = []

    def current(t):
        asked.append(t)
        return _streams.external_stream(0x70, t.device.index)

    monkeypatch.setattr(_streams, "torch_current_stream", current)
    tx = FakeTorchTensor(rng.standard_normal((1, 2, 4, 4)))
    fastconv.avg_pool2d(tx, 2)
    assert asked == [tx]
    assert _all_on(launches, 0x70), launches


def test_empty_batch_output_carries_the_input_stream(launches):
    y = fastconv.avg_pool2d(FakeArray(np.zeros((0, 2, 4, 4)), 0xA4), 2)
    assert y.shape == (0, 2, 2, 2) and stream_handle(y.stream) == 0xA4


# --------------------------------------------------------------------------- conv_transpose2d


TRANSPOSE = [
    ((1, 2, 4, 4), (2, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3, 3), (4, 2, 3, 3), dict(dilation=2, output_padding=1, groups=2)),  # x padded, grad_x cropped
]


@pytest.mark.parametrize("alg", ["direct", "im2col"])
@pytest.mark.parametrize("xs, ws, kw", TRANSPOSE)
def test_conv_transpose2d_runs_on_the_input_stream(rng, launches, events, xs, ws, kw, alg):
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[1] * kw.get("groups", 1))
    y = fastconv.conv_transpose2d(FakeArray(x, 0xC1), dev(w), dev(b), **kw, algorithm=alg)
    assert _all_on(launches, 0xC1), launches
    assert stream_handle(y.stream) == 0xC1 and events == []
    ry = reference.conv_transpose2d(x, w, b, **kw)
    assert_close(host(y), ry, np.float64, "y")
    launches.clear()
    gy = rng.standard_normal(ry.shape)
    # grad_output decides; x on another stream is awaited, once, with an event
    got = fastconv.conv_transpose2d_backward(FakeArray(gy, 0xD1), FakeArray(x, 0xD2), dev(w), **kw, algorithm=alg)
    assert _all_on(launches, 0xD1), launches
    assert events and set(events) == {("record", 0xD2), ("wait", 0xD1)}, events
    assert [stream_handle(g.stream) for g in got] == [0xD1] * 3
    for g, r, what in zip(got, reference.conv_transpose2d_backward(gy, x, w, **kw), ("gx", "gw", "gb")):
        assert_close(host(g), r, np.float64, what)


def test_transpose_case_pads_x():
    t = conv_transpose2d_params(TRANSPOSE[1][0], TRANSPOSE[1][1], None, 1, 0, 1, 2, 2)
    assert t.extra_h or t.extra_w  # the second case exercises pad_end and crop


def test_conv_transpose2d_casts_of_other_streams_run_on_the_call_stream(rng, launches, events):
    """A float32 weight on another stream is cast (to float64) on x's stream, after an event."""
    x, w = rng.standard_normal((1, 2, 3, 3)), rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    y = fastconv.conv_transpose2d(FakeArray(x, 0xC3), FakeArray(w, 0xC4), stride=2)
    assert _all_on(launches, 0xC3), launches
    assert ("record", 0xC4) in events and ("wait", 0xC3) in events
    assert_close(host(y), reference.conv_transpose2d(x, w, stride=2), np.float64, "y")


# --------------------------------------------------------------------------- max_unpool2d


def _pooled(rng):
    x = tie_free(rng, (1, 2, 4, 4))
    y, idx = reference.max_pool2d(x, 2, return_indices=True)
    return x, y, idx


def test_max_unpool2d_runs_on_the_input_stream(rng, launches, events):
    x, y, idx = _pooled(rng)
    out = fastconv.max_unpool2d(FakeArray(y, 0xE1), FakeArray(idx, 0xE1), 2)
    assert _all_on(launches, 0xE1), launches  # the index check, the zero fill, the scatter
    assert stream_handle(out.stream) == 0xE1 and events == []
    assert_close(host(out), reference.max_unpool2d(y, idx, 2), np.float64, "y")
    launches.clear()
    gy = rng.standard_normal(x.shape)
    gx = fastconv.max_unpool2d_backward(FakeArray(gy, 0xE2), dev(idx), 2)  # indices on numba's default stream
    assert _all_on(launches, 0xE2), launches
    assert stream_handle(gx.stream) == 0xE2 and events == []
    assert_close(host(gx), reference.max_unpool2d_backward(gy, idx, 2), np.float64, "grad_x")


def test_max_unpool2d_indices_on_another_stream_are_awaited(rng, launches, events):
    _, y, idx = _pooled(rng)
    fastconv.max_unpool2d(FakeArray(y, 0xE3), FakeArray(idx, 0xE4), 2)
    assert _all_on(launches, 0xE3), launches  # the index check too: one op, one stream
    assert events and set(events) == {("record", 0xE4), ("wait", 0xE3)}, events


# --------------------------------------------------------------------------- padding modes


@pytest.mark.parametrize("mode", ["reflect", "circular"])
def test_padding_mode_runs_on_the_input_stream(rng, launches, mode):
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    y = fastconv.conv2d(FakeArray(x, 0xF1), dev(w), padding=1, padding_mode=mode)
    assert _all_on(launches, 0xF1), launches
    assert_close(host(y), reference.conv2d_padded(x, w, None, 1, 1, 1, 1, mode), np.float64, "y")
    launches.clear()
    gy = rng.standard_normal(host(y).shape)
    got = fastconv.conv2d_backward(FakeArray(gy, 0xF2), dev(x), dev(w), padding=1, padding_mode=mode)
    assert _all_on(launches, 0xF2), launches
    assert [stream_handle(g.stream) for g in got] == [0xF2] * 3


# --------------------------------------------------------------------------- devices


def _device_calls(rng):
    """One call of every surface op (forward and backward) on fake arrays."""
    x4 = rng.standard_normal((1, 2, 4, 4))
    w = rng.standard_normal((2, 3, 3, 3))
    _, y, idx = _pooled(rng)
    return {
        "avg_pool2d": lambda: fastconv.avg_pool2d(FakeArray(x4), 2),
        "avg_pool2d_backward": lambda: fastconv.avg_pool2d_backward(FakeArray(y), x4.shape, 2),
        "conv_transpose2d": lambda: fastconv.conv_transpose2d(FakeArray(x4), FakeArray(w), stride=2),
        "conv_transpose2d_backward": lambda: fastconv.conv_transpose2d_backward(
            FakeArray(np.ones((1, 3, 9, 9))), FakeArray(x4), FakeArray(w), stride=2),
        "max_unpool2d": lambda: fastconv.max_unpool2d(FakeArray(y), FakeArray(idx), 2),
        "max_unpool2d_backward": lambda: fastconv.max_unpool2d_backward(FakeArray(x4), FakeArray(idx), 2),
        "conv2d reflect": lambda: fastconv.conv2d(FakeArray(x4), FakeArray(w.transpose(1, 0, 2, 3)), padding=1,
                                                  padding_mode="reflect"),
    }


@pytest.mark.parametrize("op", list(_device_calls(np.random.default_rng(0))))
def test_launches_run_in_the_inputs_device_context(rng, launches, devices_entered, op):
    _device_calls(rng)[op]()
    assert launches and devices_entered and set(devices_entered) == {1}


@pytest.mark.parametrize("call, message", [
    (lambda x, w, y, idx: fastconv.conv_transpose2d(FakeArray(x), w, stride=2), "x on cuda:0, weight on cuda:1"),
    (lambda x, w, y, idx: fastconv.conv_transpose2d_backward(FakeArray(np.ones((1, 3, 9, 9))), FakeArray(x), w,
                                                             stride=2), "grad_output on cuda:0, x on cuda:0, weight on cuda:1"),
    (lambda x, w, y, idx: fastconv.max_unpool2d(FakeArray(y), idx, 2), "x on cuda:0, indices on cuda:1"),
    (lambda x, w, y, idx: fastconv.max_unpool2d_backward(FakeArray(x), idx, 2), "grad_output on cuda:0, indices on cuda:1"),
], ids=["conv_transpose2d", "conv_transpose2d_backward", "max_unpool2d", "max_unpool2d_backward"])
def test_inputs_on_two_devices_are_refused_before_any_launch(rng, launches, monkeypatch, call, message):
    x = rng.standard_normal((1, 2, 4, 4))
    _, y, idx = _pooled(rng)
    fw, fidx = FakeArray(rng.standard_normal((2, 3, 3, 3))), FakeArray(idx)
    on_one = {fw.__cuda_array_interface__["data"][0], fidx.__cuda_array_interface__["data"][0]}
    monkeypatch.setattr(_streams, "pointer_device", lambda ptr: 1 if ptr in on_one else 0)
    with pytest.raises(ValueError, match=f"same device, got {message}"):
        call(x, fw, y, fidx)
    assert launches == []


# --------------------------------------------------------------------------- the nested rule itself


def test_a_backend_call_inside_a_call_keeps_its_device_and_stream(events):
    outer_stream = _streams.external_stream(0x11, 0)
    a = _streams.tag(dev(np.zeros(2)), 0, outer_stream)
    b = _streams.tag(dev(np.zeros(2)), 0, _streams.external_stream(0x22, 0))
    with _streams.on_inputs(a=a) as s:
        assert s is outer_stream
        with _streams.on_inputs(b=b) as inner:
            assert inner is outer_stream and _streams.current_stream() is outer_stream
        assert _streams.current_stream() is outer_stream
    assert _streams.current_stream() == 0
    assert events == [("record", 0x22), ("wait", 0x11)]


def test_a_backend_call_inside_a_call_on_another_device_is_refused(monkeypatch):
    a, b = dev(np.zeros(2)), _streams.tag(dev(np.zeros(2)), 1, 0)
    with _streams.on_inputs(a=a):
        with pytest.raises(ValueError, match=r"same device, got b on cuda:1 in a call on cuda:0"):
            with _streams.on_inputs(b=b):
                pass
