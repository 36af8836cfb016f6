#!/usr/bin/env bash
# Set up (training requirements plus the test extras) and run the whole test suite:
# the CPU tests, then the CUDA tests in numba-cuda's simulator in their own process
# (the simulator must be switched on before numba is imported). Extra arguments go
# to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test
# Lint, format and type checks over the package first: cheap, and they fail fast.
"$PY" -m ruff check fastconv
"$PY" -m ruff format --check fastconv
"$PY" -m mypy fastconv
"$PY" -m pytest tests --ignore=tests/cuda -q "$@"
NUMBA_ENABLE_CUDASIM=1 "$PY" -m pytest tests/cuda -q "$@"
