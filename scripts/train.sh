#!/usr/bin/env bash
# Set up and train the Keras-book MNIST convnet on the CPU (1 epoch by default;
# pass --epochs 5 for the 99 % run). Arguments go to examples/train_mnist.py.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
"$PY" examples/train_mnist.py "$@"
