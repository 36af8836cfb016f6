"""fastconv.nn.explain: every layer's activation against a float64 re-computation
with the reference ops, the offline page (self-contained, escaped, complete),
the PNG encoder, the matplotlib figure, bad input, and atomic writes.

The command-line example is tested in tests/examples/test_explain_mnist.py and the
page in a real browser in tests/nn/test_explain_browser.py.
"""

from __future__ import annotations

import base64
import html
import os
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fastconv import nn, reference
from fastconv.nn import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Sequential
from fastconv.nn import explain as explain_fn
from fastconv.nn.explain import LayerOutput, Scale, layer_activations, png_bytes, scale_for, write_atomic

NAMES = ["conv2d", "max_pooling2d", "conv2d_1", "re_lu", "dropout", "flatten", "dense", "dense_1"]
TYPES = ["Conv2D", "MaxPooling2D", "Conv2D", "ReLU", "Dropout", "Flatten", "Dense", "Dense"]
SHAPES = [(None, 8, 8, 3), (None, 4, 4, 3), (None, 3, 3, 4), (None, 3, 3, 4), (None, 3, 3, 4), (None, 36),
          (None, 5), (None, 3)]


def small_model(dtype="float64", seed=0, name="sequential"):
    """Every layer type: a conv whose ReLU training moves behind the pooling, a plain conv + ReLU layer,
    dropout (identity when predicting), flatten, dense, softmax."""
    m = Sequential([
        Conv2D(3, 3, padding="same", activation="relu", input_shape=(8, 8, 2)),
        MaxPool2D(2),
        Conv2D(4, 2),
        ReLU(),
        Dropout(0.5),
        Flatten(),
        Dense(5, activation="relu"),
        Dense(3, activation="softmax"),
    ], dtype=dtype, seed=seed, name=name)
    m.build()
    rng = np.random.default_rng(seed + 1)  # non-zero biases, so a bias that is dropped shows
    m.set_weights([w + 0.1 * rng.standard_normal(w.shape) for w in m.get_weights()])
    return m


def recompute(m, x):
    """Every layer's output in float64 with the reference ops and NumPy, channels-last."""
    w = m.get_weights()
    nchw = lambda a: a.transpose(0, 3, 1, 2)  # noqa: E731
    nhwc = lambda a: a.transpose(0, 2, 3, 1)  # noqa: E731
    keras_conv = lambda a, k, b, pad: reference.conv2d(a, k.transpose(3, 2, 0, 1), b, padding=pad)  # noqa: E731
    c1 = np.maximum(keras_conv(nchw(x), w[0], w[1], "same"), 0)
    p1 = reference.max_pool2d(c1, 2)
    c2 = keras_conv(p1, w[2], w[3], "valid")
    r = np.maximum(c2, 0)
    flat = nhwc(r).reshape(len(x), -1)
    d1 = np.maximum(flat @ w[4] + w[5], 0)
    z = d1 @ w[6] + w[7]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return [nhwc(c1), nhwc(p1), nhwc(c2), nhwc(r), nhwc(r), flat, d1, e / e.sum(axis=1, keepdims=True)]


def test_activations_are_every_layers_output_in_float64():
    m = small_model()
    x = np.random.default_rng(2).uniform(-1, 1, (5, 8, 8, 2))
    records = m.activations(x)
    assert [r.name for r in records] == NAMES
    assert [r.type_name for r in records] == TYPES
    assert [r.shape for r in records] == SHAPES
    for rec, want in zip(records, recompute(m, x)):
        assert isinstance(rec, LayerOutput) and type(rec.output) is np.ndarray
        assert rec.output.shape == (5, *rec.shape[1:]) and rec.output.dtype == np.float64
        np.testing.assert_allclose(rec.output, want, rtol=1e-12, atol=1e-14, err_msg=rec.name)
    assert records[0].output.min() == 0.0  # the conv's own ReLU, not the one training moves to the pooling
    np.testing.assert_allclose(records[-1].output, m.predict(x), rtol=1e-13)


def test_activations_names_and_shapes_are_summarys():
    m = small_model()
    lines = []
    m.summary(print_fn=lines.append)
    for rec in m.activations(np.zeros((1, 8, 8, 2))):
        row = [ln for ln in lines if ln.startswith(f" {rec.name} ({rec.type_name})")]
        assert len(row) == 1 and str(rec.shape) in row[0], (rec, lines)


