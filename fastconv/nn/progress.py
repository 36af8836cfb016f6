"""What ``fit`` prints while it trains.

verbose=1 on a terminal: one line per epoch redrawn with carriage returns
(counter, bar, ETA, running loss and accuracy), ending with the epoch's
metrics; verbose=1 when stdout is not a terminal (CI logs, pipes, files) and
verbose=2: only the end-of-epoch line; verbose=0: nothing.  Every line is
kept within the terminal width and within 80 columns (an unknown or zero
width counts as 80), so nothing wraps or gets cut.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "MAX_WIDTH"]

MAX_WIDTH = 80
_SHORT = {"accuracy": "acc", "val_accuracy": "val_acc"}
_REDRAW_SECONDS = 0.1


def line_width(stream: TextIO) -> int:
    """Columns a line may use: the terminal's width (unknown -> 80), at most 80, minus
    one so a full line never makes the terminal wrap."""
    cols = 0
    try:
        cols = shutil.get_terminal_size((0, 0)).columns if stream.isatty() else 0
    except (AttributeError, ValueError, OSError):
        cols = 0
    return min(cols if cols > 0 else MAX_WIDTH, MAX_WIDTH) - 1


def metrics_text(logs: dict[str, float], digits: int = 4) -> str:
    return " ".join(f"{_SHORT.get(k, k)} {v:.{digits}f}" for k, v in logs.items())


def fit_line(head: str, logs: dict[str, float], width: int) -> str:
    """``head`` plus the metrics, with fewer digits (then cut) if the line would be too wide."""
    for digits in (4, 3, 2):
        line = f"{head} {metrics_text(logs, digits)}".rstrip()
        if len(line) <= width:
            return line
    return line[:width]


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, s = divmod(int(seconds + 0.5), 60)
    return f"{minutes}m{s:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """One epoch's progress output (see the module docstring)."""

    def __init__(self, verbose: int, epoch: int, epochs: int, steps: int, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stdout
        interactive = _isatty(self.stream)
        self.live = verbose == 1 and interactive
        self.final = verbose == 2 or (verbose == 1 and not interactive)
        self.width = line_width(self.stream)
        self.steps = steps
        self.prefix = f"Epoch {epoch}/{epochs}"
        self.t0 = time.perf_counter()
        self._last = -1.0
        self._drawn = False

    def update(self, step: int, logs: dict[str, float]) -> None:
        """After step ``step`` (from 1) of the epoch; ``logs`` holds the running means."""
        if not self.live:
            return
        now = time.perf_counter()
        if now - self._last < _REDRAW_SECONDS and step < self.steps:
            return
        self._last = now
        elapsed = now - self.t0
        eta = elapsed / step * (self.steps - step)
        counter = f"{step:>{len(str(self.steps))}}/{self.steps}"
        eta_text = f"ETA {_duration(eta)}"
        room = self.width - len(self.prefix) - len(counter) - len(eta_text) - len(metrics_text(logs)) - 6
        bar = f" [{_bar(step / self.steps, min(30, room))}]" if room >= 5 else ""
        line = fit_line(f"{self.prefix} {counter}{bar} {eta_text}", logs, self.width)
        self._write("\r" + line.ljust(self.width))
        self._drawn = True

    def close(self, logs: dict[str, float], seconds: float) -> None:
        """The end-of-epoch line (replaces the live line)."""
        if not (self.live or self.final):
            return
        line = fit_line(f"{self.prefix} {_duration(seconds)}", logs, self.width)
        self._write(("\r" + line.ljust(self.width) if self._drawn else line) + "\n")

    def interrupt(self) -> None:
        """End a live line before another message is printed."""
        if self._drawn:
            self._write("\n")
            self._drawn = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _bar(fraction: float, cells: int) -> str:
    done = int(fraction * cells)
    if done >= cells:
        return "=" * cells
    return "=" * done + ">" + "." * (cells - done - 1)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
