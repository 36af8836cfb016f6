#!/usr/bin/env bash
# Set up (training requirements plus the test extras) and run the whole test suite:
# the CPU tests, then the CUDA tests in numba-cuda's simulator in their own process
# (the simulator must be switched on before numba is imported). Extra arguments go
# to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh test
"$PY" -m pytest tests --ignore=tests/cuda -q "$@"
NUMBA_ENABLE_CUDASIM=1 "$PY" -m pytest tests/cuda -q "$@"
