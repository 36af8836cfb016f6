"""MNIST training benchmark: the Keras-book convnet in fastconv.nn and the same
model in torch, on synthetic MNIST-shaped data."""

from __future__ import annotations

from typing import Callable

import numpy as np

from benchmarks.impls import fastconv as _fastconv
from benchmarks.impls import torch as _torch
from benchmarks.shapes import MnistCase

MNIST_IMPLS = ("fastconv-cpu", "torch-cpu", "fastconv-cuda", "cudnn-torch")


def mnist_data(case: MnistCase, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic MNIST-shaped data for ``case.steps`` batches: x (N, 28, 28, 1)
    float32 in [0, 1) (Keras channels-last, already scaled), y (N,) int64 in [0, 10).
    Speed does not depend on the pixel values, so no dataset is needed."""
    n = case.batch * case.steps
    return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)


class MnistRunner:
    """The Keras-book convnet (conv 32 3x3 relu, pool 2, conv 64 3x3 relu, pool 2,
    conv 64 3x3 relu, flatten, dense 64 relu, dense 10 softmax; RMSprop with
    Keras' defaults, sparse categorical cross-entropy) in one implementation.

    ``step(i)`` trains on batch i, ``epoch_chunk()`` on all ``case.steps``
    batches in one pass (fastconv: one ``fit`` call, which converts NHWC to NCHW
    per batch; torch: the usual zero_grad/forward/backward/step loop on NCHW
    tensors prepared once), ``loss(i)`` is the loss on batch i.
    """

    def __init__(self, name: str, case: MnistCase, x: np.ndarray, y: np.ndarray) -> None:
        self.name, self.case, self.x, self.y = name, case, x, y
        self.sync: Callable[[], None] = lambda: None
        if name.startswith("fastconv"):
            self._build_fastconv(device="cuda" if name == "fastconv-cuda" else None)
        else:
            self._build_torch(cuda=name == "cudnn-torch")

    @staticmethod
    def skip_reason(name: str) -> str | None:
        if name == "fastconv-cpu":
            try:
                from fastconv import nn  # noqa: F401
            except ImportError as exc:
                return f"fastconv.nn not importable ({exc})"
            return _fastconv.available()
        if name == "fastconv-cuda":
            return MnistRunner.skip_reason("fastconv-cpu") or _fastconv.cuda_available()
        return _torch.available(cuda=name == "cudnn-torch")

    def _batch(self, i: int) -> slice:
        b = self.case.batch
        i %= self.case.steps
        return slice(i * b, (i + 1) * b)

    # fastconv.nn, through its public Keras-style API only
    def _build_fastconv(self, device: str | None) -> None:
        from fastconv.nn.zoo import keras_mnist_convnet

        model, optimizer, _ = keras_mnist_convnet(device="cpu" if device is None else device, seed=0)
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        self.model = model
        self.step = self._fastconv_step
        self.epoch_chunk = self._fastconv_chunk
        self.loss = self._fastconv_loss

    def _fastconv_step(self, i: int) -> None:
        s = self._batch(i)
        self.model.fit(self.x[s], self.y[s], epochs=1, batch_size=self.case.batch, verbose=0, shuffle=False)

    def _fastconv_chunk(self) -> None:
        self.model.fit(self.x, self.y, epochs=1, batch_size=self.case.batch, verbose=0, shuffle=False)

    def _fastconv_loss(self, i: int) -> float:
        s = self._batch(i)
        try:
            out = self.model.evaluate(self.x[s], self.y[s], verbose=0)
        except TypeError:
            out = self.model.evaluate(self.x[s], self.y[s])
        return float(out[0])

    # the same model in torch
    def _build_torch(self, cuda: bool) -> None:
        import torch
        from torch import nn as tnn

        dev = torch.device("cuda" if cuda else "cpu")
        # a fixed initialisation, as fastconv's (seed 0): check_learns must not depend on the draw
        # (an unseeded torch model failed it once in a few runs: 3 RMSprop steps overshot)
        torch.manual_seed(0)
        self.model = tnn.Sequential(
            tnn.Conv2d(1, 32, 3), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(32, 64, 3), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(64, 64, 3), tnn.ReLU(), tnn.Flatten(),
            tnn.Linear(3 * 3 * 64, 64), tnn.ReLU(), tnn.Linear(64, 10),
        ).to(dev)
        # Keras RMSprop defaults: learning rate 1e-3, rho 0.9, epsilon 1e-7.
        self.opt = torch.optim.RMSprop(self.model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        self.xt = torch.from_numpy(np.ascontiguousarray(self.x.transpose(0, 3, 1, 2))).to(dev)
        self.yt = torch.from_numpy(self.y).to(dev)
        self.F = torch.nn.functional
        self.torch = torch
        if cuda:
            self.sync = torch.cuda.synchronize
        self.step = self._torch_step
        self.epoch_chunk = self._torch_chunk
        self.loss = self._torch_loss

    def _torch_step(self, i: int) -> None:
        s = self._batch(i)
        self.opt.zero_grad()
        # cross_entropy = log-softmax + NLL: the softmax output layer fused with the loss, as fastconv does
        loss = self.F.cross_entropy(self.model(self.xt[s]), self.yt[s])
        loss.backward()
        self.opt.step()
        self.sync()

    def _torch_chunk(self) -> None:
        for i in range(self.case.steps):
            self._torch_step(i)

    def _torch_loss(self, i: int) -> float:
        s = self._batch(i)
        with self.torch.no_grad():
            return float(self.F.cross_entropy(self.model(self.xt[s]), self.yt[s]))

    def check_learns(self, steps: int = 3) -> tuple[float, float]:
        """Warm-up that doubles as the one check: a few steps on batch 0 must lower
        its loss (a kernel that computes garbage gradients does not)."""
        before = self.loss(0)
        for _ in range(steps):
            self.step(0)
        after = self.loss(0)
        if not after < before:
            raise AssertionError(f"{self.name}: loss on a fixed batch did not fall ({before:.4f} -> {after:.4f})")
        return before, after
