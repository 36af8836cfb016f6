"""The explain page in a real browser: headless Chromium renders it at 1280x800,
the screenshot must not be blank, every layer panel must be in the rendered DOM,
no two pieces of text or pictures may overlap and nothing may stick out sideways.

The layout check is a small script appended to a *copy* of the page for this
test only (the page itself has no script): it measures every text and picture
box after layout and writes the result into the DOM that ``--dump-dom`` prints.

Skipped, with the reason, only when Chromium is not installed; ``.ci/run``
installs it and sets FASTCONV_REQUIRE_BROWSER=1, which turns that skip into a
failure, so in CI this test always runs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fastconv.nn import explain, zoo

WINDOW = (1280, 800)
TIMEOUT_S = 240  # generous: a hung browser must fail the test, never hang the suite

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--hide-scrollbars", "--mute-audio"]

LAYOUT_CHECK = """<script>
(function () {
  var sel = "h1, .sub, h2 > span, .about, .gtitle, .caption, .legend > span:not(.ramp), .ticks > span, " +
            "figcaption, img, .chart > span, .track, td, th, .facts p";
  var els = Array.prototype.slice.call(document.querySelectorAll(sel));
  var boxes = els.map(function (e) { return e.getBoundingClientRect(); });
  var name = function (e) { return e.tagName + "." + e.className + ":" + (e.textContent || e.alt || "").slice(0, 30); };
  var bad = [];
  for (var i = 0; i < els.length; i++) {
    for (var j = i + 1; j < els.length; j++) {
      if (els[i].contains(els[j]) || els[j].contains(els[i])) continue;
      var a = boxes[i], b = boxes[j];
      var w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      var h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 1 && h > 1) bad.push(name(els[i]) + " / " + name(els[j]));
    }
  }
  var out = document.createElement("div");
  out.id = "layout-check";
  out.setAttribute("data-boxes", els.length);
  out.setAttribute("data-overlaps", bad.length);
  out.setAttribute("data-examples", bad.slice(0, 5).join(" | "));
  out.setAttribute("data-scroll-width", document.documentElement.scrollWidth);
  out.setAttribute("data-scroll-height", document.documentElement.scrollHeight);
  document.body.appendChild(out);
})();
</script>"""


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render(page: Path, shot: Path, profile: Path, window: tuple[int, int] = WINDOW) -> str:
    """Screenshot ``page`` into ``shot`` and return the rendered DOM (one Chromium run, bounded in time)."""
    cmd = [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
           f"--screenshot={shot}", "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # Chromium's helper processes share its new session
        proc.communicate()
        pytest.fail(f"headless Chromium did not finish within {TIMEOUT_S} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}: {err[-2000:]}"
    assert shot.is_file(), f"chromium wrote no screenshot: {err[-2000:]}"
    return out


@pytest.fixture(scope="module")
def chromium():
    binary = chromium_binary()
    if binary is None:
        reason = "headless Chromium is not installed (apt-get install chromium); .ci/run installs it"
        if os.environ.get("FASTCONV_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(reason + ", and FASTCONV_REQUIRE_BROWSER is set")
        pytest.skip(reason)
    return binary


def seven() -> np.ndarray:
    """A 28x28 handwritten-looking 7, pixel values in [0, 1] like x_test / 255."""
    img = np.zeros((28, 28), dtype=np.float32)
    img[6:9, 6:22] = 1.0
    for r in range(9, 24):
        c = 21 - (r - 9) * 10 // 15
        img[r, c - 1:c + 2] = 1.0
    return img


def test_page_renders_in_chromium(chromium, tmp_path):
    model, _, _ = zoo.keras_mnist_convnet(seed=0)
    page = tmp_path / "explain.html"
    explain(model, seven(), page, label=7)
    text = page.read_text(encoding="utf-8")
    checked = tmp_path / "explain-checked.html"
    checked.write_text(text.replace("</body>", LAYOUT_CHECK + "</body>"), encoding="utf-8")

    dom = render(checked, tmp_path / "shot.png", tmp_path / "profile")

    Image = pytest.importorskip("PIL.Image", reason="Pillow (matplotlib's dependency) decodes the screenshot")

    with Image.open(tmp_path / "shot.png") as im:
        assert im.size == WINDOW
        rgb = np.asarray(im.convert("RGB")).astype(np.uint32)
    pixels = ((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]).ravel()  # 1-D unique: fast
    colours, counts = np.unique(pixels, return_counts=True)
    assert len(colours) > 200, f"screenshot looks blank: {len(colours)} distinct colours"
    assert counts.max() < 0.8 * len(pixels), "screenshot is mostly one colour"

    names = re.findall(r'<section class="card layer" id="layer-\d+" data-layer="([^"]*)"', dom)
    assert names == [layer.name for layer in model.layers]
    assert dom.count("<img ") == text.count("<img ") > 100
    check = re.search(r'<div id="layout-check" ([^>]*)>', dom)
    assert check, "the layout check did not run"
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', check.group(1)))
    assert int(attrs["boxes"]) > 300
    assert attrs["overlaps"] == "0", f"overlapping boxes: {attrs['examples']}"
    assert int(attrs["scroll-width"]) <= WINDOW[0], "the page is wider than a 1280-pixel window"
