"""fastconv._threads: thread pools are restored after fastconv's calls (also after
exceptions), the public knob validates and nests, show_config reports, results
do not change.  No timing assertions: what the guards gain is measured by
benchmarks/default_env.py."""

from __future__ import annotations

import io
import sys
import types

import numba
import numpy as np
import pytest
import threadpoolctl

import fastconv
from fastconv import _threads
from fastconv import cpu as cpu_backend
from fastconv.nn import _ops_cpu
from fastconv.nn.layers import Conv2D, Dense, Flatten
from fastconv.nn.model import Sequential
from tests.helpers import spy_calls

MAX_THREADS = numba.config.NUMBA_NUM_THREADS


def blas_counts() -> dict[str, int]:
    """Thread count of every loaded BLAS library, by file: the spy of these tests."""
    return {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}


@pytest.fixture
def two_blas_threads():
    """BLAS pools at 2 threads for the test (the test command sets OPENBLAS_NUM_THREADS=1),
    so the guards have something to change; the counts before are back afterwards.
    SciPy's BLAS is loaded first: fastconv's kernels may load it (Numba's BLAS)."""
    import scipy.linalg  # noqa: F401

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        counts = blas_counts()
        assert counts and all(n == 2 for n in counts.values())
        yield counts


def conv_inputs(rng):
    return (rng.standard_normal((2, 3, 9, 9)).astype(np.float32),
            rng.standard_normal((4, 3, 3, 3)).astype(np.float32))


def tiny_model() -> Sequential:
    m = Sequential([Conv2D(2, 3, activation="relu", input_shape=(8, 8, 1)), Flatten(),
                    Dense(3, activation="softmax")], seed=0)
    m.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def tiny_data():
    r = np.random.default_rng(0)
    return r.random((16, 8, 8, 1), dtype=np.float32), r.integers(0, 3, 16)


# --------------------------------------------------------------------------- functional ops


def test_functional_ops_leave_blas_counts_unchanged(two_blas_threads, rng, monkeypatch):
    x, w = conv_inputs(rng)
    seen = spy_calls(monkeypatch, cpu_backend, "conv2d_forward", record=lambda *args: blas_counts())
    y = fastconv.conv2d(x, w)
    fastconv.conv2d_backward(np.ones_like(y), x, w)
    p, idx = fastconv.max_pool2d(x, 2, return_indices=True)
    fastconv.max_pool2d_backward(np.ones_like(p), idx, x.shape)
    assert seen == [two_blas_threads]
    assert blas_counts() == two_blas_threads


def test_functional_op_raising_inside_leaves_counts(two_blas_threads, rng, monkeypatch):
    x, w = conv_inputs(rng)

    def boom(*args):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(cpu_backend, "conv2d_forward", boom)
    with pytest.raises(RuntimeError, match="kernel failed"):
        fastconv.conv2d(x, w)
    assert blas_counts() == two_blas_threads


def test_functional_results_unchanged_by_guard(two_blas_threads, rng):
    x, w = conv_inputs(rng)
    a = rng.standard_normal((300, 300))
    before = a @ a
    guarded = fastconv.conv2d(x, w)
    unguarded = fastconv.conv2d.__wrapped__(x, w)  # the function under the guard
    np.testing.assert_array_equal(guarded, unguarded)
    np.testing.assert_array_equal(a @ a, before)  # OpenBLAS restarted its stopped workers


def test_public_functions_keep_name_and_doc():
    for fn in (fastconv.conv2d, fastconv.conv2d_backward, fastconv.max_pool2d, fastconv.max_pool2d_backward):
        assert fn.__doc__ and fn.__name__ in ("conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward")


def test_stop_idle_workers_keeps_counts_and_results(two_blas_threads):
    a = np.random.default_rng(1).standard_normal((400, 400))
    expected = a @ a
    for _ in range(3):
        _threads.stop_idle_blas_workers()
        assert blas_counts() == two_blas_threads
        np.testing.assert_array_equal(a @ a, expected)


# --------------------------------------------------------------------------- fastconv.nn


def spy_dense_blas(monkeypatch) -> list[dict[str, int]]:
    return spy_calls(monkeypatch, _ops_cpu, "dense_forward", record=lambda *args: blas_counts())


@pytest.mark.parametrize("method", ["fit", "evaluate", "predict", "train_on_batch"])
def test_nn_runs_blas_on_one_thread_and_restores(two_blas_threads, monkeypatch, method):
    m, (x, y) = tiny_model(), tiny_data()
    m.build()
    seen = spy_dense_blas(monkeypatch)
    call = {"fit": lambda: m.fit(x, y, epochs=1, batch_size=8, verbose=0, seed=0),
            "evaluate": lambda: m.evaluate(x, y, batch_size=8),
            "predict": lambda: m.predict(x, batch_size=8),
            "train_on_batch": lambda: m.train_on_batch(x, y)}[method]
    call()
    assert seen and all(c == {k: 1 for k in two_blas_threads} for c in seen)
    assert blas_counts() == two_blas_threads


def test_nn_exception_inside_fit_restores(two_blas_threads, monkeypatch):
    m, (x, y) = tiny_model(), tiny_data()

    def boom(*args):
        raise FloatingPointError("inside fit")

    monkeypatch.setattr(_ops_cpu, "dense_forward", boom)
    with pytest.raises(FloatingPointError, match="inside fit"):
        m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert blas_counts() == two_blas_threads


