"""fastconv CUDA kernels vs cuDNN (through torch, TF32 off) and CuPy's cuDNN
bindings where present: conv2d forward/backward and max-pool forward/backward
at the foundation issue's 3x3 shapes scaled to batch 128, plus the device's
measured copy bandwidth for the memory-bound pooling, and one MNIST training
epoch (the Keras-book convnet, batch 64, synthetic data) of fastconv.nn on the
GPU against the same model in torch on the GPU.  The GPU day's commands are in
docs/cuda.md.

    python benchmarks/gpu_bench.py                 # writes benchmarks/results/gpu-<device>.{md,json}
    python benchmarks/gpu_bench.py --quick         # small shapes, 3 reps: checks the script, measures little
    python benchmarks/gpu_bench.py --reps 50 --out /tmp/gb
    python benchmarks/gpu_bench.py --no-mnist      # kernels only

Without a CUDA GPU (or under NUMBA_ENABLE_CUDASIM) it prints why and exits 0.

Method: every implementation gets the same CUDA tensors (fastconv takes torch
tensors zero-copy through __cuda_array_interface__); numba allocates fastconv's
outputs from torch's caching allocator (an EMM plugin below), as cuDNN's do, so
neither side pays cudaMalloc per call.  Each timed call is bracketed by
device synchronisations and timed with perf_counter (what a Python caller
sees, launch overheads included); after warm-up (JIT compilation, cuDNN
autotune) the median of --reps runs is reported, fastconv and the peers
interleaved rep by rep.  Outputs are checked against torch once per shape.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import shapes  # noqa: E402
from benchmarks._timing import interleaved_medians  # noqa: E402

# The goals (benchmarks, not asserts).
GOAL_FWD, GOAL_BWD, GOAL_POOL = 0.50, 0.33, 0.70


@dataclass(frozen=True)
class Conv:
    name: str
    x: tuple[int, int, int, int]
    k: int
    r: int = 3
    stride: int = 1
    padding: int = 0
    groups: int = 1


@dataclass(frozen=True)
class Pool:
    name: str
    x: tuple[int, int, int, int]
    kernel: int
    stride: int
    padding: int = 0


# The shapes live in the one shape table, benchmarks/shapes.py.
CONVS = [Conv(c.name, c.x_shape, c.k, c.r, c.stride, c.padding, c.groups) for c in shapes.GPU_CONV_SHAPES]
POOLS = [Pool(p.name, p.x_shape, p.kernel, p.stride, p.padding) for p in shapes.GPU_POOL_SHAPES]
QUICK_CONVS = [Conv(c.name, c.x_shape, c.k, c.r, c.stride, c.padding, c.groups) for c in shapes.QUICK_GPU_CONV_SHAPES]
QUICK_POOLS = [Pool(p.name, p.x_shape, p.kernel, p.stride, p.padding) for p in shapes.QUICK_GPU_POOL_SHAPES]


def why_no_gpu() -> str | None:
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "NUMBA_ENABLE_CUDASIM is set: simulator timings mean nothing"
    try:
        import torch
    except ImportError:
        return "torch is not installed (it supplies cuDNN, the baseline): pip install torch"
    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    import fastconv.cuda

    reason = fastconv.cuda.unavailable_reason()
    return None if reason is None else f"fastconv.cuda unavailable: {reason}"


def use_torch_allocator() -> None:
    """Route numba's device allocations through torch's caching allocator (EMM plugin)."""
    import torch
    from numba import cuda
    from numba.cuda.cudadrv.driver import GetIpcHandleMixin, HostOnlyCUDAMemoryManager, MemoryInfo, MemoryPointer

    class TorchMemoryManager(GetIpcHandleMixin, HostOnlyCUDAMemoryManager):
        def initialize(self) -> None:
            super().initialize()
            torch.cuda.init()

        def memalloc(self, size: int) -> Any:
            ptr = torch.cuda.caching_allocator_alloc(max(int(size), 1))
            return MemoryPointer(self.context, ctypes.c_void_p(ptr), size,
                                 finalizer=lambda: torch.cuda.caching_allocator_delete(ptr))

        def get_memory_info(self) -> Any:
            free, total = torch.cuda.mem_get_info()
            return MemoryInfo(free=free, total=total)

        def reset(self) -> None:
            super().reset()
            torch.cuda.empty_cache()

        def defer_cleanup(self) -> Any:
            return contextlib.nullcontext()

        @property
        def interface_version(self) -> int:
            return 1

    cuda.set_memory_manager(TorchMemoryManager)


def timer(torch: Any) -> Callable[[Callable[[], Any]], float]:
    def run(fn: Callable[[], Any]) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    return run


def measure(fns: dict[str, Callable[[], Any]], reps: int, run: Callable[[Callable[[], Any]], float]) -> dict[str, float]:
    """Medians after two warm-up calls each (JIT compile, cuDNN algorithm choice), interleaved."""
    return interleaved_medians(fns, reps, run, warmups=2)


def copy_bandwidth(torch: Any, reps: int, run: Callable[[Callable[[], Any]], float]) -> float:
    """Device-to-device copy GB/s (read + write bytes) on a 1 GiB buffer."""
    a = torch.empty(2**28, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    t = measure({"copy": lambda: b.copy_(a)}, reps, run)["copy"]
    return 2 * a.numel() * 4 / t / 1e9


def cupy_fns() -> dict[str, Any] | None:
    try:
        import cupy
        from cupy import cudnn  # needs CuPy's cuDNN support
    except Exception:
        return None
    return {"cupy": cupy, "cudnn": cudnn}


def bench_conv(c: Conv, torch: Any, reps: int, run: Any, cp: Any) -> list[dict[str, Any]]:
    import fastconv
    from fastconv._params import conv2d_params

    F = torch.nn.functional
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(c.x, device="cuda", generator=g)
    w = torch.randn((c.k, c.x[1] // c.groups, c.r, c.r), device="cuda", generator=g) / (c.x[1] * c.r * c.r) ** 0.5
    b = torch.randn((c.k,), device="cuda", generator=g)
    p = conv2d_params(tuple(x.shape), tuple(w.shape), (c.k,), c.stride, c.padding, 1, c.groups)
    gy = torch.randn(p.y_shape, device="cuda", generator=g)
    st, pd = [c.stride] * 2, [c.padding] * 2

    fwd: dict[str, Callable[[], Any]] = {"cudnn (torch)": lambda: F.conv2d(x, w, b, c.stride, c.padding, 1, c.groups)}
    bwd: dict[str, Callable[[], Any]] = {"cudnn (torch)": lambda: torch.ops.aten.convolution_backward(
        gy, x, w, [c.k], st, pd, [1, 1], False, [0, 0], c.groups, [True, True, True])}
    for alg in ("im2col", "direct"):
        fwd[f"fastconv {alg}"] = lambda alg=alg: fastconv.conv2d(x, w, b, c.stride, c.padding, 1, c.groups, algorithm=alg)
        bwd[f"fastconv {alg}"] = lambda alg=alg: fastconv.conv2d_backward(
            gy, x, w, c.stride, c.padding, 1, c.groups, algorithm=alg)
    if cp is not None:
        cupy, cudnn = cp["cupy"], cp["cudnn"]
        cx, cw, cb = (cupy.asarray(t) for t in (x, w, b))
        cy = cupy.empty(p.y_shape, dtype=cupy.float32)
        def cupy_fwd() -> Any:
            return cudnn.convolution_forward(cx, cw, cb, cy, tuple(pd), tuple(st), (1, 1), c.groups,
                                             auto_tune=True, tensor_core="never")

        try:
            cupy_fwd()
            fwd["cudnn (cupy)"] = cupy_fwd
        except Exception as exc:  # CuPy without cuDNN, or an API difference: leave it out, say why
            print(f"gpu_bench: CuPy cuDNN conv skipped: {type(exc).__name__}: {exc}")

    # Correctness once (vs cuDNN, TF32 off).
    ref_y = F.conv2d(x, w, b, c.stride, c.padding, 1, c.groups)
    ref_g = torch.ops.aten.convolution_backward(gy, x, w, [c.k], st, pd, [1, 1], False, [0, 0], c.groups,
                                                [True, True, True])
    for alg in ("im2col", "direct"):
        y = torch.as_tensor(fastconv.conv2d(x, w, b, c.stride, c.padding, 1, c.groups, algorithm=alg), device="cuda")
        err = float((y - ref_y).norm() / ref_y.norm())
        assert err < 1e-4, f"{c.name} {alg}: forward relative error {err:.2e} vs cuDNN"
        for got, want in zip(fastconv.conv2d_backward(gy, x, w, c.stride, c.padding, 1, c.groups, algorithm=alg), ref_g):
            got = torch.as_tensor(got, device="cuda")
            err = float((got - want).norm() / want.norm())
            assert err < 1e-4, f"{c.name} {alg}: backward relative error {err:.2e} vs cuDNN"

    rows = []
    for op, fns, flops, goal in (("conv2d fwd", fwd, p.flops, GOAL_FWD), ("conv2d bwd", bwd, 2 * p.flops, GOAL_BWD)):
        t = measure(fns, reps, run)
        base = t["cudnn (torch)"]
        for impl, sec in t.items():
            rows.append(dict(op=op, shape=f"{c.name}: x{list(c.x)} -> {c.k}", impl=impl, ms=sec * 1e3,
                             rate=flops / sec / 1e12, unit="TFLOP/s", vs_cudnn=base / sec,
                             goal=goal if impl.startswith("fastconv") else None))
    return rows


def bench_pool(pc: Pool, torch: Any, reps: int, run: Any, bw: float) -> list[dict[str, Any]]:
    import fastconv

    F = torch.nn.functional
    x = torch.randn(pc.x, device="cuda")
    args = (pc.kernel, pc.stride, pc.padding)
    ty, tidx = F.max_pool2d(x, *args, return_indices=True)
    y, idx = fastconv.max_pool2d(x, *args, return_indices=True)
    assert torch.equal(torch.as_tensor(y, device="cuda"), ty), f"{pc.name}: values differ from torch"
    gy = torch.randn(ty.shape, device="cuda")
    kk, ss, pp = [pc.kernel] * 2, [pc.stride] * 2, [pc.padding] * 2
    nx, ny = x.numel(), ty.numel()
    cases = [
        ("max_pool2d fwd", 4 * (nx + ny),
         {"cudnn (torch)": lambda: F.max_pool2d(x, *args), "fastconv": lambda: fastconv.max_pool2d(x, *args)}),
        ("max_pool2d fwd+idx", 4 * (nx + ny) + 8 * ny,
         {"torch": lambda: F.max_pool2d(x, *args, return_indices=True),
          "fastconv": lambda: fastconv.max_pool2d(x, *args, return_indices=True)}),
        ("max_pool2d bwd", 4 * (nx + ny) + 8 * ny,
         {"torch": lambda: torch.ops.aten.max_pool2d_with_indices_backward(gy, x, kk, ss, pp, [1, 1], False, tidx),
          "fastconv": lambda: fastconv.max_pool2d_backward(gy, tidx, tuple(x.shape))}),
    ]
    rows = []
    for op, nbytes, fns in cases:
        t = measure(fns, reps, run)
        base = next(iter(t.values()))
        for impl, sec in t.items():
            gbs = nbytes / sec / 1e9
            rows.append(dict(op=op, shape=f"{pc.name}: x{list(pc.x)}", impl=impl, ms=sec * 1e3, rate=gbs,
                             unit="GB/s", vs_cudnn=base / sec, of_copy_bw=gbs / bw,
                             goal=GOAL_POOL if impl == "fastconv" else None))
    return rows


def bench_mnist(torch: Any, images: int, epochs: int, run: Callable[[Callable[[], Any]], float]) -> list[dict[str, Any]]:
    """One training epoch of the Keras-book MNIST convnet on the GPU: fastconv.nn vs torch
    (same model, batch 64, RMSprop with Keras' defaults), epochs interleaved, medians."""
    import numpy as np

    from fastconv.nn.zoo import keras_mnist_convnet

    rng = np.random.default_rng(0)
    x = rng.random((images, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=images)
    model, optimizer, batch = keras_mnist_convnet(device="cuda", seed=0)
    model.compile(optimizer, "sparse_categorical_crossentropy")
    tnn, F = torch.nn, torch.nn.functional
    torch.manual_seed(0)
    net = tnn.Sequential(tnn.Conv2d(1, 32, 3), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(32, 64, 3), tnn.ReLU(),
                         tnn.MaxPool2d(2), tnn.Conv2d(64, 64, 3), tnn.ReLU(), tnn.Flatten(), tnn.Linear(576, 64),
                         tnn.ReLU(), tnn.Linear(64, 10)).cuda()
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).cuda()
    ty = torch.from_numpy(y).cuda()

    def torch_epoch() -> None:
        order = torch.randperm(images, device="cuda")
        for lo in range(0, images, batch):
            idx = order[lo:lo + batch]
            opt.zero_grad()
            F.cross_entropy(net(tx[idx]), ty[idx]).backward()
            opt.step()

    fns = {"fastconv.nn": lambda: model.fit(x, y, epochs=1, batch_size=batch, verbose=0, seed=0),
           "torch": torch_epoch}
    t = measure(fns, epochs, run)
    return [dict(op="MNIST epoch", shape=f"{images} images, batch {batch}", impl=impl, ms=sec * 1e3,
                 rate=images / sec / 1e3, unit="k images/s", vs_cudnn=t["torch"] / sec, goal=None)
            for impl, sec in t.items()]


def to_markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    out = [f"# fastconv CUDA vs cuDNN on {meta['device']}", "",
           f"{meta['date']}; torch {meta['torch']} (cuDNN {meta['cudnn']}, allow_tf32=False), "
           f"numba-cuda {meta['numba_cuda']}, CuPy {meta['cupy'] or 'absent'}; median of {meta['reps']} runs, "
           f"perf_counter between device synchronisations. Device copy bandwidth: {meta['copy_gbs']:.0f} GB/s.", "",
           "Goals (issue 4): conv forward >= 50 % of cuDNN fp32, backward >= 33 %, max-pool >= 70 % of copy bandwidth.",
           "", "| op | shape | implementation | ms | rate | vs cuDNN/torch | goal |", "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        goal = ""
        if r["goal"] is not None:
            got = r["of_copy_bw"] if "of_copy_bw" in r else r["vs_cudnn"]
            goal = f"{'met' if got >= r['goal'] else 'missed'} ({got:.0%} vs {r['goal']:.0%}"
            goal += " of copy bw)" if "of_copy_bw" in r else ")"
        out.append(f"| {r['op']} | {r['shape']} | {r['impl']} | {r['ms']:.3f} | {r['rate']:.2f} {r['unit']} | "
                   f"{r['vs_cudnn']:.2f}x | {goal} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="small shapes, 3 reps")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--no-mnist", action="store_true", help="leave out the MNIST training epoch")
    ap.add_argument("--mnist-images", type=int, default=60000, help="images per MNIST epoch (default 60000)")
    ap.add_argument("--no-torch-allocator", action="store_true",
                    help="keep numba's own allocator (cudaMalloc per fastconv output)")
    args = ap.parse_args(argv)
    reason = why_no_gpu()
    if reason:
        print(f"gpu_bench: skipped: {reason}")
        return 0
    import torch

    if not args.no_torch_allocator:
        use_torch_allocator()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    reps = 3 if args.quick else args.reps
    run = timer(torch)
    cp = cupy_fns()
    bw = copy_bandwidth(torch, reps, run)
    device = torch.cuda.get_device_name()
    import numba_cuda

    meta = dict(device=device, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch=torch.__version__,
                cudnn=torch.backends.cudnn.version(), numba_cuda=numba_cuda.__version__,
                cupy=None if cp is None else cp["cupy"].__version__, reps=reps, copy_gbs=bw,
                python=platform.python_version(), quick=args.quick,
                allocator="numba" if args.no_torch_allocator else "torch caching allocator")
    rows: list[dict[str, Any]] = []
    for c in QUICK_CONVS if args.quick else CONVS:
        rows += bench_conv(c, torch, reps, run, cp)
        print(to_markdown(meta, rows).splitlines()[-1], flush=True)
    for pc in QUICK_POOLS if args.quick else POOLS:
        rows += bench_pool(pc, torch, reps, run, bw)
    if not args.no_mnist:
        rows += bench_mnist(torch, 1024 if args.quick else args.mnist_images, 1 if args.quick else 3, run)
    md = to_markdown(meta, rows)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "".join(ch if ch.isalnum() else "-" for ch in device).strip("-").lower() + ("-quick" if args.quick else "")
    (args.out / f"gpu-{tag}.md").write_text(md)
    (args.out / f"gpu-{tag}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {args.out / f'gpu-{tag}.md'} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
