"""fit's progress output: within 80 columns at any terminal width, rendered when the
width is unknown, one line per epoch (no carriage returns) when stdout is not a terminal."""

from __future__ import annotations

import io
import os
import re

import pytest

from fastconv.nn import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


LONG_LOGS = {"loss": 12345.678901, "accuracy": 0.987654, "val_loss": 23456.789012, "val_accuracy": 0.912345}


def _lines(text):
    """What a terminal shows: every \\r- or \\n-separated piece is one (re)drawn line."""
    return [piece for piece in re.split(r"[\r\n]", text) if piece]


def _run(stream, verbose=1, epochs=100, steps=938, logs=LONG_LOGS):
    bar = progress.Progress(verbose, epochs, epochs, steps, stream=stream)
    for step in (1, steps // 2, steps):
        bar._last = -1.0  # draw every update here (the real loop redraws at most 10 times a second)
        bar.update(step, {"loss": logs["loss"], "accuracy": logs["accuracy"]})
    bar.close(logs, 1234.5)
    return stream.getvalue()


@pytest.mark.parametrize("columns", [200, 120, 80, 60, 0])
def test_lines_fit_the_terminal_and_80_columns(monkeypatch, columns):
    monkeypatch.setattr(progress.shutil, "get_terminal_size", lambda fallback: os.terminal_size((columns, 24)))
    out = _run(Terminal())
    limit = min(columns or 80, 80) - 1
    lines = _lines(out)
    assert lines and all(len(line) <= limit for line in lines), [len(line) for line in lines]
    assert "\r" in out and out.endswith("\n")
    assert lines[-1].startswith("Epoch 100/100 20m35s loss ")
    assert "val_acc" in lines[-1] or columns < 80  # narrower terminals: fewer digits, then cut
    assert any("938/938" in line for line in lines)
    if columns >= 80:
        assert any("[" in line and "=" in line for line in lines)  # a bar when there is room for one


def test_unknown_width_still_renders(monkeypatch):
    def unknown(fallback):
        raise OSError("no terminal size")

    monkeypatch.setattr(progress.shutil, "get_terminal_size", unknown)
    lines = _lines(_run(Terminal(), logs={"loss": 0.5, "accuracy": 0.75, "val_loss": 0.25, "val_accuracy": 0.875}))
    assert lines[-1].rstrip() == "Epoch 100/100 20m35s loss 0.5000 acc 0.7500 val_loss 0.2500 val_acc 0.8750"
    assert all(0 < len(line) <= 79 for line in lines)


@pytest.mark.parametrize("verbose", [1, 2])
def test_not_a_terminal_prints_one_line_per_epoch(verbose):
    out = _run(io.StringIO(), verbose=verbose, epochs=3, steps=5, logs={"loss": 0.5, "accuracy": 0.75})
    assert out == "Epoch 3/3 20m35s loss 0.5000 acc 0.7500\n"


def test_quiet_prints_nothing():
    assert _run(Terminal(), verbose=0) == ""


def test_short_durations():
    assert [progress._duration(s) for s in (0.04, 9.94, 12.4, 61, 3725)] == ["0.0s", "9.9s", "12s", "1m01s", "1h02m"]
