"""Which device and which stream a CUDA call runs on.

The rule (documented in ``docs/cuda.md``):

* **Device**: the device that holds the inputs.  Every array argument of one
  call must live on the same device, else ``ValueError`` naming the arguments
  and their devices, before anything is allocated or launched.  Allocations
  and launches happen with that device's context current.
* **Stream**: the stream of the inputs, taken from each input in this order:
  a torch tensor -> torch's current stream on the tensor's device (torch is
  imported only when a torch tensor arrives; its ``__cuda_array_interface__``
  names no stream); a numba device array -> its ``.stream``; any other object
  -> the ``stream`` field of its ``__cuda_array_interface__`` (v3; ``1`` is the
  legacy default stream, ``2`` the per-thread default stream); none of these
  -> numba's default stream.  The first input that names a non-default stream
  decides; any other input on a different non-default stream is waited for
  with an event recorded on its stream (no host synchronisation).  Outputs
  carry the launch stream as their ``.stream``, so a chain of fastconv calls
  stays on it.

The chosen device and stream are held in a context variable for the duration
of one call (``on_inputs``); ``launch`` and the allocators read it, so kernel
signatures and launchers need no stream parameter.  A public op made of several
backend calls (conv_transpose2d's backward, max unpooling, conv2d with a
padding mode) opens the call once on the user's arguments; the backend calls
inside it keep that device and stream (their inputs must be on that device;
any other stream they name is awaited with an event), so one op runs on one
stream.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from numba import cuda

from ._config import SIM

# (device, stream) of the call in progress, None outside one
_call: contextvars.ContextVar[tuple[int, Any] | None] = contextvars.ContextVar("fastconv_cuda_call", default=None)
_external: dict[tuple[int, int], Any] = {}


class SimulatorStream:
    """Stand-in for ``cuda.external_stream`` under the simulator (which has none):
    executes nothing, remembers the handle so the tests can see which stream was chosen."""

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def synchronize(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"SimulatorStream({self.handle:#x})"


def current_stream() -> Any:
    """The stream of the backend call in progress (0, numba's default, outside one)."""
    call = _call.get()
    return 0 if call is None else call[1]


def external_stream(handle: int, device: int) -> Any:
    """A numba stream object for a raw ``cudaStream_t`` (cached per device and handle)."""
    if handle in (0, 1):  # torch's default stream / v3's legacy default stream
        return 0
    if handle == 2:
        return cuda.per_thread_default_stream()
    key = (device, handle)
    s = _external.get(key)
    if s is None:
        s = _external[key] = SimulatorStream(handle) if SIM else cuda.external_stream(handle)
    return s


def _is_torch(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "torch"


def torch_current_stream(tensor: Any) -> Any:
    """torch's current stream on the tensor's device (torch is already imported: the
    argument is a torch tensor)."""
    import torch

    return external_stream(int(torch.cuda.current_stream(tensor.device).cuda_stream), tensor.device.index)


def pointer_device(ptr: int) -> int:
    """Ordinal of the device that owns device pointer ``ptr`` (the simulator has one, 0)."""
    if SIM or ptr == 0:
        return 0
    from cuda.bindings import driver as drv

    attr = drv.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
    err, dev = drv.cuPointerGetAttribute(attr, ptr)
    if err != drv.CUresult.CUDA_SUCCESS:  # not a pointer the driver knows: assume the current device
        return current_device()
    return int(dev)


def source_device_and_stream(obj: Any) -> tuple[int, Any]:
    """(device ordinal, stream) of a user's CUDA array, by the rule in the module doc."""
    desc = obj.__cuda_array_interface__
    if _is_torch(obj):
        return int(obj.device.index), torch_current_stream(obj)
    device = pointer_device(int(desc["data"][0]))
    handle = desc.get("stream") if desc.get("version", 0) >= 3 else None
    return device, (0 if handle is None else external_stream(int(handle), device))


def tag(arr: Any, device: int, stream: Any) -> Any:
    """Record the source's device and stream on a wrapping numba array."""
    arr.stream = stream
    arr._fastconv_device = device
    return arr


def call_device() -> int:
    """The device of the call in progress (numba's current device outside one)."""
    call = _call.get()
    return current_device() if call is None else call[0]


def current_device() -> int:
    """Ordinal of numba's current device (the simulator has one, 0)."""
    return 0 if SIM else int(cuda.get_current_device().id)


def device_of(arr: Any) -> int:
    """Device ordinal of a numba device array (tagged by ``asarray`` or allocated by numba)."""
    dev = getattr(arr, "_fastconv_device", None)
    if dev is not None:
        return int(dev)
    if SIM:
        return 0
    ctx = getattr(getattr(arr, "gpu_data", None), "context", None)
    return int(ctx.device.id) if ctx is not None else current_device()


def stream_of(arr: Any) -> Any:
    s = getattr(arr, "stream", 0)
    return 0 if s is None else s


def common_device(arrays: dict[str, Any]) -> int:
    """The one device holding every array, else ``ValueError`` naming them."""
    devices = {name: device_of(a) for name, a in arrays.items() if a is not None}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{name} on cuda:{d}" for name, d in devices.items())
        raise ValueError(f"CUDA arrays of one call must be on the same device, got {where}")
    return next(iter(devices.values())) if devices else current_device()


def _named_streams(arrays: dict[str, Any]) -> list[Any]:
    return [s for s in (stream_of(a) for a in arrays.values() if a is not None) if s != 0]


def await_streams(streams: list[Any], chosen: Any) -> None:
    """Make ``chosen`` wait (an event, no host sync) for every other stream in ``streams``."""
    for other in {id(s): s for s in streams if s is not chosen}.values():
        ev = cuda.event() if SIM else cuda.event(timing=False)  # type: ignore[call-arg]  # (simulator stubs)
        ev.record(stream=other)
        ev.wait(stream=chosen)


def launch_stream(arrays: dict[str, Any]) -> Any:
    """The first non-default stream among the arrays (else 0); the launch stream waits
    (an event, no host sync) for every other non-default stream among them."""
    named = _named_streams(arrays)
    if not named:
        return 0
    await_streams(named, named[0])
    return named[0]


def _inner_call(arrays: dict[str, Any], device: int, stream: Any) -> None:
    """A backend call inside a call in progress: its inputs must be on the call's device;
    the call's stream waits for any other stream they name."""
    inner = common_device(arrays)
    if inner != device:
        names = ", ".join(name for name, a in arrays.items() if a is not None)
        raise ValueError(
            f"CUDA arrays of one call must be on the same device, got {names} on cuda:{inner} in a call on cuda:{device}"
        )
    await_streams(_named_streams(arrays), stream)


@contextlib.contextmanager
def on_inputs(**arrays: Any) -> Iterator[Any]:
    """Run a call on the device and stream of ``arrays`` (the rule above); inside a
    call in progress, on that call's device and stream."""
    outer = _call.get()
    if outer is None:
        device = common_device(arrays)
        stream = launch_stream(arrays)
    else:
        device, stream = outer
        _inner_call(arrays, device, stream)
    with cuda.gpus[device]:
        token = _call.set((device, stream))
        try:
            yield stream
        finally:
            _call.reset(token)


def launch(kernel: Any, grid: Any, block: Any, *args: Any) -> None:
    """``kernel[grid, block, stream](*args)`` on the current call's stream."""
    kernel[grid, block, current_stream()](*args)
