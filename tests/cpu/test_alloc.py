"""fastconv._alloc: outputs and 64-byte aligned work buffers, poisoned in tests."""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import _alloc


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, 4099])
def test_workspace_is_aligned_poisoned_and_sized(size, dtype):
    bufs = [_alloc.workspace(size, dtype) for _ in range(8)]  # several, so a lucky start can't pass
    for a in bufs:
        assert a.shape == (size,) and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert size == 0 or a.ctypes.data % 64 == 0  # (an empty view has no meaningful address)
        if size and np.dtype(dtype).kind == "f":
            assert np.isnan(a).all()  # the conftest turns poisoning on
        elif size:
            assert (a == np.iinfo(dtype).min).all()
        a[:] = 1  # the whole range is writable memory of its own
    if size:
        assert all(not np.shares_memory(a, b) for i, a in enumerate(bufs) for b in bufs[i + 1:])


def test_empty_poisons_outputs():
    assert np.isnan(_alloc.empty((3, 4), np.float32)).all()
    assert (_alloc.empty((5,), np.int64) == np.iinfo(np.int64).min).all()


def test_scratch_is_reused_grown_poisoned_and_per_thread():
    import threading

    a = _alloc.scratch("test.a", 100, np.float32)
    assert a.shape == (100,) and a.ctypes.data % 64 == 0 and np.isnan(a).all()
    a[:] = 1
    b = _alloc.scratch("test.a", 50, np.float32)
    assert np.shares_memory(a, b) and np.isnan(b).all()  # the same buffer, poisoned again
    c = _alloc.scratch("test.b", 50, np.float32)
    d = _alloc.scratch("test.a", 50, np.float64)
    assert not np.shares_memory(b, c) and not np.shares_memory(b, d)  # per name and dtype
    e = _alloc.scratch("test.a", 1000, np.float32)  # grown: a new buffer
    assert e.shape == (1000,) and not np.shares_memory(a, e)
    other = []
    t = threading.Thread(target=lambda: other.append(_alloc.scratch("test.a", 1000, np.float32)))
    t.start()
    t.join()
    assert not np.shares_memory(e, other[0])  # each thread its own
