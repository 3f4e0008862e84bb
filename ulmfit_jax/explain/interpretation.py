"""`Interpretation`: where a classifier fails on labelled texts (fastai's
`ClassificationInterpretation`): confusion matrix, most confused pairs, per-class report,
top losses and the confusion-matrix picture, from one prediction pass."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ulmfit_jax.explain import classification as cl
from ulmfit_jax.inference.ensemble import Classifier, common_labelling


@dataclasses.dataclass(frozen=True)
class TopLoss:
    """One document of `top_losses`: its index in the input, its loss, true and predicted
    class name (multi-label: lists of names), the probability of each class and its text
    (None when the interpretation has no texts)."""

    index: int
    loss: float
    actual: str | list[str]
    predicted: str | list[str]
    probabilities: list[float]
    text: str | None


class Interpretation:
    """Probabilities `[docs, n_classes]` against labels, named by `class_names`.

    Labels are class names (multi-label: a list of names per document) or class indices
    (multi-label: multi-hot rows). `texts`, if given, is any sequence indexable by document
    (only the top losses' are read).
    """

    def __init__(self, probabilities: np.ndarray, labels: Sequence[Any] | np.ndarray,
                 class_names: Sequence[str], multi_label: bool = False,
                 threshold: float = 0.5, texts: Sequence[str] | None = None):
        self.probabilities = np.asarray(probabilities)
        self.class_names = [str(c) for c in class_names]
        self.multi_label, self.threshold, self.texts = multi_label, threshold, texts
        self.labels = label_indices(labels, self.class_names, multi_label)
        if self.probabilities.shape != (len(self.labels), len(self.class_names)):
            raise ValueError(f"probabilities of shape {self.probabilities.shape} for "
                             f"{len(self.labels)} labels and {len(self.class_names)} classes")

    @classmethod
    def from_texts(cls, model: Classifier, texts: Sequence[str],
                   labels: Sequence[Any] | np.ndarray, batch_size: int = 64,
                   progress: bool | None = None) -> Interpretation:
        """Predict `texts` with `model` (a `TextClassifier`, `Ensemble` or served model) once."""
        labelling = common_labelling([model])
        probs = model.predict_proba(texts, batch_size=batch_size, progress=progress)
        return cls(probs, labels, labelling.class_names, labelling.multi_label,
                   labelling.threshold, texts=list(texts))

    @property
    def predictions(self) -> np.ndarray:
        """Predicted class indices `[docs]`, or (multi-label) booleans `[docs, n_classes]`."""
        if self.multi_label:
            return self.probabilities > self.threshold
        return self.probabilities.argmax(-1)

    def confusion_matrix(self) -> np.ndarray:
        """Counts `[n_classes, n_classes]` (rows true, columns predicted); multi-label: per
        class `[n_classes, 2, 2]` = `[[TN, FP], [FN, TP]]`."""
        if self.multi_label:
            return cl.multi_label_confusion_matrix(self.labels, self.predictions)
        return cl.confusion_matrix(self.labels, self.predictions, len(self.class_names))

    def most_confused(self, min_count: int = 1) -> list[tuple[str, str, int]]:
        """`(true class, predicted class, count)` of the confusions with at least `min_count`
        documents, most frequent first (single-label only)."""
        if self.multi_label:
            raise ValueError("most_confused is for single-label classifiers; a multi-label "
                             "one has a 2x2 confusion matrix per class (confusion_matrix())")
        names = self.class_names
        return [(names[t], names[p], n)
                for t, p, n in cl.most_confused(self.confusion_matrix(), min_count)]

    def report(self) -> dict[str, Any]:
        """Precision, recall, F1 and support per class (multi-label: per label) and their
        averages, as scikit-learn's `classification_report(output_dict=True)`."""
        if self.multi_label:
            return cl.multi_label_report(self.labels, self.predictions, self.class_names)
        return cl.classification_report(self.labels, self.predictions, self.class_names)

    def losses(self) -> np.ndarray:
        """Each document's loss `[docs]` (see `classification.document_losses`)."""
        return cl.document_losses(self.labels, self.probabilities)

    def top_losses(self, k: int = 10) -> list[TopLoss]:
        """The `k` documents with the largest loss, largest first."""
        losses = self.losses()
        return [self._top_loss(int(i), float(losses[i])) for i in cl.largest(losses, k)]

    def _top_loss(self, i: int, loss: float) -> TopLoss:
        probs, names = [float(p) for p in self.probabilities[i]], self.class_names
        text = None if self.texts is None else self.texts[i]
        if self.multi_label:
            return TopLoss(i, loss, [n for n, y in zip(names, self.labels[i], strict=True) if y],
                           [n for n, p in zip(names, self.predictions[i], strict=True) if p],
                           probs, text)
        return TopLoss(i, loss, names[self.labels[i]], names[int(np.argmax(probs))], probs, text)

    def plot_confusion_matrix(self, path: str | os.PathLike | None = None, title: str = ""):
        """The confusion matrix as a matplotlib `Figure` (written as PNG to `path` if given);
        needs no display."""
        from ulmfit_jax.explain.plots import confusion_matrix_figure

        return confusion_matrix_figure([(title, self)], path)


def label_indices(labels: Sequence[Any] | np.ndarray, class_names: list[str],
                  multi_label: bool) -> np.ndarray:
    """Labels as class indices `[docs]` or (multi-label) multi-hot `[docs, n_classes]`.

    Single-label: a class name or index per document. Multi-label: a 2-D multi-hot array, or
    per document a list of class names (or indices). A label that is no class raises
    ValueError naming its position.
    """
    if not multi_label:
        return np.asarray([_index(label, class_names, i) for i, label in enumerate(labels)],
                          dtype=np.int64).reshape(-1)
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        if labels.shape[1] != len(class_names):
            raise ValueError(f"multi-hot labels have {labels.shape[1]} columns for "
                             f"{len(class_names)} classes")
        return (labels > 0).astype(np.int64)
    out = np.zeros((len(labels), len(class_names)), np.int64)
    for i, row in enumerate(labels):
        names = [row] if isinstance(row, (str, int, np.integer)) else row
        out[i, np.asarray([_index(label, class_names, i) for label in names], np.int64)] = 1
    return out


def _index(label: Any, class_names: list[str], position: int) -> int:
    if isinstance(label, str):
        if label not in class_names:
            raise ValueError(f"label #{position} is {label!r}, not one of the classes "
                             f"{class_names}")
        return class_names.index(label)
    index = int(label)
    if not 0 <= index < len(class_names):
        raise ValueError(f"label #{position} is {index}, not a class index below "
                         f"{len(class_names)}")
    return index
