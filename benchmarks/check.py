"""The one correctness check of every benchmarked result against the float64
reference: a fast wrong kernel must not win."""

from __future__ import annotations

from typing import Any

import numpy as np

CHECK_TOL = 1e-4  # float32 vs float64, norm-wise: loose enough for any summation order, far below a wrong kernel's ~1


def rel_err(y: Any, ref: Any) -> float:
    y = np.asarray(y, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if y.shape != ref.shape:
        raise AssertionError(f"shape {y.shape} != reference shape {ref.shape}")
    den = float(np.linalg.norm(ref))
    num = float(np.linalg.norm(y - ref))  # NaN anywhere -> NaN -> fails the check
    return num / den if den > 0 else num


def expected(op: str, case: Any, inputs: tuple[np.ndarray, ...]) -> Any:
    """The float64 reference result of ``op`` on one input set."""
    from benchmarks.impls.numpy_ref import fns

    return fns()[op](case, *inputs)


def check(op: str, result: Any, ref: Any, tol: float = CHECK_TOL) -> float:
    """Largest relative error of a host result against the reference; raises
    AssertionError when above ``tol`` (pooling indices must match exactly)."""
    if op == "pool_fwd_idx":
        (y, idx), (ry, ridx) = result, ref
        if np.asarray(idx).dtype != np.int64 or not np.array_equal(idx, ridx):
            raise AssertionError("pooling indices differ from the reference")
        result, ref = y, ry
    outs = result if isinstance(result, tuple) else (result,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    if len(outs) != len(refs):
        raise AssertionError(f"{len(outs)} outputs, reference has {len(refs)}")
    err = max(rel_err(o, r) for o, r in zip(outs, refs))
    if not err <= tol:
        raise AssertionError(f"{op}: relative error {err:.3e} > {tol:.0e} against the float64 reference")
    return err

