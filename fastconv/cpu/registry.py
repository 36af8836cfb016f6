"""Which module runs a plan: (algorithm, layout) -> the CPU algorithm module.

Its own small module so that an algorithm that delegates to another (the
sub-pixel grad_x runs direct forwards, Winograd's grad_weight runs a direct
backward) finds it without importing the backend package that imports it.
The modules are imported on first use so ``import fastconv`` stays cheap.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ALGORITHM_MODULES = {
    ("direct", "standard"): "conv_direct",
    ("direct", "batch-inner"): "conv_direct_bi",
    ("im2col", "column"): "conv_im2col",
    ("winograd", "transformed"): "conv_winograd",
}


def algorithm_module(algorithm: str, layout: str) -> ModuleType:
    """The module whose ``forward``/``backward`` run a plan of this algorithm and layout."""
    return importlib.import_module(f"{__package__}.{ALGORITHM_MODULES[algorithm, layout]}")
