"""The explain report as one self-contained HTML page (see ``explain.py``).

Nothing is loaded from elsewhere: no script, no web font, no style sheet link;
every picture is a PNG data URI.  Every piece of text that comes from the
model or the caller goes through ``html.escape``.  The layout is CSS flex/grid
that wraps, sized to read at a 1280-pixel-wide window.
"""

from __future__ import annotations

import html

import numpy as np

from ._explain_figure import (
    Bars,
    Grid,
    Panel,
    Report,
    Scale,
    data_uri,
    fmt_value,
    picture,
)

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:#1c2430;
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:14px 20px 40px}
h1{font-size:22px;margin:0 0 2px}
.sub{color:#4a5562;margin:0 0 8px}
.card{background:#fff;border:1px solid #d9dde3;border-radius:8px;padding:12px 16px;margin:12px 0}
.top{display:flex;flex-wrap:wrap;gap:16px 32px;align-items:flex-start}
.facts{display:flex;flex-wrap:wrap;gap:4px 28px}
.facts p,.verdict{margin:2px 0}
.big{font-size:26px;font-weight:700}
.ok{color:#1f7a3f}.bad{color:#b3261e}
table{border-collapse:collapse;font-size:12px}
th,td{text-align:left;padding:2px 14px 2px 0;white-space:nowrap}
th{border-bottom:1px solid #ccd2d9}
.mono,.shape{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace}
h2{font-size:17px;margin:0;display:flex;flex-wrap:wrap;gap:2px 12px;align-items:baseline}
h2 .type{color:#4a5562;font-weight:600}
h2 .shape{font-size:14px;font-weight:400}
h2 .params{font-size:13px;font-weight:400;color:#4a5562}
.about{margin:4px 0 6px;max-width:115ch}
.grids{display:flex;flex-wrap:wrap;gap:8px 40px;align-items:flex-start}
.grid{flex:0 1 auto;max-width:100%;min-width:0}
.grid.outputs{flex:1 1 560px}
.grid.summary{flex:0 1 340px}
.gtitle{font-weight:600;margin:6px 0 0}
.caption{color:#4a5562;font-size:13px;margin:0 0 4px;max-width:100ch}
.legend{display:flex;align-items:flex-start;gap:10px;font-size:12px;margin:2px 0 6px;color:#333}
.ramp{display:inline-flex;flex-direction:column;width:200px}
.ramp .bar{height:12px;border:1px solid #8a939e}
.ticks{display:flex;justify-content:space-between}
.maps{display:flex;flex-wrap:wrap;gap:6px;max-width:100%}
figure{margin:0;display:flex;flex-direction:column;align-items:center}
figure img{display:block;image-rendering:pixelated;border:1px solid #c4cad1;max-width:100%;height:auto}
figcaption{font-size:10px;line-height:1.3;color:#5b6570}
.chart{display:grid;grid-template-columns:max-content 200px max-content max-content;gap:3px 10px;
 align-items:center;font-size:13px}
.track{height:14px;background:#e6e9ed;border-radius:2px;overflow:hidden}
.fill{height:100%;background:#7b97b5}
.track.pred .fill{background:#2f9e5a}
span.pred{font-weight:700}
.note{color:#4a5562;font-size:12px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _legend(scale: Scale, pictures: int) -> str:
    ticks = "".join(f"<span>{_e(fmt_value(t))}</span>" for t in scale.ticks())
    notes = [f"one colour scale for all {pictures} pictures"] if pictures > 1 else []
    if scale.cmap == "RdBu_r":
        notes.append("white is 0, blue negative, red positive")
    note = f"<span>{_e('; '.join(notes))}</span>" if notes else ""
    return (
        f'<div class="legend"><span class="ramp"><span class="bar" style="background:{scale.css_gradient()}">'
        f'</span><span class="ticks">{ticks}</span></span>{note}</div>'
    )


def _figure(grid: Grid, image: np.ndarray, label: str) -> str:
    rgb = picture(grid, image)
    h, w = rgb.shape[:2]
    alt = f"{grid.title} {label}".strip()
    cap = f"<figcaption>{_e(label)}</figcaption>" if label else ""
    return f'<figure><img src="{data_uri(rgb)}" width="{w}" height="{h}" alt="{_e(alt)}">{cap}</figure>'


def _grid(grid: Grid) -> str:
    figures = "".join(_figure(grid, img, lab) for img, lab in zip(grid.images, grid.labels))
    return (
        f'<div class="grid {_e(grid.kind)}"><p class="gtitle">{_e(grid.title)}</p>'
        f'<p class="caption">{_e(grid.caption)}</p>{_legend(grid.scale, len(grid.images))}'
        f'<div class="maps">{figures}</div></div>'
    )


def _chart(bars: Bars) -> str:
    rows = []
    top = float(np.max(np.abs(bars.values))) or 1.0
    for i, (v, lab) in enumerate(zip(bars.values, bars.labels)):
        width = 100.0 * (min(max(v, 0.0), 1.0) if bars.probabilities else abs(v) / top)
        value = f"{100 * v:.2f} %" if bars.probabilities else fmt_value(float(v))
        notes = [n for n, on in (("prediction", i == bars.predicted), ("true label", i == bars.label)) if on]
        pred = " pred" if i == bars.predicted else ""
        rows.append(
            f'<span class="cls{pred}">{_e(lab)}</span><div class="track{pred}"><div class="fill" '
            f'style="width:{width:.2f}%"></div></div><span class="value{pred}">{_e(value)}</span>'
            f'<span class="note">{_e(", ".join(notes))}</span>'
        )
    what = "probability of each class" if bars.probabilities else "output of each unit"
    return f'<div class="bars"><p class="gtitle">{_e(what)}</p><div class="chart">{"".join(rows)}</div></div>'


def _panel(p: Panel) -> str:
    shape = "(" + ", ".join("None" if s is None else str(s) for s in p.shape) + ")"
    grids = "".join(_grid(g) for g in p.grids)
    chart = _chart(p.bars) if p.bars is not None else ""
    return (
        f'<section class="card layer" id="layer-{p.index}" data-layer="{_e(p.name)}" '
        f'data-type="{_e(p.type_name)}"><h2><span>{p.index}. {_e(p.name)}</span>'
        f'<span class="type">{_e(p.type_name)}</span><span class="shape">output {_e(shape)}</span>'
        f'<span class="params">{p.params:,} parameters</span></h2>'
        f'<p class="about">{_e(p.about)}</p><div class="grids">{grids}{chart}</div></section>'
    )


def _facts(r: Report) -> str:
    cells = []
    if r.label is not None:
        cells.append(f'<div><p>true label</p><p class="big">{_e(r.label)}</p></div>')
    if r.predicted is not None:
        conf = f" ({100 * r.confidence:.1f} %)" if r.confidence is not None else ""
        cells.append(f'<div><p>predicted class</p><p class="big">{_e(r.predicted)}{_e(conf)}</p></div>')
    verdict = ""
    if r.label is not None and r.predicted is not None:
        right = r.label == r.predicted
        verdict = (
            f'<p class="verdict {"ok" if right else "bad"}">{"right" if right else "wrong"}: '
            f"the network says {_e(r.predicted)}, the label is {_e(r.label)}</p>"
        )
    return f'<div class="facts">{"".join(cells)}</div>{verdict}'


def _summary_table(r: Report) -> str:
    rows = "".join(
        f'<tr><td><a href="#layer-{p.index}">{p.index}. {_e(p.name)}</a> ({_e(p.type_name)})</td>'
        f'<td class="mono">{_e(str(p.shape))}</td><td>{p.params:,}</td></tr>'
        for p in r.panels
    )
    return (
        f"<table><tr><th>Layer (type)</th><th>Output shape</th><th>Param #</th></tr>{rows}"
        f"<tr><td>Total</td><td></td><td>{r.total_params:,}</td></tr></table>"
    )


def render_html(r: Report) -> str:
    """The whole page as a string."""
    g = r.input_grid
    inputs = "".join(_figure(g, img, lab) for img, lab in zip(g.images, g.labels))
    chart = _chart(r.bars) if r.bars is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Inside {_e(r.model_name)} (fastconv)</title>
<style>{_CSS}</style></head>
<body><main>
<h1>Inside the network &ldquo;{_e(r.model_name)}&rdquo;</h1>
<p class="sub">One input image and what every layer makes of it, in order. Made by fastconv.nn.explain.</p>
<section class="card top" id="input" data-layer="input">
<div><p class="gtitle">Input image ({_e(g.caption)})</p>{_legend(g.scale, len(g.images))}
<div class="maps">{inputs}</div></div>
<div class="result">{_facts(r)}{chart}</div>
<div><p class="gtitle">Layers</p>{_summary_table(r)}</div>
</section>
{"".join(_panel(p) for p in r.panels)}
</main></body></html>
"""
