#!/usr/bin/env bash
# Set up (only what training needs) and train the Keras-book MNIST convnet on the CPU
# (1 epoch by default; pass --epochs 5 for the 99 % run). Arguments go to
# examples/train_mnist.py.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh train
"$PY" examples/train_mnist.py "$@"
