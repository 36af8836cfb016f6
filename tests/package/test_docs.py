"""Every Python code block of README.md and docs/*.md runs, so none can rot.

Convention (also stated in the README's "Documentation" section): a fenced block
whose info string starts with ``python`` is run, each in a fresh interpreter, in
an empty temporary directory, with this checkout first on ``sys.path``.  Words
after ``python`` in the info string adjust that:

- ``no-run``: shown, never run (a fragment, or something that needs a GPU or a
  download);
- ``requires=MOD1,MOD2``: skipped, with the reason, when a module is missing
  (e.g. ``requires=torch``);
- ``timeout=SECONDS``: the limit for a long block (default 600 s, which covers
  compiling its kernels on a cold cache).

Blocks in other languages (``bash``, ``text``, ...) are never run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEFAULT_TIMEOUT = 600

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
                    re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    options: tuple[str, ...]
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def option(self, key: str) -> str | None:
        for opt in self.options:
            if opt.startswith(key + "="):
                return opt.split("=", 1)[1]
        return None


def python_blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` whose info string's first word is ``python``."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in _FENCE.finditer(text):
        words = m.group("info").split()
        if not words or words[0].lower() not in ("python", "py", "python3"):
            continue
        line = text.count("\n", 0, m.start()) + 1
        blocks.append(Block(path, line, tuple(words[1:]), m.group("body")))
    return blocks


ALL_BLOCKS = [b for path in DOCS if path.is_file() for b in python_blocks(path)]


def test_convention_parser(tmp_path):
    text = ("intro\n```python\nprint(1)\n```\n```python no-run\nboom()\n```\n"
            "```bash\nls\n```\n```python requires=torch timeout=30\nimport torch\n```\n")
    p = tmp_path / "sample.md"
    p.write_text(text)
    blocks = python_blocks(p)
    assert [b.code for b in blocks] == ["print(1)\n", "boom()\n", "import torch\n"]
    assert blocks[1].options == ("no-run",)
    assert blocks[2].option("requires") == "torch" and blocks[2].option("timeout") == "30"
    assert [b.line for b in blocks] == [2, 5, 11]


def test_the_readme_has_runnable_blocks():
    runnable = [b for b in ALL_BLOCKS if b.path.name == "README.md" and "no-run" not in b.options]
    assert len(runnable) >= 2, "README.md lost its Quick start or its fastconv.nn example"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_code_block_runs(block: Block, tmp_path):
    if "no-run" in block.options:
        pytest.skip("marked no-run")
    missing = [m for m in (block.option("requires") or "").split(",") if m and importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, not installed")
    timeout = int(block.option("timeout") or DEFAULT_TIMEOUT)
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", FASTCONV_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONPATH=str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                          timeout=timeout)
    assert proc.returncode == 0, f"{block.id} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
