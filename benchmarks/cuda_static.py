"""Static evidence for the CUDA kernels on sm_90 (H100/H200), without a GPU.

    python benchmarks/cuda_static.py            # writes benchmarks/results/cuda-static-sm90.md
    python benchmarks/cuda_static.py --quick    # two kernels, two shapes (the CI test)
    python benchmarks/cuda_static.py --out /tmp/static.md

For every kernel (float32 and float64): PTX from numba-cuda's compiler for sm_90,
assembled by ``ptxas -v`` (registers per thread, stack, spills, shared memory),
the resident warps per SM those imply, and the FFMA share of the inner loop
counted on the PTX (the innermost loop that holds the most fused multiply-adds;
the count is static: both sides of a branch are counted).  For every standard
benchmark shape: the blocks, split-K and waves each launch has on a 132-SM GPU
(``fastconv.cuda._launch_plan``).

Needs numba-cuda with its CUDA compiler libraries and ``ptxas`` new enough for the
PTX version libNVVM emits: the ``nvidia-cuda-nvcc`` wheel's copy is tried first,
then ``ptxas`` on PATH.  Must not run under NUMBA_ENABLE_CUDASIM (the simulator
compiles nothing).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._files import write_atomic  # noqa: E402  (after the path set-up: a script too)

# sm_90 per-SM limits (CUDA occupancy calculator).
REGS_PER_SM, REG_UNIT, MAX_WARPS, MAX_BLOCKS, SMEM_PER_SM, SMEM_RESERVED = 65536, 256, 64, 32, 233472, 1024
QUICK_KERNELS = ("conv_igemm_kernel[float32]", "max_pool2d_forward_kernel[float32]")


@dataclass(frozen=True)
class Ptxas:
    registers: int
    stack: int
    spill_stores: int
    spill_loads: int
    smem: int


@dataclass(frozen=True)
class Loop:
    fma: int
    instructions: int
    shared_loads: int
    global_loads: int
    int64_ops: int
    outer_rest: int  # instructions of the enclosing loop outside this one (-1: none)

    @property
    def fma_share(self) -> float:
        return self.fma / max(self.instructions, 1)


def find_ptxas() -> str | None:
    """The nvidia-cuda-nvcc wheel's ptxas (matches the wheel's libNVVM), else PATH's."""
    try:
        import nvidia

        for base in nvidia.__path__:
            for cand in sorted(Path(base).glob("cu*/bin/ptxas")):
                return str(cand)
    except ImportError:
        pass
    return shutil.which("ptxas")


