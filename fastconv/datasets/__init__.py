"""Datasets: ``fastconv.datasets.mnist.load_data()`` (Keras-compatible MNIST)."""

from . import mnist

__all__ = ["mnist"]
