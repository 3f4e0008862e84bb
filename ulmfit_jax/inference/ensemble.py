"""The paper's forward + backward ensemble: the average of the classifiers' probabilities."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ulmfit_jax.text.prediction_batches import predicted_labels


class Classifier(Protocol):
    """What an ensemble member offers (`TextClassifier`, `serving.ServedClassifier`)."""

    class_names: list[str]

    def predict_proba(self, texts: Sequence[str], batch_size: int = ...,
                      progress: bool | None = ...) -> np.ndarray: ...


class Ensemble:
    """Averages the probabilities of classifiers with the same class names (e.g. fwd + bwd).

    Each member tokenizes the texts itself; a backward classifier reverses its ids itself.
    """

    def __init__(self, classifiers: Sequence[Classifier]):
        classifiers = list(classifiers)
        if not classifiers:
            raise ValueError("Ensemble needs at least one classifier")
        first = _labelling(classifiers[0])
        for i, clf in enumerate(classifiers[1:], 1):
            for what, theirs, ours in zip(("classes", "multi_label", "threshold"),
                                          _labelling(clf), first, strict=True):
                if theirs != ours:
                    raise ValueError(f"Ensemble: classifier #{i} has {what} {theirs}, "
                                     f"classifier #0 has {ours}")
        self.classifiers = classifiers
        self.multi_label, self.threshold = first[1], first[2]

    @classmethod
    def load(cls, *directories: str | os.PathLike) -> Ensemble:
        """`TextClassifier.load` of each directory (e.g. `classifier_fwd`, `classifier_bwd`)."""
        from ulmfit_jax.api import TextClassifier

        return cls([TextClassifier.load(d) for d in directories])

    @property
    def class_names(self) -> list[str]:
        """The members' common class names."""
        return self.classifiers[0].class_names

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64,
                      progress: bool | None = None) -> np.ndarray:
        """Mean of the members' probabilities, `[len(texts), n_classes]`, input order."""
        probs = [clf.predict_proba(texts, batch_size=batch_size, progress=progress)
                 for clf in self.classifiers]
        return np.mean(probs, axis=0)

    def predict(self, texts: Sequence[str], batch_size: int = 64,
                progress: bool | None = None) -> list[str] | list[list[str]]:
        """The most likely class name of each text; for multi-label members, the list of class
        names whose mean probability exceeds their threshold."""
        probs = self.predict_proba(texts, batch_size=batch_size, progress=progress)
        return predicted_labels(probs, self.class_names, self.multi_label, self.threshold)


def _labelling(clf: Classifier) -> tuple[list[str], bool, float]:
    """How a member turns probabilities into labels (a served model is single-label)."""
    return clf.class_names, getattr(clf, "multi_label", False), getattr(clf, "threshold", 0.5)
