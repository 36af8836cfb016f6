"""Result files: every benchmark writes through ``write_atomic`` (a reader never
sees half a file; an interrupted run leaves the previous file)."""

from __future__ import annotations

from pathlib import Path

from fastconv.nn.persistence import atomic_write


def write_atomic(path: Path, data: str | bytes) -> None:
    """``data`` (text as UTF-8) into ``path``, its directory created if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(str(path)) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
