"""One MNIST training epoch of the Keras-book convnet: fastconv.nn vs PyTorch (CPU).

Same model (conv 32 3x3 relu, pool 2, conv 64 3x3 relu, pool 2, conv 64 3x3 relu,
flatten, dense 64 relu, dense 10 softmax), same batch size (64), same optimizer
(RMSprop lr 1e-3, rho 0.9, eps 1e-7: Keras' defaults), a freshly shuffled
epoch on each side (each gathers its batches inside its own loop, as training
does), same process, same thread count (default 2 = this machine's cores;
OpenBLAS, which fastconv's Dense layers use, 1 thread by default, see
--blas-threads).  Epochs are
interleaved (fastconv, torch, fastconv, torch, ...) and the medians compared, so
a disturbance hits both.  Each side is warmed up first (JIT compile / cache load,
oneDNN primitive creation) outside the timing.

    flock /tmp/fastconv-bench.lock python benchmarks/mnist_torch.py            # 1 full epoch each
    flock /tmp/fastconv-bench.lock python benchmarks/mnist_torch.py --repeats 3 --eval
    python benchmarks/mnist_torch.py --limit 6400 --profile                     # quick look + per-layer times

fastconv is timed through ``Sequential.fit(shuffle=True)`` (which gathers and
converts each channels-last batch to NCHW); torch through the usual zero_grad/forward/cross_entropy/backward/
step loop on an NCHW tensor prepared once.  ``--profile`` adds a per-layer
breakdown of one more fastconv epoch (forward and backward of every layer).
Uses real MNIST when ``fastconv.datasets.mnist.load_data`` finds it (else
synthetic data of the same shape: speed does not depend on pixel values).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=60000, help="images per epoch (default: all 60000)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="epochs per library (interleaved)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", action="store_true", help="also report test accuracy after the epochs")
    ap.add_argument("--profile", action="store_true", help="per-layer times of one more fastconv epoch")
    ap.add_argument("--synthetic", action="store_true", help="random data instead of MNIST")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="OpenBLAS threads (default 1, as examples/train_mnist.py: a multi-threaded OpenBLAS "
                         "contends with Numba's OpenMP threads); an OPENBLAS_NUM_THREADS already set wins")
    return ap.parse_args()


ARGS = _args()
# thread counts must be fixed before numba / numpy's BLAS / torch load
os.environ.setdefault("NUMBA_NUM_THREADS", str(ARGS.threads))
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(ARGS.blas_threads))
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, str(ARGS.threads))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from fastconv import nn  # noqa: E402
from fastconv.nn.zoo import keras_mnist_convnet  # noqa: E402


def load(limit: int, synthetic: bool, seed: int):
    rng = np.random.default_rng(seed)
    if not synthetic:
        try:
            from fastconv.datasets import mnist

            (x, y), (xt, yt) = mnist.load_data()
            return (x[:limit] / 255.0).astype(np.float32), y[:limit].astype(np.int64), \
                (xt / 255.0).astype(np.float32), yt.astype(np.int64), "MNIST"
        except (FileNotFoundError, ValueError) as exc:
            print(f"no MNIST ({type(exc).__name__}); using synthetic data")
    x = rng.random((limit, 28, 28), dtype=np.float32)
    xt = rng.random((1000, 28, 28), dtype=np.float32)
    return x, rng.integers(0, 10, limit), xt, rng.integers(0, 10, 1000), "synthetic"


def fastconv_model(seed: int) -> nn.Sequential:
    m, optimizer, _ = keras_mnist_convnet(seed=seed)  # the example's default model
    m.compile(optimizer, "sparse_categorical_crossentropy")
    return m


class TorchRun:
    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int):
        import torch
        from torch import nn as tnn

        torch.manual_seed(seed)
        self.torch = torch
        self.model = tnn.Sequential(
            tnn.Conv2d(1, 32, 3), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(32, 64, 3), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(64, 64, 3), tnn.ReLU(), tnn.Flatten(),
            tnn.Linear(576, 64), tnn.ReLU(), tnn.Linear(64, 10))
        self.opt = torch.optim.RMSprop(self.model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        self.x = torch.from_numpy(np.ascontiguousarray(x[:, None]))
        self.y = torch.from_numpy(y)

    def epoch(self, batch: int, order: np.ndarray) -> None:
        F = self.torch.nn.functional
        self.model.train()
        for lo in range(0, len(order), batch):
            idx = self.torch.from_numpy(order[lo:lo + batch])
            self.opt.zero_grad()
            loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])  # log-softmax fused with the loss
            loss.backward()
            self.opt.step()

    def accuracy(self, xt: np.ndarray, yt: np.ndarray) -> float:
        self.model.eval()
        with self.torch.no_grad():
            out = self.model(self.torch.from_numpy(np.ascontiguousarray(xt[:, None])))
        return float((out.argmax(1).numpy() == yt).mean())


def profile(model: nn.Sequential, x: np.ndarray, y: np.ndarray, batch: int) -> None:
    """Per-layer time of one epoch.  The fused steps (nn/steps.py: a Conv2D's
    ReLU after its MaxPooling2D) call a layer's ``linear_forward`` /
    ``linear_backward`` instead of ``forward`` / ``backward``, so those are
    timed too, each call counted once (the outermost) for its layer; a conv
    and its pooling run as one fused CPU kernel (``ConvReLUPool`` with a
    fused plan) get a row of their own, "<conv>+pool"."""
    from fastconv.nn.steps import ConvReLUPool

    times: dict[tuple[str, str], float] = {}
    busy: set[tuple[str, str]] = set()
    fused_rows: list[str] = []

    def add(key, seconds):
        times[key] = times.get(key, 0.0) + seconds
        if key[0] not in fused_rows and key[0].endswith("+pool"):
            fused_rows.append(key[0])

    step_forward, step_backward = ConvReLUPool.forward, ConvReLUPool._fused_backward

    def fused_forward(step, x, training):
        t = time.perf_counter()
        out = step_forward(step, x, training)
        if step._cpu_plan(x) is not None:
            add((f"{step.conv.name}+pool", "forward"), time.perf_counter() - t)
        return out

    def fused_backward(step, grad):
        t = time.perf_counter()
        out = step_backward(step, grad)
        add((f"{step.conv.name}+pool", "backward"), time.perf_counter() - t)
        return out

    def timed(layer, kind, fn):
        def run(*a, **k):
            key = (layer.name, kind)
            if key in busy:  # forward -> linear_forward: already timed
                return fn(*a, **k)
            busy.add(key)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[key] = times.get(key, 0.0) + time.perf_counter() - t
                busy.discard(key)
        return run

    wrapped = []
    for layer in model.layers:
        for attr, kind in (("forward", "forward"), ("backward", "backward"),
                           ("linear_forward", "forward"), ("linear_backward", "backward")):
            if hasattr(layer, attr):
                setattr(layer, attr, timed(layer, kind, getattr(layer, attr)))
                wrapped.append((layer, attr))
    ConvReLUPool.forward, ConvReLUPool._fused_backward = fused_forward, fused_backward
    t0 = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=batch, verbose=0, seed=1)
    total = time.perf_counter() - t0
    steps = -(-len(x) // batch)
    print(f"\nfastconv per-layer time, one epoch of {len(x)} images ({steps} steps), total {total:.2f} s:")
    print(f"  {'layer':<18}{'forward ms/step':>16}{'backward ms/step':>18}")
    for name in fused_rows + [layer.name for layer in model.layers]:
        f = times.get((name, "forward"), 0) / steps * 1e3
        b = times.get((name, "backward"), 0) / steps * 1e3
        print(f"  {name:<18}{f:>16.2f}{b:>18.2f}")
    rest = total - sum(times.values())
    print(f"  {'other (loss, optimizer, batching)':<36}{rest / steps * 1e3:>16.2f}")
    for layer, attr in wrapped:
        delattr(layer, attr)
    ConvReLUPool.forward, ConvReLUPool._fused_backward = step_forward, step_backward


def main() -> int:
    import numba
    import torch

    numba.set_num_threads(ARGS.threads)
    torch.set_num_threads(ARGS.threads)
    x, y, xt, yt, source = load(ARGS.limit, ARGS.synthetic, ARGS.seed)
    b = ARGS.batch_size
    print(f"{source}: {len(x)} images/epoch, batch {b}, {ARGS.threads} threads (OpenBLAS "
          f"{os.environ['OPENBLAS_NUM_THREADS']}), torch {torch.__version__}, numba {numba.__version__} "
          f"({numba.config.THREADING_LAYER} threading layer requested)")
    fc, th = fastconv_model(ARGS.seed), TorchRun(x, y, ARGS.seed)
    t = time.perf_counter()
    fc.fit(x[:2 * b], y[:2 * b], epochs=1, batch_size=b, verbose=0)
    fc.predict(xt[:b])
    print(f"fastconv warm-up (JIT compile or cache load): {time.perf_counter() - t:.1f} s")
    th.epoch(b, np.arange(2 * b))

    rng = np.random.default_rng(ARGS.seed)
    t_fc, t_th = [], []
    for r in range(ARGS.repeats):
        order = rng.permutation(len(x))
        # each side shuffles and gathers its batches inside its own loop:
        # fastconv's fit with its own permutation (seeded), torch with
        # ``order`` (the order does not change the work).  Passing
        # fit(x[order], ...) instead would time a 188 MB whole-dataset copy
        # that the torch loop never makes.
        t = time.perf_counter()
        fc.fit(x, y, epochs=1, batch_size=b, verbose=0, shuffle=True, seed=int(order[0]))
        t_fc.append(time.perf_counter() - t)
        t = time.perf_counter()
        th.epoch(b, order)
        t_th.append(time.perf_counter() - t)
        print(f"epoch {r + 1}: fastconv {t_fc[-1]:.2f} s, torch {t_th[-1]:.2f} s")
    mf, mt = statistics.median(t_fc), statistics.median(t_th)
    scale = 60000 / len(x)
    print(f"\nmedian epoch of {len(x)} images: fastconv {mf:.2f} s ({len(x) / mf:.0f} images/s), "
          f"torch {mt:.2f} s ({len(x) / mt:.0f} images/s); fastconv/torch = {mf / mt:.2f}")
    if scale != 1:
        print(f"scaled to a 60000-image epoch: fastconv {mf * scale:.1f} s, torch {mt * scale:.1f} s")
    if ARGS.eval:
        print(f"test accuracy after {ARGS.repeats} epoch(s): fastconv {fc.evaluate(xt, yt, batch_size=500)[1]:.4f}, "
              f"torch {th.accuracy(xt, yt):.4f}")
    if ARGS.profile:
        profile(fc, x, y, b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
