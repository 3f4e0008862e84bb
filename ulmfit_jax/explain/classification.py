"""Where a classifier fails, from its probabilities: confusion matrices, the per-class report,
per-document losses and their largest (numpy only; `Interpretation` puts names on them).

Single-label: `labels [docs]` class indices, `probabilities [docs, n_classes]` (softmax), the
prediction is the most likely class. Multi-label: `labels [docs, n_classes]` multi-hot,
`probabilities` independent sigmoids, a class is predicted when its probability exceeds the
threshold. The report has scikit-learn's `classification_report(output_dict=True,
zero_division=0)` layout and numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Probabilities are float32: a loss is computed from max(p, this), so it is at most ~87.3.
_TINY = float(np.finfo(np.float32).tiny)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """`[n_classes, n_classes]` counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def multi_label_confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """`[n_classes, 2, 2]`: per class `[[true negatives, false positives], [false negatives,
    true positives]]` of multi-hot `labels` and boolean `predicted` `[docs, n_classes]`
    (scikit-learn's `multilabel_confusion_matrix`)."""
    truth, guess = np.asarray(labels) > 0, np.asarray(predicted).astype(bool)
    cells = [(~truth & ~guess), (~truth & guess), (truth & ~guess), (truth & guess)]
    return np.stack([c.sum(0) for c in cells], axis=-1).reshape(-1, 2, 2).astype(np.int64)


def most_confused(matrix: np.ndarray, min_count: int = 1) -> list[tuple[int, int, int]]:
    """Off-diagonal cells of a confusion matrix with at least `min_count` documents, as
    `(true class, predicted class, count)`, largest count first (fastai's `most_confused`)."""
    pairs = [(int(t), int(p), int(matrix[t, p])) for t, p in np.argwhere(matrix >= min_count)
             if t != p]
    return sorted(pairs, key=lambda row: (-row[2], row[0], row[1]))


def per_class_report(true_positives: np.ndarray, predicted: np.ndarray, support: np.ndarray,
                     class_names: list[str], micro: bool) -> dict[str, Any]:
    """Precision, recall, F1 and support per class from the counts `[n_classes]` each, then the
    micro (multi-label), macro and support-weighted averages. A ratio with nothing to divide by
    is 0 (scikit-learn's `zero_division=0`)."""
    tp, pred, sup = (np.asarray(a, dtype=np.float64) for a in (true_positives, predicted,
                                                               support))
    precision, recall, f1 = _scores(tp, pred, sup)
    report: dict[str, Any] = {name: _row(precision[k], recall[k], f1[k], sup[k])
                              for k, name in enumerate(class_names)}
    if micro:
        report["micro avg"] = _row(*_scores(tp.sum(), pred.sum(), sup.sum()), sup.sum())
    report["macro avg"] = _row(precision.mean(), recall.mean(), f1.mean(), sup.sum())
    weights = sup / sup.sum() if sup.sum() else np.zeros_like(sup)
    report["weighted avg"] = _row(precision @ weights, recall @ weights, f1 @ weights, sup.sum())
    return report


def _scores(tp: Any, predicted: Any, support: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
    total = predicted + support
    return precision, recall, np.where(total > 0, 2 * tp / np.maximum(total, 1), 0.0)


def _row(precision: Any, recall: Any, f1: Any, support: Any) -> dict[str, Any]:
    return {"precision": float(precision), "recall": float(recall), "f1-score": float(f1),
            "support": int(support)}


def classification_report(labels: np.ndarray, predictions: np.ndarray,
                          class_names: list[str]) -> dict[str, Any]:
    """Single-label report: per class, `accuracy`, `macro avg`, `weighted avg`."""
    matrix = confusion_matrix(labels, predictions, len(class_names))
    report = per_class_report(np.diag(matrix), matrix.sum(0), matrix.sum(1), class_names,
                              micro=False)
    total = matrix.sum()
    accuracy = float(np.trace(matrix) / total) if total else 0.0
    return {**{n: report[n] for n in class_names}, "accuracy": accuracy,
            "macro avg": report["macro avg"], "weighted avg": report["weighted avg"]}


def multi_label_report(labels: np.ndarray, predicted: np.ndarray,
                       class_names: list[str]) -> dict[str, Any]:
    """Multi-label report: per class, `micro avg`, `macro avg`, `weighted avg`."""
    matrix = multi_label_confusion_matrix(labels, predicted)
    return per_class_report(matrix[:, 1, 1], matrix[:, :, 1].sum(1), matrix[:, 1].sum(1),
                            class_names, micro=True)


def document_losses(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each document's loss `[docs]` as training measures it: cross-entropy of its class
    (labels `[docs]`), or the mean binary cross-entropy over the classes (multi-hot labels
    `[docs, n_classes]`, fastai's `BCEWithLogitsLossFlat`), from float32 probabilities."""
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if labels.ndim == 2:
        truth = labels > 0
        picked = np.where(truth, probs, 1.0 - probs)
        return -np.log(np.maximum(picked, _TINY)).mean(axis=1)
    true_probs = np.take_along_axis(probs, labels[:, None].astype(np.int64), axis=1)[:, 0]
    return -np.log(np.maximum(true_probs, _TINY))


def largest(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` largest values, largest first; ties by index."""
    order = np.lexsort((np.arange(len(values)), -np.asarray(values)))
    return order[:max(k, 0)]
