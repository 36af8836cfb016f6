"""See inside a trained MNIST convnet: every layer's output for one test digit, as one offline page.

    python examples/train_mnist.py                                        # writes mnist_out/model.npz
    python examples/explain_mnist.py --model-file mnist_out/model.npz     # test image 0 -> explain.html
    python examples/explain_mnist.py --model-file mnist_out/model.npz --index 42 --out seven.html
    python examples/explain_mnist.py --model-file mnist_out/model.npz --format png   # -> explain.png
    python examples/explain_mnist.py                                      # no model file: trains a quick one

The page (``fastconv.nn.explain``) is a single self-contained HTML file -- open it
in any browser, no network needed: the input digit with its true label and the
predicted class, then every layer in order with its output shape, a line on what
it computes, its feature maps on one colour scale per layer, the filters of each
convolution, and the class probabilities as a bar chart.  ``--format png`` draws
the same content with matplotlib.

Without ``--model-file`` the Keras-book convnet is trained for one quick epoch
on the first ``--limit`` training images (a few seconds once Numba's cache is
warm); its test accuracy is printed, and it is lower than a full training's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see examples/train_mnist.py

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from fastconv import nn  # noqa: E402
from fastconv.datasets import mnist  # noqa: E402

MNIST_TEST_IMAGES = 10000
PROG = "explain_mnist.py"


class UserError(Exception):
    """A mistake in the command line or its files: one line on stderr, exit status 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-file", default=None, help="a model saved by Sequential.save (train_mnist.py writes "
                    "mnist_out/model.npz); default: train a quick one")
    ap.add_argument("--index", type=int, default=0, help=f"which test image, 0..{MNIST_TEST_IMAGES - 1} (default 0)")
    ap.add_argument("--out", default=None, help="output file (default explain.html, or explain.png with --format png)")
    ap.add_argument("--format", choices=("html", "png"), default=None,
                    help="html (default) or png (matplotlib); default: from --out's extension")
    ap.add_argument("--data", default=None, help="MNIST file or directory (default: see load_data's sources)")
    ap.add_argument("--limit", type=int, default=4000, help="training images for the quick model (default 4000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the quick model (default 0)")
    args = ap.parse_args(argv)
    if not 0 <= args.index < MNIST_TEST_IMAGES:
        raise UserError(f"--index must be a test image index in [0, {MNIST_TEST_IMAGES - 1}] (MNIST has "
                        f"{MNIST_TEST_IMAGES} test images), got {args.index}")
    if args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.format is None:
        args.format = "png" if args.out is not None and args.out.lower().endswith(".png") else "html"
    if args.out is None:
        args.out = f"explain.{args.format}"
    parent = Path(args.out).resolve().parent
    if not parent.is_dir():
        raise UserError(f"--out {args.out}: directory {parent} does not exist")
    if args.model_file is not None and not os.path.isfile(args.model_file):
        raise UserError(f"--model-file {args.model_file}: no such file (train_mnist.py writes mnist_out/model.npz)")
    return args


def load_mnist(path: str | None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    try:
        return mnist.load_data(path)
    except (mnist.MnistNotFoundError, mnist.MnistFileError) as exc:
        raise UserError(" ".join(line.strip() for line in str(exc).splitlines())) from None


def load_model(path: str) -> nn.Sequential:
    try:
        return nn.load_model(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"--model-file {path}: {exc}") from None


def quick_model(x_train: np.ndarray, y_train: np.ndarray, limit: int, seed: int) -> nn.Sequential:
    """The Keras-book convnet after one epoch on the first ``limit`` training images."""
    from fastconv.nn import zoo

    model, optimizer, _ = zoo.keras_mnist_convnet(seed=seed)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(x_train[:limit] / np.float32(255), y_train[:limit], epochs=1, batch_size=32, verbose=0, seed=seed)
    print(f"trained the Keras-book convnet on {min(limit, len(x_train))} images for one epoch "
          f"({time.perf_counter() - t0:.1f} s)")
    return model


def run(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    model = load_model(args.model_file) if args.model_file is not None else None
    (x_train, y_train), (x_test, y_test) = load_mnist(args.data)
    if model is None:
        model = quick_model(x_train, y_train, args.limit, args.seed)
        acc = float(np.mean(np.argmax(model.predict(x_test[:1000] / np.float32(255)), axis=1) == y_test[:1000]))
        print(f"its accuracy on the first 1000 test images: {100 * acc:.1f} %")
    image, label = x_test[args.index] / np.float32(255), int(y_test[args.index])
    try:
        nn.explain(model, image, args.out, label=label, format=args.format)
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        raise UserError(str(exc)) from None
    probs = model.predict(image[None])[0]
    pred = int(np.argmax(probs))
    print(f"wrote {args.out}: test image {args.index}, true label {label}, predicted {pred} "
          f"({100 * probs[pred]:.1f} %), {time.perf_counter() - t0:.1f} s")


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
