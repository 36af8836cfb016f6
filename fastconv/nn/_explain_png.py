"""The explain report as one PNG figure drawn with matplotlib (see ``explain.py``).

For users without a browser: the same content as the HTML page, top to bottom
on a 1280-pixel-wide figure.  Every box is placed explicitly in inches (a row
per layer, heights from the pictures' aspect ratios), so nothing overlaps
whatever the number of layers.  Uses matplotlib's object API (``Figure``), not
pyplot, so it neither needs a display nor touches global state.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np

from ._explain_figure import Bars, Grid, Panel, Report, fmt_value

_W = 12.8  # inches; at 100 dpi the figure is 1280 pixels wide
_DPI = 100
_LEFT = 0.3
_GAP = 0.12
_MAX_ROW = 3.0  # the tallest picture row, inches

Draw = Callable[["_Canvas", float], None]


def _matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise RuntimeError(
            'explain(format="png") needs matplotlib (pip install matplotlib); format="html" needs nothing'
        ) from None
    return matplotlib, Figure


class _Canvas:
    """A figure addressed in inches from its top-left corner."""

    def __init__(self, figure: Any, height: float):
        self.fig, self.h = figure, height

    def axes(self, x: float, top: float, w: float, h: float) -> Any:
        return self.fig.add_axes((x / _W, (self.h - top - h) / self.h, w / _W, h / self.h))

    def text(self, x: float, top: float, s: str, **kw: Any) -> None:
        self.fig.text(x / _W, (self.h - top) / self.h, s, va="top", ha="left", **kw)


def _mosaic(grid: Grid) -> np.ndarray:
    """All pictures of a grid, zoomed as on the page, in one array with a one-pixel NaN line
    between them, about 4x wider than tall."""
    imgs = [np.repeat(np.repeat(img, grid.zoom, axis=0), grid.zoom, axis=1) for img in grid.images]
    h, w = imgs[0].shape
    n = len(imgs)
    cols = n if n == 1 else min(n, max(1, math.ceil(math.sqrt(n * 4 * h / w))))
    rows = -(-n // cols)
    out = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan)
    for i, img in enumerate(imgs):
        r, c = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    return out


def _fit(a: np.ndarray, max_w: float, max_h: float) -> tuple[float, float]:
    """(w, h) in inches: one figure pixel per array element, shrunk to fit max_w x max_h."""
    aspect = a.shape[0] / a.shape[1]
    w = min(a.shape[1] / _DPI, max_w, max_h / aspect)
    return w, w * aspect


def _caption(grid: Grid, width: float) -> str:
    """Title and caption wrapped to ``width`` inches (7.5-point text)."""
    return textwrap.fill(f"{grid.title}: {grid.caption}", max(24, int(width / 0.06)))


def _caption_height(text: str) -> float:
    return 0.14 * (text.count("\n") + 1) + 0.08


def _draw_grid(
    cv: _Canvas, grid: Grid, mosaic: np.ndarray, x: float, top: float, size: tuple[float, float], caption: str
) -> None:
    matplotlib = _matplotlib()[0]
    cmap = matplotlib.colormaps[grid.scale.cmap].with_extremes(bad="#e6e6e6")
    cv.text(x, top, caption, fontsize=7.5, color="#333333", linespacing=1.25)
    top += _caption_height(caption)
    ax = cv.axes(x, top, *size)
    im = ax.imshow(mosaic, cmap=cmap, vmin=grid.scale.lo, vmax=grid.scale.hi, interpolation="nearest", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    cax = cv.axes(x + size[0] + 0.06, top, 0.1, max(size[1], 0.6))
    bar = cv.fig.colorbar(im, cax=cax)
    bar.set_ticks(grid.scale.ticks())
    bar.ax.tick_params(labelsize=7)
    bar.ax.set_yticklabels([fmt_value(t) for t in grid.scale.ticks()])


def _draw_bars(cv: _Canvas, bars: Bars, x: float, top: float, w: float, h: float) -> None:
    ax = cv.axes(x, top, w, h)
    y = np.arange(len(bars.values))
    colors = ["#2f9e5a" if i == bars.predicted else "#7b97b5" for i in y]
    vals = bars.values if bars.probabilities else np.abs(bars.values)
    ax.barh(y, vals, color=colors)
    ax.set_yticks(y, bars.labels, fontsize=8)
    ax.invert_yaxis()
    top_v = 1.0 if bars.probabilities else float(vals.max() or 1.0)
    ax.set_xlim(0, top_v * 1.45)
    ax.set_xticks([])
    for i, v in enumerate(bars.values):
        text = f"{100 * v:.2f} %" if bars.probabilities else fmt_value(float(v))
        notes = [n for n, on in (("prediction", i == bars.predicted), ("true label", i == bars.label)) if on]
        ax.text(
            abs(v) + 0.02 * top_v,
            i,
            text + (f"  {', '.join(notes)}" if notes else ""),
            va="center",
            fontsize=7.5,
            fontweight="bold" if i == bars.predicted else "normal",
        )
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title("probability of each class" if bars.probabilities else "output of each unit", fontsize=8.5, loc="left")


def _header(r: Report) -> tuple[float, Draw]:
    def draw(cv: _Canvas, top: float) -> None:
        cv.text(
            _LEFT,
            top,
            f"Inside the network \u201c{r.model_name}\u201d: one input image and what every layer "
            "makes of it (fastconv.nn.explain)",
            fontsize=12,
            fontweight="bold",
        )
        g = r.input_grid
        mosaic = _mosaic(g)
        _draw_grid(cv, g, mosaic, _LEFT, top + 0.4, _fit(mosaic, 2.2, 2.2), _caption(g, 2.2))
        facts = []
        if r.label is not None:
            facts.append(f"true label: {r.label}")
        if r.predicted is not None:
            conf = f" ({100 * r.confidence:.1f} %)" if r.confidence is not None else ""
            facts.append(f"predicted class: {r.predicted}{conf}")
            if r.label is not None:
                facts.append("right" if r.label == r.predicted else "wrong")
        cv.text(3.2, top + 0.7, "\n".join(facts), fontsize=12, linespacing=1.6)
        if r.bars is not None:
            _draw_bars(cv, r.bars, 6.6, top + 0.6, 5.6, 2.0)

    return 3.0, draw


def _panel(p: Panel) -> tuple[float, Draw]:
    about = textwrap.fill(p.about, 175)
    head = 0.28 + 0.16 * (about.count("\n") + 1) + 0.1
    mosaics = [_mosaic(g) for g in p.grids]
    widths = [_W - 2 * _LEFT - 0.7] if len(mosaics) == 1 else [8.2, _W - 2 * _LEFT - 8.2 - 1.4]
    sizes = [_fit(m, w, _MAX_ROW) for m, w in zip(mosaics, widths)]
    captions = [_caption(g, w) for g, w in zip(p.grids, widths)]
    row = max(_caption_height(c) + max(s[1], 0.6) for c, s in zip(captions, sizes)) + 0.1 if sizes else 0.0
    bars_h = 0.22 * len(p.bars.values) + 0.3 if p.bars is not None else 0.0
    shape = "(" + ", ".join("None" if s is None else str(s) for s in p.shape) + ")"

    def draw(cv: _Canvas, top: float) -> None:
        cv.text(
            _LEFT,
            top,
            f"{p.index}. {p.name} ({p.type_name})   output {shape}   {p.params:,} parameters",
            fontsize=10,
            fontweight="bold",
        )
        cv.text(_LEFT, top + 0.26, about, fontsize=8, color="#222222", linespacing=1.3)
        x = _LEFT
        for g, m, size, w, c in zip(p.grids, mosaics, sizes, widths, captions):
            _draw_grid(cv, g, m, x, top + head, size, c)
            x += w + 0.9
        if p.bars is not None:
            _draw_bars(cv, p.bars, _LEFT + 0.3, top + head + 0.2, 6.0, bars_h - 0.3)

    return head + row + bars_h + _GAP, draw


def render_png(r: Report) -> bytes:
    """The figure as PNG bytes (1280 pixels wide)."""
    _, Figure = _matplotlib()
    rows = [_header(r)] + [_panel(p) for p in r.panels]
    height = sum(h for h, _ in rows) + 0.4
    fig = Figure(figsize=(_W, height), dpi=_DPI, facecolor="white")
    cv = _Canvas(fig, height)
    top = 0.2
    for h, draw in rows:
        draw(cv, top)
        top += h
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, facecolor="white")
    return buf.getvalue()
