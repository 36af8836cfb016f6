"""Every layer's output for a batch: ``Sequential.activations`` and the explain page use it.

Its own module, so that ``model`` (which offers ``activations``) and ``explain`` (which draws
them and checks its argument is a ``Sequential``) need not import each other."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .layers import keras_shape


class LayerOutput(NamedTuple):
    """One layer's output for a batch: ``shape`` is ``summary()``'s (None, H, W, C) or
    (None, F); ``output`` the host array (N, H, W, C) or (N, F)."""

    name: str
    type_name: str
    shape: tuple[int | None, ...]
    output: np.ndarray


# ----------------------------------------------------------------------------- activations


def _model_ops(model: Any) -> Any:
    return model._ops


def layer_activations(model: Any, x: Any, batch_size: int = 32) -> list[LayerOutput]:
    """Every layer's output for the batch ``x`` (``predict``'s input format), in layer order.

    Runs on the model's device; the outputs come back as host arrays in channels-last
    layout, concatenated over batches of ``batch_size``.
    """
    model._require_built("activations")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    x = model._check_x(x)
    ops = _model_ops(model)
    chunks: list[list[np.ndarray]] = [[] for _ in model.layers]
    for lo in range(0, len(x), int(batch_size)):
        xb = model._batch(x[lo : lo + int(batch_size)])
        for i, layer in enumerate(model.layers):
            xb = layer.forward(xb, False)
            chunks[i].append(_channels_last(ops.to_host(xb)))
    return [
        LayerOutput(
            layer.name,
            layer.type_name,
            (None, *keras_shape(layer.output_shape)),
            np.concatenate(parts) if len(parts) > 1 else parts[0],
        )
        for layer, parts in zip(model.layers, chunks)
    ]


def _channels_last(a: Any) -> np.ndarray:
    """A fresh host copy (later layers may reuse the buffer), NCHW -> NHWC."""
    a = np.asarray(a)
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else np.array(a)