def test_nn_results_unchanged_by_guard(two_blas_threads):
    (x, y) = tiny_data()
    a, b = tiny_model(), tiny_model()
    a.fit(x, y, epochs=2, batch_size=4, verbose=0, seed=3)
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        b.fit(x, y, epochs=2, batch_size=4, verbose=0, seed=3)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


def test_limited_calls_nest_and_only_the_outermost_restores(two_blas_threads):
    ones = {k: 1 for k in two_blas_threads}
    with _threads.single_thread_blas():
        with _threads.single_thread_blas():
            assert blas_counts() == ones
        assert blas_counts() == ones
    assert blas_counts() == two_blas_threads


def test_limited_call_leaves_one_thread_pools_alone(monkeypatch):
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        calls = []
        for lib in _threads._blas_pools():
            monkeypatch.setattr(lib, "set_num_threads", lambda n, calls=calls: calls.append(n))
        with _threads.single_thread_blas():
            pass
        assert calls == []


# --------------------------------------------------------------------------- the knob


@pytest.mark.parametrize("bad, exc, msg", [
    (0, ValueError, f"n must be between 1 and {MAX_THREADS}"),
    (-2, ValueError, "got -2"),
    (MAX_THREADS + 1, ValueError, "NUMBA_NUM_THREADS"),
    (1.5, TypeError, "n must be a positive int, got float 1.5"),
    ("2", TypeError, "n must be a positive int, got str '2'"),
    (True, TypeError, "n must be a positive int, got True"),
    (None, TypeError, "n must be a positive int"),
])
def test_set_num_threads_rejects(bad, exc, msg):
    before = (fastconv.get_num_threads(), blas_counts())
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(".", r"\.")):
        fastconv.set_num_threads(bad)
    with pytest.raises(exc), fastconv.threads(bad):
        pass
    assert (fastconv.get_num_threads(), blas_counts()) == before


def test_set_num_threads_sets_numba_and_blas():
    before_numba, before_blas = fastconv.get_num_threads(), blas_counts()
    try:
        fastconv.set_num_threads(np.int64(1))
        assert fastconv.get_num_threads() == numba.get_num_threads() == 1
        assert set(blas_counts().values()) == {1}
        fastconv.set_num_threads(MAX_THREADS)
        assert fastconv.get_num_threads() == MAX_THREADS
        assert set(blas_counts().values()) == {MAX_THREADS}
    finally:
        numba.set_num_threads(before_numba)
        for lib in _threads._blas_pools():
            lib.set_num_threads(before_blas[lib.filepath])


def test_threads_context_nests_and_restores():
    before = (fastconv.get_num_threads(), blas_counts())
    with fastconv.threads(MAX_THREADS):
        assert fastconv.get_num_threads() == MAX_THREADS
        with fastconv.threads(1):
            assert fastconv.get_num_threads() == 1
            assert set(blas_counts().values()) == {1}
        assert fastconv.get_num_threads() == MAX_THREADS
        assert set(blas_counts().values()) == {MAX_THREADS}
    assert (fastconv.get_num_threads(), blas_counts()) == before


def test_threads_context_restores_after_exception():
    before = (fastconv.get_num_threads(), blas_counts())
    with pytest.raises(KeyError), fastconv.threads(1):
        raise KeyError("inside")
    assert (fastconv.get_num_threads(), blas_counts()) == before


def test_threads_context_results_unchanged(rng):
    x, w = conv_inputs(rng)
    y = fastconv.conv2d(x, w)
    with fastconv.threads(1):
        y1 = fastconv.conv2d(x, w)
    np.testing.assert_allclose(y1, y, rtol=1e-6, atol=1e-6)  # same kernels; only the split changes


def fake_torch(monkeypatch) -> list[int]:
    """A stand-in torch in sys.modules (fastconv never imports torch itself)."""
    state = {"n": 7}
    calls: list[int] = []
    mod = types.ModuleType("torch")
    mod.get_num_threads = lambda: state["n"]

    def set_num_threads(n):
        calls.append(n)
        state["n"] = n

    mod.set_num_threads = set_num_threads
    mod.__version__ = "0.fake"
    monkeypatch.setitem(sys.modules, "torch", mod)
    return calls


def test_threads_sets_and_restores_an_imported_torch(monkeypatch):
    calls = fake_torch(monkeypatch)
    with fastconv.threads(1):
        assert calls == [1]
    assert calls == [1, 7]


def test_torch_is_never_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    with fastconv.threads(1):
        pass
    fastconv.show_config(file=io.StringIO())
    assert "torch" not in sys.modules


# --------------------------------------------------------------------------- show_config


def test_show_config_reports_what_a_bug_report_needs(monkeypatch):
    fake_torch(monkeypatch)
    out = io.StringIO()
    fastconv.show_config(file=out)
    text = out.getvalue()
    for field in (f"fastconv {fastconv.__version__}", f"numpy {np.__version__}", f"numba {numba.__version__}",
                  "threadpoolctl", "torch 0.fake (intra-op threads 7)", "CPU: ", "usable",
                  "numba threading layer: ", "thread pools (threadpoolctl):", "blas", "CUDA: ", "environment: "):
        assert field in text, field
    layer = text.split("numba threading layer: ")[1].split(";")[0]
    assert layer in ("omp", "tbb", "workqueue"), layer


def test_show_config_prints_to_stdout(capsys):
    fastconv.show_config()
    assert capsys.readouterr().out.startswith("fastconv ")


def test_exports():
    for name in ("set_num_threads", "get_num_threads", "threads", "show_config"):
        assert name in fastconv.__all__ and callable(getattr(fastconv, name))
