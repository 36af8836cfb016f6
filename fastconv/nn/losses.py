"""Cross-entropy losses, with softmax fused in a stable log-sum-exp form.

Both losses are the batch mean.  ``from_logits=True`` (what ``Sequential`` uses
when the last layer has ``activation="softmax"``: it then hands the loss the
pre-softmax values) computes ``log_softmax = z - max(z) - log(sum(exp(z - max(z))))``
and the gradient ``(softmax(z) - onehot) / N`` -- no division by a probability,
no overflow for large logits.  ``from_logits=False`` takes probabilities as
Keras does: rescale rows to sum 1, clip to [1e-7, 1 - 1e-7], then -sum(t log p).

Arrays are (N, classes) on the host.  On CUDA the logits form (the fused softmax) runs on
the device instead (``_ops_cuda.xent_logits``, the same formulas; ``nn/training.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CategoricalCrossentropy", "SparseCategoricalCrossentropy", "get", "log_softmax", "softmax", "NAMES"]

EPSILON = 1e-7  # Keras' backend epsilon for the probability path


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log(softmax(z)), computed from the shifted logits (never overflows)."""
    s = z - z.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class _Crossentropy:
    sparse = False
    name = ""

    def __init__(self, from_logits: bool = False):
        self.from_logits = bool(from_logits)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "from_logits": self.from_logits}

    def targets(self, y: np.ndarray, classes: int, dtype: Any) -> np.ndarray:
        """The one-hot (N, classes) target matrix for y (validated by the model)."""
        if not self.sparse:
            return np.asarray(y, dtype=dtype)
        t = np.zeros((len(y), classes), dtype=dtype)
        t[np.arange(len(y)), np.asarray(y, dtype=np.int64)] = 1
        return t

    def __call__(self, out: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """(mean loss, gradient w.r.t. ``out``) for outputs (N, classes) and targets y."""
        n, classes = out.shape
        t = self.targets(y, classes, out.dtype)
        if self.from_logits:
            logp = log_softmax(out)
            loss = -float(np.einsum("ij,ij->", t, logp)) / n
            # softmax - t, scaled by the row sums of t (1 for proper one-hot/label targets)
            grad = (np.exp(logp) * t.sum(axis=1, keepdims=True) - t) / n
            return loss, grad.astype(out.dtype, copy=False)
        s = out.sum(axis=1, keepdims=True)
        q = out / s
        qc = np.clip(q, EPSILON, 1 - EPSILON)
        loss = -float(np.einsum("ij,ij->", t, np.log(qc))) / n
        # d/dq of -sum t log(clip(q)); the clip passes no gradient outside its range
        gq = np.where((q > EPSILON) & (q < 1 - EPSILON), -t / qc, 0.0) / n
        grad = (gq - (gq * q).sum(axis=1, keepdims=True)) / s  # through q = out / sum(out)
        return loss, grad.astype(out.dtype, copy=False)


class CategoricalCrossentropy(_Crossentropy):
    """Targets are one-hot (N, classes) rows (``to_categorical``)."""

    name = "categorical_crossentropy"


class SparseCategoricalCrossentropy(_Crossentropy):
    """Targets are integer class labels (N,)."""

    name = "sparse_categorical_crossentropy"
    sparse = True


_ALL = {c.name: c for c in (CategoricalCrossentropy, SparseCategoricalCrossentropy)}
NAMES = tuple(_ALL)


def get(loss: Any) -> _Crossentropy:
    if isinstance(loss, _Crossentropy):
        return loss
    if isinstance(loss, str) and loss in _ALL:
        return _ALL[loss]()
    raise ValueError(f"unknown loss {loss!r}; expected one of {NAMES} or a loss object from fastconv.nn.losses")


def from_config(cfg: dict[str, Any]) -> _Crossentropy:
    return _ALL[cfg["name"]](from_logits=cfg.get("from_logits", False))