def run_ptxas(ptxas: str, ptx: str) -> Ptxas:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        r = subprocess.run([ptxas, "-arch=sm_90", "-v", str(src), "-o", str(Path(tmp) / "k.cubin")],
                           capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    text = r.stderr + r.stdout

    def num(pattern: str) -> int:
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0

    return Ptxas(num(r"Used (\d+) registers"), num(r"(\d+) bytes stack frame"), num(r"(\d+) bytes spill stores"),
                 num(r"(\d+) bytes spill loads"), num(r"(\d+) bytes smem"))


def resident(p: Ptxas, threads: int) -> tuple[int, int, str]:
    """(blocks, warps) resident per SM on sm_90, and the limiting resource."""
    warps = -(-threads // 32)
    per_warp = -(-max(p.registers, 1) * 32 // REG_UNIT) * REG_UNIT
    limits = {
        "registers": (REGS_PER_SM // per_warp) // warps,
        "warps": MAX_WARPS // warps,
        "blocks": MAX_BLOCKS,
        "shared memory": SMEM_PER_SM // (p.smem + SMEM_RESERVED),
    }
    what = min(limits, key=lambda k: limits[k])
    return limits[what], limits[what] * warps, what


_INSTR = re.compile(r"^\s*(@!?%p\d+\s+)?([a-z][\w.]*)")
_LABEL = re.compile(r"^(\$L__\w+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__\w+);")


def inner_loop(ptx: str, fma_op: str) -> Loop | None:
    """The innermost loop (a label and a backward branch to it) around the basic block
    with the most ``fma_op`` instructions, counted statically."""
    lines = ptx.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line))}
    loops = [(labels[m.group(1)], i) for i, line in enumerate(lines)
             if (m := _BRANCH.search(line)) and labels.get(m.group(1), i + 1) <= i]
    blocks, start = [], 0
    for i, line in enumerate(lines):
        if _LABEL.match(line) or _BRANCH.search(line):
            blocks.append((start, i))
            start = i + 1
    blocks.append((start, len(lines)))
    best = max(blocks, key=lambda b: sum(fma_op in lines[j] for j in range(*b)), default=None)
    if best is None or not any(fma_op in lines[j] for j in range(*best)):
        return None
    around = [lp for lp in loops if lp[0] <= best[0] and best[1] <= lp[1]]
    if not around:
        return None
    lo, hi = min(around, key=lambda lp: lp[1] - lp[0])
    ops = _ops(lines[lo:hi + 1])
    outer = [lp for lp in around if lp[1] - lp[0] > hi - lo]
    rest = -1
    if outer:
        olo, ohi = min(outer, key=lambda lp: lp[1] - lp[0])
        rest = len(_ops(lines[olo:ohi + 1])) - len(ops)
    return Loop(sum(op.startswith(fma_op) for op in ops), len(ops), sum(op.startswith("ld.shared") for op in ops),
                sum(op.startswith("ld.global") for op in ops),
                sum(op.endswith((".s64", ".u64", ".b64")) and not op.startswith(("ld", "st", "mov")) for op in ops),
                rest)


def _ops(lines: list[str]) -> list[str]:
    return [m.group(2) for line in lines if (m := _INSTR.match(line)) and not line.strip().startswith("//")]


def kernel_rows(names: tuple[str, ...] | None, ptxas: str | None) -> list[dict[str, Any]]:
    from fastconv.cuda import _ptx

    rows = []
    for name, kernel, argtypes, threads in _ptx.kernels():
        if names is not None and name not in names:
            continue
        ptx = _ptx.compile_ptx(kernel, argtypes, (9, 0))
        row: dict[str, Any] = dict(kernel=name, threads=threads, ptx_lines=ptx.count("\n"))
        if ptxas is not None:
            info = run_ptxas(ptxas, ptx)
            blocks, warps, limit = resident(info, threads)
            row.update(info.__dict__, blocks_per_sm=blocks, warps_per_sm=warps, limit=limit)
        loop = inner_loop(ptx, "fma.rn.f64" if "float64" in name else "fma.rn.f32")
        if loop is not None:
            row.update(loop=loop)
        rows.append(row)
        print(f"cuda_static: {name}: {row.get('registers', '?')} registers", flush=True)
    return rows


def standard_shapes(quick: bool) -> list[tuple[str, tuple[int, int, int, int], tuple[int, int, int, int], dict]]:
    """(name, x shape, weight shape, conv options): the GPU benchmark's shapes and the MNIST
    convnet's first layer (its other two are among them), batch 128."""
    if quick:
        return [("mnist-13 3x3", (128, 32, 13, 13), (64, 32, 3, 3), {}),
                ("resnet-56 3x3 pad1", (128, 64, 56, 56), (64, 64, 3, 3), dict(padding=1))]
    from benchmarks import gpu_bench

    out = [("mnist-28 3x3 (first layer)", (128, 1, 28, 28), (32, 1, 3, 3), {})]  # with gpu_bench's mnist-13, -5
    for c in gpu_bench.CONVS:
        out.append((c.name, c.x, (c.k, c.x[1] // c.groups, c.r, c.r), dict(stride=c.stride, padding=c.padding,
                                                                           groups=c.groups)))
    return out


def shape_rows(quick: bool) -> list[dict[str, Any]]:
    from fastconv._params import conv2d_params
    from fastconv.cuda import _launch_plan as lp

    rows = []
    for name, xs, ws, kw in standard_shapes(quick):
        p = conv2d_params(xs, ws, None, **kw)
        for algorithm in ("im2col", "direct"):
            for what, plan in lp.conv_launches(p, algorithm, 4).items():
                if algorithm == "direct" and what == "grad_weight":
                    continue  # the same grad_weight launch as im2col
                rows.append(dict(shape=f"{name}: x{list(xs)} w{list(ws)}", launch=f"{what} {plan.kernel}",
                                 grid=plan.grid, blocks=plan.blocks, split_k=plan.split_k, waves=plan.waves,
                                 reason=plan.reason))
    return rows


def summary(kernels: list[dict[str, Any]], shapes: list[dict[str, Any]]) -> list[str]:
    """The goals (no spills, FMA share >= 60 % in the conv inner loops, >= 2 waves) and what misses them."""
    from fastconv.cuda import _launch_plan as lp

    spills = [r["kernel"] for r in kernels if r.get("spill_stores", 0) or r.get("spill_loads", 0)]
    low = [f"{r['kernel']} ({r['loop'].fma_share:.0%})" for r in kernels
           if r["kernel"].startswith("conv_") and "loop" in r and r["loop"].fma_share < 0.6]
    short = [s for s in shapes if s["waves"] < lp.MIN_WAVES]
    return ["## Goals", "",
            f"- No spills: {'met' if not spills else 'missed by ' + ', '.join(spills)}.",
            f"- FMA share >= 60 % in the conv inner loops: {'met' if not low else 'missed by ' + ', '.join(low)}.",
            f"- >= {lp.MIN_WAVES} waves: {len(shapes) - len(short)} of {len(shapes)} launches "
            f"({sum(s['waves'] >= lp.SPLIT_BELOW for s in short)} more within 10 %, not split); the rest are layers "
            "too small for 132 SMs even split, or whose reduction is too short to split (column 'why').", ""]


def to_markdown(kernels: list[dict[str, Any]], shapes: list[dict[str, Any]], meta: dict[str, str]) -> str:
    from fastconv.cuda import _launch_plan as lp

    out = ["# CUDA kernels on sm_90: static evidence (no GPU)", "",
           f"{meta['date']}; numba-cuda {meta['numba_cuda']}, {meta['ptxas']}. Written by "
           "`python benchmarks/cuda_static.py`; nothing here was run on a GPU.", "",
           *summary(kernels, shapes), "## Kernels", "",
           "Resident blocks/warps per SM from registers, threads and shared memory against sm_90's limits "
           "(64 K registers, 64 warps, 32 blocks, 228 KiB shared memory). FFMA share: fused multiply-adds "
           "over all PTX instructions of the innermost loop that holds the most of them (static count). "
           "Outer rest: instructions of the loop around it that lie outside it (for the GEMM kernels the "
           "per-slab gathers, tables and stores; static, both sides of every branch counted).", "",
           "| kernel | threads | registers | stack B | spills (st/ld B) | smem B | blocks/SM | warps/SM | limit "
           "| inner loop: FMA / instr. | FMA share | outer rest |",
           "|---|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in kernels:
        loop = r.get("loop")
        share = (f"{loop.fma} / {loop.instructions} | {loop.fma_share:.0%} | "
                 f"{loop.outer_rest if loop.outer_rest >= 0 else '-'}") if loop else "- | - | -"
        if "registers" in r:
            out.append(f"| {r['kernel']} | {r['threads']} | {r['registers']} | {r['stack']} | "
                       f"{r['spill_stores']} / {r['spill_loads']} | {r['smem']} | {r['blocks_per_sm']} | "
                       f"{r['warps_per_sm']} | {r['limit']} | {share} |")
        else:
            out.append(f"| {r['kernel']} | {r['threads']} | ? | ? | ? | ? | ? | ? | no ptxas | {share} |")
    out += ["", f"## Launches on a {lp.SMS}-SM GPU", "",
            f"Waves = blocks / ({lp.SMS} SMs x resident blocks per SM: implicit GEMM {lp.IGEMM_BLOCKS_PER_SM}, "
            f"grad_weight {lp.WGRAD_BLOCKS_PER_SM}, direct {lp.DIRECT_BLOCKS_PER_SM}, the constants "
            "`_launch_plan` decides with).",
            f"Goal: >= {lp.MIN_WAVES} waves (near: >= {lp.SPLIT_BELOW:g}, where no split is made).", "",
            "| shape | launch | grid | blocks | split-K | waves | goal | why |", "|---|---|---|---:|---:|---:|---|---|"]
    for s in shapes:
        goal = "met" if s["waves"] >= lp.MIN_WAVES else "near" if s["waves"] >= lp.SPLIT_BELOW else "missed"
        out.append(f"| {s['shape']} | {s['launch']} | {s['grid']} | {s['blocks']} | {s['split_k']} | "
                   f"{s['waves']:.2f} | {goal} | {s['reason']} |")
    return "\n".join(out) + "\n"


def step_counts_section() -> list[str]:
    """``cuda_step_counts.py``'s table (launches, allocations and copies per MNIST training
    step), from a subprocess: it is counted in the simulator, which this process must not use."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    script = str(Path(__file__).with_name("cuda_step_counts.py"))
    run = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, check=False)
    body = run.stdout.strip() if run.returncode == 0 else f"(not counted: {run.stderr.strip().splitlines()[-1:]})"
    return ["## Host round trips per MNIST training step", "",
            "Keras-book convnet, batch 64, on this launch plan; counted in numba-cuda's simulator by "
            "`benchmarks/cuda_step_counts.py` (every kernel configuration, `cuda.device_array`/`to_device` "
            "and host copy).", "", body, ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two kernels and two shapes (checks the script)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cuda-static-sm90.md")
    args = ap.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        print("cuda_static: unset NUMBA_ENABLE_CUDASIM: the simulator compiles no PTX", file=sys.stderr)
        return 2
    try:
        import numba_cuda
        from numba import cuda

        cuda.compile_ptx(lambda a: None, "void(float32[::1])", cc=(9, 0))
    except Exception as exc:  # noqa: BLE001 - any missing piece of the compiler stack
        print(f"cuda_static: cannot compile PTX here: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    ptxas = find_ptxas()
    version = "no ptxas found"
    if ptxas is not None:
        v = subprocess.run([ptxas, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        version = f"ptxas {v.splitlines()[-1] if v else '?'}"
    try:
        kernels = kernel_rows(QUICK_KERNELS if args.quick else None, ptxas)
    except RuntimeError as exc:
        print(f"cuda_static: {exc} ({version})", file=sys.stderr)
        return 2
    meta = dict(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), numba_cuda=numba_cuda.__version__,
                ptxas=version)
    text = to_markdown(kernels, shape_rows(args.quick), meta)
    if not args.quick:
        text += "\n" + "\n".join(step_counts_section())
    write_atomic(args.out, text)
    print(f"cuda_static: wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
