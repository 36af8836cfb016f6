"""Where an installed fastconv caches its kernels (``fastconv._cache``).

A "read-only install" is simulated by a copy of the package whose directories
cannot hold a ``__pycache__``: each one holds a regular *file* of that name (so
even root, who may write anywhere, cannot create the directory), and the tree
is made read-only.  Everything runs in subprocesses: the cache locations are
fixed when numba and the kernel modules are first imported.

The wheel itself (build, install into a fresh venv, run from outside the source
tree) is checked by ``scripts/check_install.sh`` in CI, since it needs pip.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Prints the cache directory of every CPU kernel (a numba dispatcher with cache=True)
# in every importable fastconv module (the CUDA ones excluded: numba-cuda caches its own way).
_LIST_CACHE_DIRS = r"""
import importlib, json, pkgutil, sys
import fastconv
from numba.core.registry import CPUDispatcher
paths = {}
for info in pkgutil.walk_packages(fastconv.__path__, "fastconv."):
    if "cuda" in info.name or info.name.endswith(("torch", "warmup")):
        continue
    try:
        mod = importlib.import_module(info.name)
    except ImportError:
        continue
    for name, obj in vars(mod).items():
        cache = getattr(obj, "_cache", None)
        if isinstance(obj, CPUDispatcher) and hasattr(cache, "_cache_path"):
            paths[f"{info.name}.{name}"] = cache._cache_path
print(json.dumps({"package": fastconv.__file__, "paths": paths}))
"""

# One cheap public call (max_pool2d_backward with hand-made indices: two small kernels);
# prints which fastconv kernels compiled (numba fires "numba:compile" only when a kernel
# was not loaded from the cache).
_ONE_CALL = r"""
import json
import numpy as np
from numba.core import event
compiled = []
class Count(event.Listener):
    def on_start(self, ev):
        compiled.append(ev.data["dispatcher"].py_func.__module__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Count())
import fastconv
idx = np.array([[[[0, 2], [8, 10]]]], dtype=np.int64)
gx = fastconv.max_pool2d_backward(np.ones((1, 1, 2, 2), dtype=np.float32), idx, (1, 1, 4, 4))
assert gx.sum() == 4.0
print(json.dumps([m for m in compiled if m.startswith("fastconv.")]))
"""


def _read_only_copy(dst: Path) -> Path:
    """A copy of the package that cannot cache next to its sources; returns the sys.path entry."""
    site = dst / "site-packages"
    shutil.copytree(ROOT / "fastconv", site / "fastconv",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for d in [p for p in (site / "fastconv").rglob("*") if p.is_dir()] + [site / "fastconv"]:
        (d / "__pycache__").write_text("not a directory")
    for p in (site / "fastconv").rglob("*"):
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return site


def _make_writable(tree: Path) -> None:
    for p in [tree, *tree.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def read_only_site(tmp_path):
    site = _read_only_copy(tmp_path / "ro")
    yield site
    _make_writable(site)


def _env(tmp_path: Path, pythonpath: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "FASTCONV_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(pythonpath), PYTHONDONTWRITEBYTECODE="1",
               OPENBLAS_NUM_THREADS="1", FASTCONV_COMPILE_NOTICE="0")
    env.update(extra)
    return env


def _python(code: str, env: dict[str, str], cwd: Path, stderr: list[str] | None = None) -> object:
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=False,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    if stderr is not None:
        stderr.append(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cache_dirs(env: dict[str, str], cwd: Path) -> dict[str, str]:
    out = _python(_LIST_CACHE_DIRS, env, cwd)
    assert out["paths"], "found no cached CPU kernels at all"
    return out


def test_read_only_install_caches_in_xdg_cache_home(tmp_path, read_only_site):
    out = _cache_dirs(_env(tmp_path, read_only_site, XDG_CACHE_HOME=str(tmp_path / "xdg")), tmp_path)
    assert out["package"].startswith(str(read_only_site))
    want = tmp_path / "xdg" / "fastconv" / "numba"
    bad = {k: v for k, v in out["paths"].items() if not v.startswith(str(want))}
    assert not bad, f"kernels not cached under {want}: {bad}"


def test_read_only_install_caches_in_home_cache_without_xdg(tmp_path, read_only_site):
    out = _cache_dirs(_env(tmp_path, read_only_site), tmp_path)
    want = tmp_path / "home" / ".cache" / "fastconv" / "numba"
    assert all(v.startswith(str(want)) for v in out["paths"].values()), out["paths"]


def test_fastconv_cache_dir_overrides_even_a_writable_checkout(tmp_path):
    out = _cache_dirs(_env(tmp_path, ROOT, FASTCONV_CACHE_DIR=str(tmp_path / "fc")), tmp_path)
    assert out["package"].startswith(str(ROOT))
    assert all(v.startswith(str(tmp_path / "fc" / "numba")) for v in out["paths"].values()), out["paths"]


def test_numba_cache_dir_overrides_fastconv_cache_dir(tmp_path, read_only_site):
    env = _env(tmp_path, read_only_site, FASTCONV_CACHE_DIR=str(tmp_path / "fc"),
               NUMBA_CACHE_DIR=str(tmp_path / "nb"))
    out = _cache_dirs(env, tmp_path)
    assert all(v.startswith(str(tmp_path / "nb")) for v in out["paths"].values()), out["paths"]


def test_writable_checkout_keeps_the_in_tree_cache(tmp_path):
    out = _cache_dirs(_env(tmp_path, ROOT), tmp_path)
    for name, path in out["paths"].items():
        assert Path(path).parent.resolve().is_relative_to(ROOT / "fastconv"), (name, path)
        assert Path(path).name == "__pycache__", (name, path)


def test_read_only_install_compiles_once_then_loads_from_the_user_cache(tmp_path, read_only_site):
    """Also the cold-compile notice: once on stderr in the run that compiles, never after."""
    env = _env(tmp_path, read_only_site, XDG_CACHE_HOME=str(tmp_path / "xdg"), FASTCONV_COMPILE_NOTICE="1")
    err: list[str] = []
    first = _python(_ONE_CALL, env, tmp_path, err)
    assert first, "the first run compiled nothing: was the cache not empty?"
    assert list((tmp_path / "xdg" / "fastconv" / "numba").rglob("*.nbi")), "no cache index written"
    notices = [line for line in err[0].splitlines() if line.startswith("fastconv: compiling CPU kernels")]
    assert len(notices) == 1, err[0]
    assert "— first run only" in notices[0] and "python -m fastconv.warmup" in notices[0]
    assert _python(_ONE_CALL, env, tmp_path, err) == [], "the second run compiled again instead of loading"
    assert "fastconv: compiling" not in err[1], err[1]


def test_cold_notice_can_be_silenced(tmp_path):
    env = _env(tmp_path, ROOT, NUMBA_CACHE_DIR=str(tmp_path / "nb"), FASTCONV_COMPILE_NOTICE="0")
    err: list[str] = []
    assert _python(_ONE_CALL, env, tmp_path, err), "nothing compiled in an empty cache"
    assert "fastconv: compiling" not in err[0], err[0]
