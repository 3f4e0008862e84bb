"""Host-side metrics: steps return sums and counts, normalised here (exact under padding)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

# The one confusion matrix, re-exported: macro F1 below is computed from it.
from ulmfit_jax.explain.classification import confusion_matrix as confusion_matrix


class SumAccumulator:
    """Adds per-step metric sums (`loss_sum`, `correct`, `count`, ...) over an epoch or eval."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}

    def add(self, metrics: Mapping[str, float]) -> None:
        """Add one step's sums (already on the host)."""
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)

    def reset(self) -> None:
        """Forget everything added."""
        self.sums = {}


def lm_summary(sums: Mapping[str, float]) -> dict[str, float]:
    """LM sums -> mean cross-entropy `loss`, next-token `accuracy` and `perplexity`."""
    count = max(sums.get("count", 0.0), 1.0)
    loss = sums.get("loss_sum", 0.0) / count
    return {
        "loss": loss,
        "accuracy": sums.get("correct", 0.0) / count,
        "perplexity": math.exp(min(loss, 50.0)),
    }


def classifier_summary(sums: Mapping[str, float]) -> dict[str, float]:
    """Classifier sums -> mean `loss` and `accuracy` (F1 needs predictions: `macro_f1`)."""
    count = max(sums.get("count", 0.0), 1.0)
    return {"loss": sums.get("loss_sum", 0.0) / count, "accuracy": sums.get("correct", 0.0) / count}


def macro_f1(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> float:
    """Unweighted mean over classes of F1 (a class absent from both labels and predictions: 0)."""
    matrix = confusion_matrix(labels, predictions, n_classes)
    tp = np.diag(matrix).astype(np.float64)
    denominator = matrix.sum(0) + matrix.sum(1)
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    return float(f1.mean())


def multi_label_report(labels: np.ndarray, probabilities: np.ndarray,
                       threshold: float) -> dict[str, float]:
    """fastai's `accuracy_multi` (share of (document, class) cells right, fastai/metrics.py),
    micro F1 (over all cells) and macro F1 (mean over classes; a class absent from labels
    and predictions scores 0) of sigmoid `probabilities` against multi-hot `labels`, both
    `[docs, n_classes]`; a class is predicted when its probability exceeds `threshold`."""
    truth = np.asarray(labels) > 0
    predicted = np.asarray(probabilities) > threshold
    tp = (truth & predicted).sum(0).astype(np.float64)
    denominator = (truth.sum(0) + predicted.sum(0)).astype(np.float64)
    per_class = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    micro = 2 * tp.sum() / denominator.sum() if denominator.sum() else 0.0
    accuracy = float((truth == predicted).mean()) if truth.size else 0.0
    return {"accuracy": accuracy, "accuracy_multi": accuracy, "micro_f1": float(micro),
            "macro_f1": float(per_class.mean())}


def report(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """`multi_label_report` for multi-hot labels `[docs, n_classes]`, else
    `classification_report`."""
    if np.asarray(labels).ndim == 2:
        return multi_label_report(labels, probabilities, threshold)
    return classification_report(labels, probabilities)


def classification_report(
    labels: np.ndarray, probabilities: np.ndarray
) -> dict[str, float]:
    """`accuracy` and `macro_f1` of `probabilities [docs, n_classes]` against `labels [docs]`."""
    predictions = np.asarray(probabilities).argmax(-1)
    labels = np.asarray(labels)
    return {
        "accuracy": float((predictions == labels).mean()) if labels.size else 0.0,
        "macro_f1": macro_f1(labels, predictions, probabilities.shape[-1]),
    }
