"""See inside a network: every layer's output for one image, as one offline page.

``layer_activations(model, x)`` (also ``Sequential.activations``) runs a batch
through the layers one at a time, in inference mode, and returns each layer's
output the way Keras users get them from
``keras.Model(model.inputs, [l.output for l in model.layers]).predict(x)``:
a list in layer order of host arrays in channels-last layout, here as
``LayerOutput(name, type_name, shape, output)`` records whose name, type and
shape are those ``summary()`` prints (``{r.name: r.output for r in records}``
gives the mapping).  Every layer's output is its real output: the ReLU that
training moves behind a following max pooling is applied in its own layer here.

``explain(model, image, path)`` writes what the model does with one image:

* ``format="html"`` (the default unless ``path`` ends in ``.png``): one
  self-contained HTML file -- no script, no font, no style sheet, no image from
  anywhere else; every picture is an inline PNG (``data:`` URI) encoded here with
  zlib.  Per layer: name, type, output shape, a line on what the layer type
  computes, the feature maps in a wrapping grid with one colour scale per layer
  and its legend, the filters of convolutions (the first one's in full, later
  ones as a kernel-size matrix) and, for a 1-D last layer, the outputs as a
  labelled bar chart.
* ``format="png"``: the same content as one matplotlib figure.

Colour scales: a layer whose values are all >= 0 (after ReLU, pooling of ReLU
maps, softmax) is drawn from its minimum to its maximum in "viridis"; a layer
with negative values on a scale symmetric around 0 in the diverging "RdBu_r"
(blue negative, white 0, red positive), so 0 always looks the same.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._activations import LayerOutput, layer_activations
from ._explain_figure import Bars, Grid, Panel, Report, Scale, png_bytes, scale_for
from .layers import keras_shape
from .persistence import atomic_write

__all__ = ["LayerOutput", "explain", "layer_activations", "png_bytes"]


_MAP_PIXELS = 56  # target on-screen size of one feature map
_MAX_MAPS = 256  # more channels than this: the first ones are shown, and the caption says so


def _feature_grid(out: np.ndarray) -> Grid:
    """(H, W, C) -> one picture per channel; (F,) -> one strip, 64 values per row."""
    scale = scale_for(out)
    if out.ndim == 3:
        h, w, c = out.shape
        n = min(c, _MAX_MAPS)
        caption = f"{c} feature maps of {h}×{w}" + (f" (the first {n} shown)" if n < c else "")
        return Grid(
            "Output",
            caption,
            [out[:, :, i] for i in range(n)],
            [str(i) for i in range(n)],
            scale,
            max(1, _MAP_PIXELS // max(h, w)),
        )
    f = out.size
    cols = min(f, 64)
    rows = -(-f // cols)
    strip = np.full(rows * cols, np.nan)
    strip[:f] = out.ravel()
    caption = f"{f} values" + (f", {cols} per row, in order" if rows > 1 else ", in order")
    return Grid("Output", caption, [strip.reshape(rows, cols)], [""], scale, max(2, min(16, 960 // cols)))


def _first_filters(kernel: np.ndarray) -> Grid:
    """Keras kernel (kh, kw, C, K) of the first convolution: every filter, its C slices side by side."""
    kh, kw, c, k = kernel.shape
    images = []
    for j in range(k):
        img = np.full((kh, c * (kw + 1) - 1), np.nan)
        for ci in range(c):
            img[:, ci * (kw + 1) : ci * (kw + 1) + kw] = kernel[:, :, ci, j]
        images.append(img)
    caption = (
        f"all {k} filters of {kh}×{kw}×{c} weights"
        + (" (input channels side by side)" if c > 1 else "")
        + "; red adds, blue subtracts"
    )
    return Grid(
        "Filters",
        caption,
        images,
        [str(j) for j in range(k)],
        scale_for(kernel),
        max(1, 40 // max(kh, c * (kw + 1))),
        "filters",
    )


def _filter_summary(kernel: np.ndarray) -> Grid:
    """Later convolutions: the L2 norm of each (input channel, filter) kernel as one matrix."""
    kh, kw, c, k = kernel.shape
    norms = np.sqrt(np.sum(np.asarray(kernel, dtype=np.float64) ** 2, axis=(0, 1)))  # (C, K)
    caption = (
        f"{k}×{c} kernels of {kh}×{kw}, summarised: the size (L2 norm) of each kernel; "
        "column = filter (output channel), row = input channel"
    )
    return Grid(
        "Filters (summary)", caption, [norms], [""], scale_for(norms), max(2, min(12, 320 // max(k, c))), "summary"
    )


_ABOUT = {
    "Conv2D": (
        "Convolution: each of its {filters} filters ({kh}×{kw}×{c} weights) slides over the input "
        '(stride {stride}, padding "{padding}"); at every position it multiplies the window by its '
        "weights, adds up and adds a bias. Each output channel maps where its filter's pattern occurs."
    ),
    "MaxPooling2D": (
        "Max pooling: keeps the largest value of each {ph}×{pw} window (stride {stride}), so the "
        "maps shrink while their strongest responses survive."
    ),
    "Flatten": (
        "Flatten: lays the {shape} maps out as one vector of {f} values (row by row, channels "
        "innermost, as Keras does) so that a dense layer can weigh every value."
    ),
    "Dense": "Dense: each of its {units} units adds up all {f} inputs, each times its own weight, plus a bias.",
    "Dropout": (
        "Dropout: while training it zeroes a random {rate:.0%} of the values (and scales the rest up); "
        "when predicting, as here, it passes its input through unchanged."
    ),
    "ReLU": "ReLU: replaces every negative value by 0 and keeps the positive ones.",
}
_ABOUT_ACTIVATION = {
    "relu": "Then ReLU: negative values become 0.",
    "softmax": (
        "Then softmax: the {n} scores become probabilities (positive, summing to 1); the largest one is the prediction."
    ),
    "sigmoid": "Then sigmoid: each value is squashed into (0, 1).",
    "tanh": "Then tanh: each value is squashed into (-1, 1).",
}


def describe(layer: Any) -> str:
    """One or two sentences on what this layer computes (empty for an unknown layer type)."""
    t = layer.type_name
    ins = keras_shape(layer.input_shape)
    facts: dict[str, Any] = {"f": int(np.prod(ins)), "shape": "×".join(map(str, ins))}
    if t == "Conv2D":
        facts.update(
            filters=layer.filters,
            kh=layer.kernel_size[0],
            kw=layer.kernel_size[1],
            c=ins[-1],
            stride=_pair_text(layer.strides),
            padding=layer.padding,
        )
    elif t == "MaxPooling2D":
        facts.update(ph=layer.pool_size[0], pw=layer.pool_size[1], stride=_pair_text(layer.strides))
    elif t == "Dense":
        facts.update(units=layer.units)
    elif t == "Dropout":
        facts.update(rate=layer.rate)
    text = _ABOUT.get(t, "").format(**facts)
    act = getattr(layer, "activation", None)
    if act in _ABOUT_ACTIVATION:
        text += " " + _ABOUT_ACTIVATION[act].format(n=int(np.prod(layer.output_shape)))
    return text.strip()


def _pair_text(p: tuple[int, int]) -> str:
    return str(p[0]) if p[0] == p[1] else f"{p[0]}×{p[1]}"


def _panel(index: int, layer: Any, record: LayerOutput, first_conv: bool) -> Panel:
    out = record.output[0]
    panel = Panel(index, record.name, record.type_name, record.shape, layer.count_params(), describe(layer))
    panel.grids.append(_feature_grid(out))
    if layer.type_name == "Conv2D":
        kernel = layer.get_weights()[0]
        panel.grids.append(_first_filters(kernel) if first_conv else _filter_summary(kernel))
    return panel


def _bars(layer: Any, out: np.ndarray, label: int | None) -> Bars | None:
    if out.ndim != 1 or out.size > 100:
        return None
    probs = getattr(layer, "activation", None) == "softmax"
    return Bars(out.astype(np.float64), [str(i) for i in range(out.size)], probs, int(np.argmax(out)), label)


def _input_grid(image: np.ndarray) -> Grid:
    """(H, W, C): one greyscale picture per channel, zoomed to about 168 pixels."""
    h, w, c = image.shape
    v = image[np.isfinite(image)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    scale = Scale(lo, hi if hi > lo else lo + 1.0, "gray")
    return Grid(
        "Input",
        f"{h}×{w}×{c}",
        [image[:, :, i] for i in range(c)],
        [f"channel {i}" if c > 1 else "" for i in range(c)],
        scale,
        max(1, 168 // max(h, w)),
    )


def build_report(model: Any, image: np.ndarray, label: int | None) -> Report:
    """Run ``image`` (H, W, C) through ``model`` and collect everything the page shows."""
    records = layer_activations(model, image[None])
    layers = model.layers
    panels, seen_conv = [], False
    for i, (layer, rec) in enumerate(zip(layers, records)):
        panels.append(_panel(i + 1, layer, rec, first_conv=not seen_conv))
        seen_conv = seen_conv or layer.type_name == "Conv2D"
    bars = _bars(layers[-1], records[-1].output[0], label)
    if bars is not None:
        panels[-1].bars = bars
        panels[-1].grids = []  # the bar chart is this layer's output
    predicted = bars.predicted if bars is not None else None
    confidence = float(bars.values[bars.predicted]) if bars is not None and bars.probabilities else None
    return Report(model.name, _input_grid(image), label, predicted, confidence, panels, bars, model.count_params())


# ----------------------------------------------------------------------------- checks


def _check_model(model: Any) -> None:
    from .model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"explain expects a fastconv.nn.Sequential model, got {type(model).__name__}")
    if not model.layers:
        raise ValueError("explain: the model has no layers")
    if not model.built:
        if model.layers[0].input_shape_arg is None:
            raise RuntimeError(
                "explain: the model is not built yet, so its input shape is unknown: give the first "
                "layer input_shape=(28, 28, 1) (say), call model.build((None, 28, 28, 1)), "
                "fit it, or load a trained one with fastconv.nn.load_model(path)"
            )
        model.build()
    shape = tuple(model.input_shape or ())
    if len(shape) != 3:
        raise ValueError(
            f"explain needs a model that takes images (height, width, channels); this one takes "
            f"vectors of shape {keras_shape(shape)}"
        )


def _check_image(model: Any, image: Any) -> np.ndarray:
    """One image as the model takes it -> (H, W, C) float64."""
    c, h, w = model.input_shape
    img = np.asarray(image)
    if img.dtype.kind not in "fiub":
        raise TypeError(f"explain: image must be a real numeric array, got dtype {img.dtype}")
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if c == 1 and img.shape == (h, w):
        img = img[:, :, None]
    if img.shape != (h, w, c):
        forms = f"({h}, {w}, {c})" + (f" or ({h}, {w})" if c == 1 else "") + f" or (1, {h}, {w}, {c})"
        raise ValueError(
            f"explain: image must be one image of shape {forms} (channels-last, as the model "
            f"{model.name!r} takes it), got shape {np.shape(image)}"
        )
    return img.astype(np.float64)


def _check_label(label: Any, model: Any) -> int | None:
    if label is None:
        return None
    classes = int(np.prod(model.layers[-1].output_shape))
    ok = isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_))
    if not ok or not 0 <= int(label) < classes:
        raise ValueError(
            f"explain: label must be a class index in [0, {classes}) (the model has {classes} "
            f"outputs) or None, got {label!r}"
        )
    return int(label)


def _check_format(path: str, fmt: str | None) -> str:
    if fmt is None:
        return "png" if path.lower().endswith(".png") else "html"
    if fmt not in ("html", "png"):
        raise ValueError(f'explain: format must be "html", "png" or None (from the file name), got {fmt!r}')
    return fmt


# ----------------------------------------------------------------------------- entry point


def explain(
    model: Any, image: Any, path: str | os.PathLike[str], *, label: int | None = None, format: str | None = None
) -> str:
    """Write what ``model`` does with one ``image`` to ``path``; returns the path.

    ``image``: one sample as the model takes it (channels-last (H, W, C), or (H, W)
    for one channel, or a batch of one), e.g. ``x_test[i] / 255.0``.  ``label``: the
    true class, shown next to the prediction.  ``format``: "html" (one
    self-contained page), "png" (a matplotlib figure) or None: "png" when ``path``
    ends in ``.png``, else "html".  The file is written atomically.
    """
    path = os.fspath(path)
    fmt = _check_format(path, format)
    _check_model(model)
    img = _check_image(model, image)
    lab = _check_label(label, model)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"explain: the directory of {path!r} does not exist")
    report = build_report(model, img, lab)
    if fmt == "html":
        from ._explain_html import render_html

        data = render_html(report).encode("utf-8")
    else:
        from ._explain_png import render_png

        data = render_png(report)
    write_atomic(path, data)
    return path


def write_atomic(path: str, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: a reader never sees half a file
    (``persistence.atomic_write``, the one atomic writer)."""
    with atomic_write(path) as f:
        f.write(data)
