"""The one timing harness: interleaved, rotated, medians (the report, the GPU script).

Every implementation of one group (one op on one shape) is warmed up first
(its first call, JIT included, is timed separately), then sampled round-robin:
repeat r times impl A, impl B, ... so that a load spike on this shared machine
hits all of them alike.  A sample is ``loops`` consecutive calls, each on the
next input set (sets are cycled so caches do not flatter small shapes), long
enough (``min_sample_s``) for the clock; the figure is the median per-call time
over samples.  Garbage collection is off while sampling.

Each sample is preceded by one untimed call of the same implementation (on the
previous input set) when another implementation ran just before it: a
library's idle OpenMP workers keep spinning for a while after its call and
take the cores from the next library's first call (measured: whichever
fastconv implementation followed torch in the round took 5-8 % longer on
(8,64,56,56) d2, whichever it was).  The settling call gives every library,
torch included, the cores it would have if it ran alone.

``clock`` is ``time.perf_counter`` (wall time, what a caller waits) or, for a
loaded machine measured at one thread, ``time.process_time`` (CPU time: a
descheduled process does not count, parallel scaling is not measured).
``interleaved_medians`` is the same round-robin for callables that need no
input rotation (the GPU script, whose ``run`` brackets each call with device
synchronisations).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Timing:
    """Per-call seconds of one implementation in one group."""

    first_call_s: float
    warm_call_s: float
    loops: int = 1
    samples: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples)

    @property
    def min_s(self) -> float:
        return min(self.samples)


Clock = Callable[[], float]


def warm_up(call: Callable[[int], Any], nbuf: int, clock: Clock = time.perf_counter) -> tuple[Any, float, float]:
    """(result of the first call on set 0, first-call seconds, warm-call seconds)."""
    t0 = clock()
    out = call(0)
    first = clock() - t0
    t0 = clock()
    call(1 % nbuf)
    warm = clock() - t0
    return out, first, warm


def interleave(calls: dict[str, Callable[[int], Any]], timings: dict[str, Timing], nbuf: int, repeats: int,
               min_sample_s: float = 0.02, max_seconds: float = 20.0, min_repeats: int = 3,
               clock: Clock = time.perf_counter, settle: bool = True) -> None:
    """Fill ``timings[name].samples`` for every call, round-robin.

    Slow implementations get fewer repeats (at least ``min_repeats`` or
    ``repeats`` if smaller) so that one implementation spends at most about
    ``max_seconds`` in sampling.  ``settle``: one untimed call before a sample
    that follows another implementation's (see the module docstring).
    """
    plan: dict[str, int] = {}
    for name, t in timings.items():
        t.loops = max(1, min(1000, math.ceil(min_sample_s / max(t.warm_call_s, 1e-9))))
        per_sample = t.loops * t.warm_call_s
        plan[name] = max(min(min_repeats, repeats), min(repeats, int(max_seconds / max(per_sample, 1e-9))))
    pos = {name: 0 for name in calls}
    last = None
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(max(plan.values(), default=0)):
            for name, call in calls.items():
                if r >= plan[name]:
                    continue
                t = timings[name]
                i = pos[name]
                if settle and last is not None and last != name:
                    call((i - 1) % nbuf)
                last = name
                t0 = clock()
                for _ in range(t.loops):
                    call(i)
                    i = (i + 1) % nbuf
                t.samples.append((clock() - t0) / t.loops)
                pos[name] = i
    finally:
        if gc_was:
            gc.enable()


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_medians(fns: dict[str, Callable[[], Any]], reps: int,
                        run: Callable[[Callable[[], Any]], float] = _timed, warmups: int = 2) -> dict[str, float]:
    """Median seconds of each callable over ``reps`` round-robin repetitions,
    after ``warmups`` calls each (JIT compilation, autotuning); ``run(fn)``
    times one call (default: wall time)."""
    for fn in fns.values():
        for _ in range(warmups):
            run(fn)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(run(fn))
    return {k: statistics.median(v) for k, v in times.items()}
