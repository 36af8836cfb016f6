"""The explain page's building blocks: colour scales, PNG encoding and the figure model
(grids, bars, panels, the report) shared by ``explain`` and its HTML and PNG renderers."""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------------------------- colour and PNG

_NAN_RGB = (230, 230, 230)
_CMAPS = {
    # anchor colours, evenly spaced from 0 to 1 (matplotlib's maps of the same names)
    "viridis": ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#fde725"],
    "RdBu_r": [
        "#053061",
        "#2166ac",
        "#4393c3",
        "#92c5de",
        "#d1e5f0",
        "#f7f7f7",
        "#fddbc7",
        "#f4a582",
        "#d6604d",
        "#b2182b",
        "#67001f",
    ],
    "gray": ["#000000", "#ffffff"],
}


def _anchors(cmap: str) -> np.ndarray:
    return np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in _CMAPS[cmap]], dtype=np.float64)


@dataclass(frozen=True)
class Scale:
    """A colour scale: values lo..hi mapped through ``cmap``; NaN is light grey."""

    lo: float
    hi: float
    cmap: str

    def rgb(self, a: np.ndarray) -> np.ndarray:
        """2-D values -> (h, w, 3) uint8."""
        anchors = _anchors(self.cmap)
        t = np.clip((np.asarray(a, dtype=np.float64) - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        bad = ~np.isfinite(a)
        pos = np.where(bad, 0.0, t) * (len(anchors) - 1)
        i0 = np.minimum(pos.astype(np.int64), len(anchors) - 2)
        frac = (pos - i0)[..., None]
        out = anchors[i0] * (1 - frac) + anchors[i0 + 1] * frac
        out[bad] = _NAN_RGB
        return np.rint(out).astype(np.uint8)

    def css_gradient(self) -> str:
        return "linear-gradient(to right, " + ", ".join(_CMAPS[self.cmap]) + ")"

    def ticks(self) -> list[float]:
        return [self.lo, 0.0, self.hi] if self.cmap == "RdBu_r" else [self.lo, self.hi]


def scale_for(values: np.ndarray) -> Scale:
    """viridis from min to max for values >= 0, else RdBu_r symmetric around 0."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Scale(0.0, 1.0, "viridis")
    lo, hi = float(v.min()), float(v.max())
    if lo >= 0:
        return Scale(lo, hi if hi > lo else lo + 1.0, "viridis")
    m = max(-lo, hi)
    return Scale(-m, m, "RdBu_r")


def png_bytes(rgb: np.ndarray) -> bytes:
    """(h, w, 3) uint8 -> a PNG file (8-bit RGB, no filtering, zlib)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # each row: filter type 0, then the pixels
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def _zoom(a: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1) if k > 1 else a


# ----------------------------------------------------------------------------- what the page shows


@dataclass
class Grid:
    """Same-sized small pictures sharing one colour scale (a layer's maps, its filters)."""

    title: str
    caption: str
    images: list[np.ndarray]
    labels: list[str]
    scale: Scale
    zoom: int
    kind: str = "outputs"  # or "filters", "summary": how the page lays the grid out


@dataclass
class Bars:
    """A 1-D output as a labelled bar chart (probabilities after a softmax)."""

    values: np.ndarray
    labels: list[str]
    probabilities: bool
    predicted: int
    label: int | None


@dataclass
class Panel:
    """One layer: what it is, what it computes, and pictures of its output and weights."""

    index: int
    name: str
    type_name: str
    shape: tuple[int | None, ...]
    params: int
    about: str
    grids: list[Grid] = field(default_factory=list)
    bars: Bars | None = None


@dataclass
class Report:
    model_name: str
    input_grid: Grid
    label: int | None
    predicted: int | None
    confidence: float | None
    panels: list[Panel]
    bars: Bars | None
    total_params: int


def data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def picture(grid: Grid, image: np.ndarray) -> np.ndarray:
    """One picture of a grid as zoomed RGB pixels."""
    return _zoom(grid.scale.rgb(image), grid.zoom)


def fmt_value(v: float) -> str:
    return "0" if v == 0 else f"{v:.3g}"
