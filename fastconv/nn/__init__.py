"""A thin Keras-style network on the fastconv ops.

Channels-last data in (Keras' (N, H, W, C) or (N, H, W)), NCHW inside, one
conversion per batch.  See ``fastconv/nn/model.py`` for layout, losses and
seeding, ``layers.py`` for weight layouts and Flatten order, ``optimizers.py``
for update rules and defaults.

    from fastconv.nn import Sequential, Conv2D, MaxPool2D, Flatten, Dense
    model = Sequential([Conv2D(32, 3, activation="relu", input_shape=(28, 28, 1)),
                        MaxPool2D(2), Flatten(), Dense(10, activation="softmax")])
    model.compile("rmsprop", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train / 255.0, y_train, epochs=1, batch_size=64)

Callbacks (``fastconv.nn.callbacks``: ModelCheckpoint, EarlyStopping,
TerminateOnNaN, CSVLogger, History, Callback) have Keras' names and semantics;
``model.save``/``load_model`` keep the optimizer state, and
``fit(..., initial_epoch=k)`` resumes exactly (``nn/persistence.py``,
``nn/training.py``).
"""

from . import callbacks
from .callbacks import Callback, CSVLogger, EarlyStopping, History, ModelCheckpoint, TerminateOnNaN
from .explain import LayerOutput, explain
from .layers import (
    AveragePooling2D,
    AvgPool2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    MaxPool2D,
    MaxPooling2D,
    ReLU,
)
from .model import Sequential, load_model, to_categorical
from .optimizers import SGD, Adadelta, Adam, RMSprop

__all__ = [
    "Conv2D",
    "MaxPool2D",
    "MaxPooling2D",
    "Flatten",
    "Dense",
    "Dropout",
    "ReLU",
    "AveragePooling2D",
    "AvgPool2D",
    "GlobalAveragePooling2D",
    "Sequential",
    "load_model",
    "to_categorical",
    "SGD",
    "RMSprop",
    "Adam",
    "Adadelta",
    "callbacks",
    "Callback",
    "History",
    "ModelCheckpoint",
    "EarlyStopping",
    "TerminateOnNaN",
    "CSVLogger",
    "explain",
    "LayerOutput",
]
