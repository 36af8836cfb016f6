"""One rank of tests/api/test_torch_ddp.py (run as a script, not collected by pytest).

    python tests/api/ddp_worker.py RANK WORLD STORE_FILE OUT_NPZ STEPS RANK_BATCH LIMIT SEED

Joins a gloo process group through a file store (no port to race for), wraps
examples/ddp_mnist.py's model in DistributedDataParallel and trains STEPS SGD steps on
this rank's DistributedSampler shard of the first LIMIT MNIST images, recording the
flattened weights after every step and the indices of every batch in OUT_NPZ.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

LR = 0.05


def load_example():
    spec = importlib.util.spec_from_file_location("ddp_mnist", ROOT / "examples" / "ddp_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flat_weights(model):
    """All parameters as one float32 NumPy vector (a copy)."""
    import torch

    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()


def main(argv: list[str]) -> int:
    import numpy as np
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rank, world, store, out, steps, rank_batch, limit, seed = argv
    rank, world, steps, rank_batch, limit, seed = map(int, (rank, world, steps, rank_batch, limit, seed))
    ex = load_example()
    ex.set_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    x, y, _, _ = ex.load_mnist(limit)
    model = DistributedDataParallel(ex.build_model(seed))
    optimizer = ex.make_optimizer("sgd", model.parameters(), LR)
    batches = ex.epoch_batches(len(y), rank, world, rank_batch, 0, seed)[:steps]
    weights = []
    for idx in batches:
        ex.train_step(model, optimizer, x[idx], y[idx])
        weights.append(flat_weights(model.module))
    np.savez(out, weights=np.stack(weights), batches=np.array(batches))
    dist.barrier()  # tear gloo down together (see examples/ddp_mnist.py)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
