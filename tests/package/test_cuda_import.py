"""CPU-side checks of the CUDA backend (run in the ordinary, non-simulator pytest
process): importing fastconv costs nothing CUDA-related, a machine without a
GPU says so clearly, and -- where libNVVM is installed -- every CUDA kernel
compiles to PTX for sm_90 (H100) in float32 and float64 (this catches GPU-only
typing errors the simulator cannot see; skipped where libNVVM is absent), and
``benchmarks/cuda_static.py --quick`` writes its table.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_import_fastconv_does_not_import_cuda():
    r = _run(
        "import sys, fastconv\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda', 'fastconv.cuda', 'cuda')))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_gpu_is_reported_clearly():
    r = _run(
        "import numpy as np, fastconv, fastconv.cuda as fc\n"
        "from numba import cuda\n"
        "if cuda.is_available():\n"
        "    print('HAS-GPU'); raise SystemExit(0)\n"
        "assert fc.is_available() is False\n"
        "try:\n"
        "    fc.require_available()\n"
        "except RuntimeError as e:\n"
        "    print('REQUIRE:', e)\n"
        "class FakeGpuArray:\n"
        "    __cuda_array_interface__ = {'shape': (1, 1, 3, 3), 'typestr': '<f4', 'data': (0, False), 'version': 3}\n"
        "try:\n"
        "    fastconv.conv2d(FakeGpuArray(), FakeGpuArray())\n"
        "except RuntimeError as e:\n"
        "    print('CONV:', e)\n"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    if "HAS-GPU" in r.stdout:
        pytest.skip("a real GPU is present")
    assert "REQUIRE: fastconv got CUDA arrays but cannot run CUDA kernels: numba.cuda.is_available() is False" in r.stdout
    assert "NUMBA_ENABLE_CUDASIM=1" in r.stdout
    assert "CONV: fastconv got CUDA arrays but cannot run CUDA kernels" in r.stdout


def test_missing_numba_cuda_is_reported(monkeypatch):
    import fastconv.cuda as fc

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba_cuda" else real(name, *a))
    assert fc.is_available() is False
    assert fc.unavailable_reason().startswith("numba-cuda is not installed")  # public, used by fastconv.nn
    with pytest.raises(RuntimeError, match=r"numba-cuda is not installed \(pip install"):
        fc.require_available()


def test_kernels_compile_for_sm90():
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        pytest.skip("PTX compilation is not available in the simulator")
    pytest.importorskip("numba_cuda", reason="numba-cuda not installed")
    from numba import cuda

    try:
        cuda.compile_ptx(lambda a: None, "void(float32[::1])", cc=(9, 0))
    except Exception as exc:  # no libNVVM / NVRTC on this machine
        pytest.skip(f"no CUDA compiler libraries (libNVVM/NVRTC) here: {type(exc).__name__}")
    from fastconv.cuda import _ptx

    for name, kernel, argtypes, _ in _ptx.kernels():
        assert ".entry" in _ptx.compile_ptx(kernel, argtypes, (9, 0)), name


def test_static_evidence_script_runs_quick(tmp_path):
    """benchmarks/cuda_static.py --quick: PTX, ptxas -v, occupancy, FMA share and waves (no GPU)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        pytest.skip("PTX compilation is not available in the simulator")
    pytest.importorskip("numba_cuda", reason="numba-cuda not installed")
    out = tmp_path / "static.md"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda_static.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, check=False,
                       env={k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"})
    if r.returncode == 2 and "cannot compile PTX here" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stdout + r.stderr
    text = out.read_text()
    assert "| conv_igemm_kernel[float32] | 128 |" in text
    assert "| mnist-13 3x3: x[128, 32, 13, 13] w[64, 32, 3, 3] | forward igemm | (121, 1, 8) | 968 | 8 |" in text
    if "no ptxas" not in text:  # ptxas present: registers and occupancy were measured
        assert "| registers |" in text
