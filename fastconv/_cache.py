"""Where the CPU kernels' Numba cache lives, and the one-line notice of a cold compile.

Numba caches a ``cache=True`` kernel next to its source (``__pycache__``) when
that directory is writable.  For an installed fastconv (a read-only or
system-wide site-packages) this module puts the cache in the user cache
directory instead, and lets it be chosen explicitly.  In order of precedence:

1. ``NUMBA_CACHE_DIR`` (Numba's own setting, read when numba is first imported);
2. ``FASTCONV_CACHE_DIR``: kernels go to ``$FASTCONV_CACHE_DIR/numba``;
3. the package's ``__pycache__`` when it is writable (a source checkout);
4. ``$XDG_CACHE_HOME/fastconv/numba``, else ``~/.cache/fastconv/numba``.

``install()`` must run before the first kernel module is imported (Numba picks a
kernel's cache directory when its decorator runs); ``fastconv.cpu`` calls it.
It also registers a listener on Numba's compile events that prints, once per
process, that a first run is compiling (``FASTCONV_COMPILE_NOTICE=0`` silences it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["PACKAGE_DIR", "install", "kernel_cache_dir", "user_cache_dir"]

PACKAGE_DIR = Path(__file__).resolve().parent

# Rough cold-compile cost of the kernels behind one new operation on a 2-core
# machine; only used to set expectations in the notice.
_NOTICE_SECONDS = 10

_installed = False


def user_cache_dir() -> Path:
    """fastconv's user cache root: ``$FASTCONV_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/fastconv``, else ``~/.cache/fastconv`` (the MNIST loader uses the same rule)."""
    explicit = os.environ.get("FASTCONV_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fastconv"


def kernel_cache_dir() -> Path:
    """The directory under which fastconv's kernels are cached when the package
    directory cannot (or, with ``FASTCONV_CACHE_DIR``, must not) be used."""
    return user_cache_dir() / "numba"


def _is_fastconv_source(py_file: str) -> bool:
    try:
        return Path(py_file).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, ValueError):
        return False


def _locator_classes() -> tuple[type, type]:
    """Two Numba cache locators for fastconv's own kernels: the explicit
    ``FASTCONV_CACHE_DIR`` one (tried before the in-tree ``__pycache__``) and
    the user-cache fallback (tried after it)."""
    from numba.core import caching

    class _FastconvCacheLocator(_numba_attr(caching, "UserWideCacheLocator")):  # type: ignore[misc]
        """Numba's user-wide locator, rooted at ``kernel_cache_dir()``."""

        def __init__(self, py_func: Any, py_file: str) -> None:
            super().__init__(py_func, py_file)
            self._cache_path = str(kernel_cache_dir() / self.get_suitable_cache_subpath(py_file))

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Any:
            if not _is_fastconv_source(py_file):
                return None
            return super().from_function(py_func, py_file)

    class _ExplicitFastconvCacheLocator(_FastconvCacheLocator):
        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Any:
            if not os.environ.get("FASTCONV_CACHE_DIR"):
                return None
            return super().from_function(py_func, py_file)

    return _ExplicitFastconvCacheLocator, _FastconvCacheLocator


def _numba_attr(module: Any, name: str) -> Any:
    """``module.name``, or ``module._name`` as Numba spelled it before 0.61."""
    found = getattr(module, name, None)
    return found if found is not None else getattr(module, "_" + name)


def _install_locators() -> None:
    """Insert the locators into Numba's list: after ``NUMBA_CACHE_DIR``'s, around the in-tree one."""
    from numba.core import caching

    classes = _numba_attr(caching, "CacheImpl")._locator_classes
    explicit, fallback = _locator_classes()
    in_tree = classes.index(_numba_attr(caching, "InTreeCacheLocator"))
    classes.insert(in_tree + 1, fallback)
    classes.insert(in_tree, explicit)


def _float_dtype(args: Any) -> str | None:
    """The first floating-point array dtype among a compile's argument types, if any."""
    for a in args or ():
        dtype = getattr(a, "dtype", None)
        if getattr(a, "ndim", 0) > 0 and str(dtype) in ("float32", "float64"):
            return str(dtype)
    return None


def _notice_enabled() -> bool:
    return os.environ.get("FASTCONV_COMPILE_NOTICE", "1") not in ("0", "")


def _install_notice() -> None:
    """Print once per process, before the first fastconv kernel compiles (a cache
    miss: Numba fires "numba:compile" only when it did not load from the cache)."""
    from numba.core import event

    class _ColdCompileNotice(event.Listener):
        done = False

        def on_start(self, ev: Any) -> None:
            if self.done or not _notice_enabled():
                return
            disp = ev.data.get("dispatcher")
            module = getattr(getattr(disp, "py_func", None), "__module__", "") or ""
            if not module.startswith("fastconv."):
                return
            self.done = True
            dtype = _float_dtype(ev.data.get("args"))
            what = f" for {dtype}" if dtype else ""
            print(
                f"fastconv: compiling CPU kernels{what} — first run only, ~{_NOTICE_SECONDS} s "
                f"per new operation (cached afterwards; `python -m fastconv.warmup` compiles all ahead)",
                file=sys.stderr,
                flush=True,
            )

        def on_end(self, ev: Any) -> None:
            pass

    event.register("numba:compile", _ColdCompileNotice())


def install() -> None:
    """Set up the kernel cache locations and the cold-compile notice (idempotent).

    Relies on two Numba internals (the locator list and the compile event); if a
    future Numba changes them, fastconv falls back to Numba's default caching."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        _install_locators()
    except (ImportError, AttributeError, ValueError):
        pass
    try:
        _install_notice()
    except (ImportError, AttributeError):
        pass
