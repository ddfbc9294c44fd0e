"""Metrics of a trained model on the test rows, shared by every backend.

>>> import numpy as np
>>> m = binary_metrics(y_true=np.array([0, 0, 1, 1]), scores=np.array([0.1, 0.4, 0.35, 0.8]))
>>> round(m.auc, 2), m.accuracy
(0.75, 0.75)
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score, roc_curve

__all__ = ["BinaryMetrics", "binary_metrics", "roc_points"]


@dataclasses.dataclass(frozen=True)
class BinaryMetrics:
    auc: float
    accuracy: float  # at threshold 0.5
    log_loss: float


def _check(y_true, scores):
    y_true = np.asarray(y_true).ravel()
    scores = np.asarray(scores, dtype=float).ravel()
    if y_true.shape != scores.shape:
        raise ValueError(f"{y_true.shape[0]} labels but {scores.shape[0]} scores")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    return y_true, scores


def binary_metrics(*, y_true, scores) -> BinaryMetrics:
    """AUC, accuracy and log-loss of probability ``scores`` against 0/1 labels."""
    y_true, scores = _check(y_true, scores)
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    return BinaryMetrics(
        auc=float(roc_auc_score(y_true, scores)),
        accuracy=float(accuracy_score(y_true, scores >= 0.5)),
        log_loss=float(log_loss(y_true, clipped, labels=[0, 1])),
    )


def roc_points(*, y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the ROC curve."""
    y_true, scores = _check(y_true, scores)
    fpr, tpr, _ = roc_curve(y_true, scores)
    return fpr, tpr
