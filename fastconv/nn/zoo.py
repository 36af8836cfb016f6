"""The MNIST architectures that the example, the benchmarks and the tests share.

Each builder returns ``(model, optimizer, batch_size)``: an uncompiled
``Sequential`` for 28x28x1 inputs and its customary optimizer and batch size.
"""

from __future__ import annotations

from typing import Any

from .layers import Conv2D, Dense, Flatten, MaxPool2D
from .model import Sequential
from .optimizers import Adadelta, Adam, Optimizer, RMSprop


def keras_mnist_convnet(device: str = "cpu", seed: Any = None) -> tuple[Sequential, Optimizer, int]:
    """Chollet, Deep Learning with Python 5.1: Conv2D 32 3x3 relu -> MaxPool 2 -> Conv2D 64 3x3
    relu -> MaxPool 2 -> Conv2D 64 3x3 relu -> Flatten -> Dense 64 relu -> Dense 10 softmax;
    RMSprop (Keras defaults), batch 64."""
    layers = [
        Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
        MaxPool2D(2),
        Conv2D(64, 3, activation="relu"),
        MaxPool2D(2),
        Conv2D(64, 3, activation="relu"),
        Flatten(),
        Dense(64, activation="relu"),
        Dense(10, activation="softmax"),
    ]
    return Sequential(layers, device=device, seed=seed), RMSprop(), 64


def lenet5(device: str = "cpu", seed: Any = None) -> tuple[Sequential, Optimizer, int]:
    """LeNet-5 in its common modern form (max pooling and relu instead of subsampling and tanh):
    Conv2D 6 5x5 same relu -> MaxPool 2 -> Conv2D 16 5x5 relu -> MaxPool 2 -> Flatten ->
    Dense 120 relu -> Dense 84 relu -> Dense 10 softmax; Adam, batch 64."""
    layers = [
        Conv2D(6, 5, padding="same", activation="relu", input_shape=(28, 28, 1)),
        MaxPool2D(2),
        Conv2D(16, 5, activation="relu"),
        MaxPool2D(2),
        Flatten(),
        Dense(120, activation="relu"),
        Dense(84, activation="relu"),
        Dense(10, activation="softmax"),
    ]
    return Sequential(layers, device=device, seed=seed), Adam(), 64


def convnetjs_mnist(device: str = "cpu", seed: Any = None) -> tuple[Sequential, Optimizer, int]:
    """convnetjs' MNIST demo: Conv2D 8 5x5 pad 2 relu -> MaxPool 2 -> Conv2D 16 5x5 pad 2 relu ->
    MaxPool 3 -> Dense 10 softmax; Adadelta as convnetjs runs it (lr 1, rho 0.95, eps 1e-8) with
    L2 decay 1e-3, batch 20.  Full 28x28 images (the demo takes random 24x24 crops)."""
    layers = [
        Conv2D(8, 5, padding="same", activation="relu", input_shape=(28, 28, 1)),
        MaxPool2D(2),
        Conv2D(16, 5, padding="same", activation="relu"),
        MaxPool2D(3),
        Flatten(),
        Dense(10, activation="softmax"),
    ]
    return Sequential(layers, device=device, seed=seed), Adadelta(1.0, epsilon=1e-8, weight_decay=1e-3), 20


MODELS = {"keras": keras_mnist_convnet, "lenet": lenet5, "convnetjs": convnetjs_mnist}