def test_activations_batches_float32_and_unpacking():
    m = small_model("float32")
    x = np.random.default_rng(3).uniform(0, 1, (5, 8, 8, 2)).astype(np.float32)
    whole, chunked = m.activations(x), m.activations(x, batch_size=2)
    for a, b in zip(whole, chunked):
        assert a.output.dtype == np.float32
        np.testing.assert_allclose(b.output, a.output, rtol=1e-6, atol=1e-7)
    name, type_name, shape, out = whole[1]  # a record unpacks like a tuple
    assert (name, type_name, shape, out.shape) == ("max_pooling2d", "MaxPooling2D", (None, 4, 4, 3), (5, 4, 4, 3))
    assert list({r.name: r.output for r in whole}) == NAMES
    # outputs are copies: changing one does not change another, nor the next call
    whole[4].output[:] = 7.0
    assert not np.any(whole[3].output == 7.0)


def test_activations_single_channel_without_channel_axis():
    m = Sequential([Conv2D(2, 3, input_shape=(6, 6, 1)), Flatten(), Dense(2)], seed=0)
    x = np.random.default_rng(4).uniform(size=(3, 6, 6))
    a, b = m.activations(x), m.activations(x[..., None])
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra.output, rb.output)


def test_activations_errors():
    with pytest.raises(RuntimeError, match=r"activations: the model is not built yet .*input_shape"):
        Sequential([Dense(3)]).activations(np.zeros((1, 4)))
    m = small_model()
    with pytest.raises(ValueError, match=r"x must have shape \(N, 8, 8, 2\).*got \(2, 8, 8\)"):
        m.activations(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        m.activations(np.zeros((1, 8, 8, 2)), batch_size=0)


# ----------------------------------------------------------------------------- colour and PNG


def decode_png(data: bytes) -> np.ndarray:
    """Our own PNGs (8-bit RGB, filter 0, one IDAT): checks the structure and CRCs, returns (h, w, 3)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(tag + body)
        chunks[tag] = body
        pos += 12 + n
    w, h, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour) == (8, 2) and b"IEND" in chunks
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert not raw[:, 0].any()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_bytes_round_trip():
    rgb = np.random.default_rng(5).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    np.testing.assert_array_equal(decode_png(data), rgb)
    try:
        from PIL import Image
    except ImportError:
        return
    import io

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), rgb)


def test_scales():
    s = scale_for(np.array([0.0, 0.5, 2.0, np.nan]))
    assert (s.lo, s.hi, s.cmap) == (0.0, 2.0, "viridis")
    s = scale_for(np.array([-0.5, 2.0]))
    assert (s.lo, s.hi, s.cmap) == (-2.0, 2.0, "RdBu_r") and s.ticks() == [-2.0, 0.0, 2.0]
    assert scale_for(np.full(3, 4.0)) == Scale(4.0, 5.0, "viridis")  # constant: a valid range
    assert scale_for(np.array([np.nan])) == Scale(0.0, 1.0, "viridis")
    rgb = Scale(-1.0, 1.0, "RdBu_r").rgb(np.array([[-1.0, 0.0, 1.0, np.nan, 5.0]]))
    assert rgb[0].tolist() == [[5, 48, 97], [247, 247, 247], [103, 0, 31], [230, 230, 230], [103, 0, 31]]


# ----------------------------------------------------------------------------- the page


class Page(HTMLParser):
    """Collects every tag with its attributes, and the visible text."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.text = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    m = small_model(name='net <script>alert("x")</script> & co')
    img = np.random.default_rng(6).uniform(0, 1, (8, 8, 2))
    path = tmp_path_factory.mktemp("page") / "explain.html"
    assert explain_fn(m, img, path, label=2) == os.fspath(path)
    text = path.read_text(encoding="utf-8")
    return m, img, text, Page(text)


def test_page_is_self_contained(page):
    _, _, text, parsed = page
    tags = {t for t, _ in parsed.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed", "base", "svg", "video", "audio"}
    for tag, attrs in parsed.tags:
        for key in ("src", "srcset", "data", "poster", "background"):
            if key in attrs:
                assert attrs[key].startswith("data:image/png;base64,"), (tag, key)
        if tag == "a":
            assert attrs["href"].startswith("#"), attrs
    lower = text.lower()
    for needle in ("http:", "https:", "//", "@import", "url(", "@font-face"):
        assert needle not in lower.replace("<!doctype html>", ""), needle


def test_page_images_are_valid_pngs_of_the_stated_size(page):
    imgs = [a for t, a in page[3].tags if t == "img"]
    # input channels, then per layer its maps (a strip when flat) and a conv's filters; the last is a chart
    assert len(imgs) == 2 + (3 + 3) + 3 + (4 + 1) + 4 + 4 + 1 + 1
    for a in imgs:
        rgb = decode_png(base64.b64decode(a["src"].split(",", 1)[1]))
        assert rgb.shape[:2] == (int(a["height"]), int(a["width"])) and rgb.shape[0] >= 1


def test_page_has_every_layer_in_order_with_its_facts(page):
    m, img, _, parsed = page
    sections = [a for t, a in parsed.tags if t == "section" and "layer" in a.get("class", "").split()]
    assert [a["data-layer"] for a in sections] == NAMES and [a["data-type"] for a in sections] == TYPES
    visible = " ".join(" ".join(parsed.text).split())
    for i, (name, shape) in enumerate(zip(NAMES, SHAPES)):
        assert f"{i + 1}. {name} {TYPES[i]} output {shape}" in visible
    for words in ("Convolution: each of its 3 filters (3×3×2 weights)", "Max pooling: keeps the largest value",
                  "Flatten: lays the 3×3×4 maps out as one vector of 36 values", "Dense: each of its 5 units",
                  "Dropout: while training", "ReLU: replaces every negative value by 0",
                  "Then softmax: the 3 scores become probabilities"):
        assert words in visible, words
    probs = m.predict(img[None])[0]
    pred = int(np.argmax(probs))
    assert f"predicted class {pred} ({100 * probs[pred]:.1f} %)" in visible
    assert "true label 2" in visible
    for k, p in enumerate(probs):
        assert f"{k} {100 * p:.2f} %" in visible


def test_page_legends_give_each_layers_range(page):
    m, img, text, _ = page
    records = m.activations(img[None])
    blocks = text.split('<section class="card layer"')[1:]
    for rec, block in zip(records[:-1], blocks):
        out = rec.output
        lo, hi = (out.min(), out.max()) if out.min() >= 0 else (-np.abs(out).max(), np.abs(out).max())
        if hi == lo:
            hi = lo + 1
        ticks = re.search(r'class="ticks">((?:<span>[^<]*</span>)+)</span>', block).group(1)
        assert f"<span>{0 if lo == 0 else f'{lo:.3g}'}</span>" in ticks and f"<span>{hi:.3g}</span>" in ticks, \
            (rec.name, ticks)


def test_page_escapes_text(page):
    _, _, text, _ = page
    assert "<script>" not in text and 'alert("x")' not in text
    assert html.escape('net <script>alert("x")</script> & co', quote=True) in text


def test_layer_names_are_escaped(tmp_path):
    m = Sequential([Conv2D(1, 3, input_shape=(5, 5, 1), name='c"><img src=x>'), Flatten(), Dense(2)], seed=0)
    path = explain_fn(m, np.ones((5, 5)), tmp_path / "p.html")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert "<img src=x>" not in text and 'data-layer="c&quot;&gt;&lt;img src=x&gt;"' in text


def test_png_figure(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install matplotlib)")
    from PIL import Image

    m = small_model()
    img = np.random.default_rng(7).uniform(0, 1, (8, 8, 2))
    path = explain_fn(m, img, tmp_path / "e.html", label=0, format="png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] == 1280 and im.size[1] > 800
        pixels = np.asarray(im.convert("RGB")).astype(np.uint32)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]  # 1-D unique: fast
    assert len(np.unique(packed)) > 50


def test_format_follows_the_file_name(tmp_path, monkeypatch):
    from fastconv.nn import _explain_png

    monkeypatch.setattr(_explain_png, "render_png", lambda report: b"png figure")
    m = small_model()
    explain_fn(m, np.zeros((8, 8, 2)), tmp_path / "a.PNG")
    explain_fn(m, np.zeros((8, 8, 2)), tmp_path / "b.htm")
    explain_fn(m, np.zeros((8, 8, 2)), tmp_path / "c.png", format="html")
    assert (tmp_path / "a.PNG").read_bytes() == b"png figure"
    assert (tmp_path / "b.htm").read_bytes().startswith(b"<!DOCTYPE html>")
    assert (tmp_path / "c.png").read_bytes().startswith(b"<!DOCTYPE html>")


# ----------------------------------------------------------------------------- bad input


def test_bad_image_shapes_name_what_was_expected(tmp_path):
    m = small_model()
    for bad in (np.zeros((8, 8)), np.zeros((2, 8, 8)), np.zeros((2, 8, 8, 2)), np.zeros((8, 8, 3))):
        with pytest.raises(ValueError, match=r"image must be one image of shape \(8, 8, 2\) or \(1, 8, 8, 2\) "
                                             r"\(channels-last.*got shape " + re.escape(str(bad.shape))):
            explain_fn(m, bad, tmp_path / "x.html")
    with pytest.raises(TypeError, match="image must be a real numeric array, got dtype <U1"):
        explain_fn(m, np.full((8, 8, 2), "a"), tmp_path / "x.html")
    one = Sequential([Conv2D(1, 3, input_shape=(5, 5, 1)), Flatten(), Dense(2)], seed=0)
    with pytest.raises(ValueError, match=r"shape \(5, 5, 1\) or \(5, 5\) or \(1, 5, 5, 1\).*got shape \(28, 28\)"):
        explain_fn(one, np.zeros((28, 28)), tmp_path / "x.html")
    assert not list(tmp_path.iterdir())


def test_bad_models_labels_formats_and_paths(tmp_path):
    with pytest.raises(RuntimeError, match=r"explain: the model is not built yet.*input_shape=\(28, 28, 1\)"):
        explain_fn(Sequential([Conv2D(1, 3), Flatten(), Dense(2)]), np.zeros((5, 5)), tmp_path / "x.html")
    with pytest.raises(ValueError, match="explain: the model has no layers"):
        explain_fn(Sequential(), np.zeros((5, 5)), tmp_path / "x.html")
    with pytest.raises(TypeError, match="explain expects a fastconv.nn.Sequential model, got str"):
        explain_fn("model.npz", np.zeros((5, 5)), tmp_path / "x.html")
    with pytest.raises(ValueError, match=r"explain needs a model that takes images.*vectors of shape \(4,\)"):
        explain_fn(Sequential([Dense(2, input_shape=(4,))]), np.zeros(4), tmp_path / "x.html")
    m = small_model()
    for bad in (3, -1, 1.0, True, "1"):
        with pytest.raises(ValueError, match=r"label must be a class index in \[0, 3\) \(the model has 3 outputs\)"):
            explain_fn(m, np.zeros((8, 8, 2)), tmp_path / "x.html", label=bad)
    with pytest.raises(ValueError, match=r'format must be "html", "png" or None .*got \'pdf\''):
        explain_fn(m, np.zeros((8, 8, 2)), tmp_path / "x.pdf", format="pdf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        explain_fn(m, np.zeros((8, 8, 2)), tmp_path / "no" / "x.html")
    assert not list(tmp_path.iterdir())


def test_model_with_input_shape_is_built_on_demand(tmp_path):
    m = Sequential([Conv2D(1, 3, input_shape=(5, 5, 1)), Flatten(), Dense(2)], seed=0)
    assert not m.built
    explain_fn(m, np.zeros((1, 5, 5, 1)), tmp_path / "x.html", label=np.int64(1))
    assert m.built and "true label" in (tmp_path / "x.html").read_text(encoding="utf-8")


def test_write_atomic_replaces_whole_file_or_nothing(tmp_path, monkeypatch):
    target = tmp_path / "page.html"
    target.write_text("old")
    write_atomic(os.fspath(target), b"new")
    assert target.read_text() == "new"
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(os.fspath(target), b"newer")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]


def test_explain_is_exported():
    assert nn.explain is explain_fn and nn.LayerOutput is LayerOutput and layer_activations is not None


def test_models_without_probabilities(tmp_path):
    scores = Sequential([Conv2D(2, 3, input_shape=(5, 5, 1)), Flatten(), Dense(3)], seed=0)
    text = Path(explain_fn(scores, np.ones((5, 5)), tmp_path / "s.html", label=1)).read_text(encoding="utf-8")
    out = scores.predict(np.ones((1, 5, 5)))[0]
    assert "output of each unit" in text and "probability" not in text
    assert f'<p>predicted class</p><p class="big">{int(np.argmax(out))}</p>' in text
    maps = Sequential([Conv2D(2, 3, input_shape=(5, 5, 1))], seed=0)
    text = Path(explain_fn(maps, np.ones((5, 5)), tmp_path / "m.html")).read_text(encoding="utf-8")
    assert "predicted class" not in text and 'class="chart"' not in text and "2 feature maps of 3×3" in text
