"""The Keras-book MNIST convnet (fastconv.nn) against the same model in torch:
one training step (batch 64) and one epoch-equivalent.

The epoch-equivalent is ``MNIST_CASE.steps`` (20) steps of batch 64 through
one ``fit`` call (torch: the usual training loop), 1,280 images; multiply its
time by 60000 / 1280 = 46.9 for a full 60k-image epoch (``extra_info`` holds
the factor).  Data are synthetic MNIST-shaped arrays: speed does not depend on
pixel values.  The one check: three warm-up steps on a fixed batch must lower
its loss.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks.mnist_runner import MNIST_IMPLS, MnistRunner, mnist_data
from benchmarks.shapes import MNIST_CASE, TINY_MNIST_CASE, mnist_step_flops


@pytest.fixture(scope="module")
def mnist(full):
    case = MNIST_CASE if full else TINY_MNIST_CASE
    return case, mnist_data(case, np.random.default_rng(0))


def _runner(name, mnist):
    reason = MnistRunner.skip_reason(name)
    if reason:
        pytest.skip(reason)
    case, (x, y) = mnist
    runner = MnistRunner(name, case, x, y)
    runner.check_learns()  # warm-up (JIT) + the one check
    return case, runner


@pytest.mark.parametrize("impl", MNIST_IMPLS)
def test_mnist_train_step(benchmark, impl, mnist):
    case, runner = _runner(impl, mnist)
    benchmark.group = f"mnist train step, batch {case.batch}"
    benchmark.extra_info.update(images=case.batch, flops=mnist_step_flops(case.batch))
    order = itertools.cycle(range(case.steps))
    benchmark(lambda: runner.step(next(order)))


@pytest.mark.parametrize("impl", MNIST_IMPLS)
def test_mnist_epoch_equivalent(benchmark, impl, mnist):
    case, runner = _runner(impl, mnist)
    runner.epoch_chunk()  # warm-up of the fit path itself
    images = case.batch * case.steps
    benchmark.group = f"mnist epoch-equivalent, {case.label} (x{case.epoch_images / images:.1f} = 60k images)"
    benchmark.extra_info.update(images=images, epoch_scale=case.epoch_images / images,
                                flops=mnist_step_flops(case.batch) * case.steps)
    benchmark.pedantic(runner.epoch_chunk, rounds=3, iterations=1, warmup_rounds=0)
