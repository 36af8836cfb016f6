"""The machine a result was measured on: CPU model (it names the result files),
flags, cores, memory, versions, BLAS, git commit, load average."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in have]
    except OSError:
        pass
    return []


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def cpu_slug(model: str, ncpu: int) -> str:
    """The file-name form of a CPU model and its usable CPU count, e.g.
    "AMD EPYC 9B14 96-Core Processor", 2 -> "amd-epyc-9b14-2vcpu"."""
    s = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b|\b\d+-core\b|@.*$", " ", model.lower())
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-") or platform.machine().lower()
    return f"{s}-{ncpu}vcpu"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except Exception:
        return None


def machine_info(threads: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    cpu = cpu_model()
    affinity = usable_cpus()
    blas = None
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]  # type: ignore[index]
    except Exception:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_slug": cpu_slug(cpu, affinity),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "memory_gib": _mem_gib(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: version(m) for m in ("numpy", "numba", "scipy", "torch", "numba-cuda", "cupy")},
        "blas": blas,
        "fastconv_commit": _git_commit(),
        "threads": threads,
        "env": {v: os.environ.get(v) for v in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }

