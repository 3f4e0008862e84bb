"""`Ensemble`: the paper's forward + backward classifiers, their probabilities averaged."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ulmfit_jax.api.text_classifier import TextClassifier
from ulmfit_jax.inference.ensemble import Classifier, common_labelling, mean_probabilities
from ulmfit_jax.text.prediction_batches import predicted_labels


class Ensemble:
    """Averages the probabilities of classifiers with the same class names (e.g. fwd + bwd).

    Members are `TextClassifier`s or `serving.ServedClassifier`s (anything with
    `class_names` and `predict_proba`). Each member tokenizes the texts itself; a backward
    classifier reverses its ids itself.
    """

    def __init__(self, classifiers: Sequence[Classifier]):
        self.classifiers = list(classifiers)
        labelling = common_labelling(self.classifiers)
        self.multi_label, self.threshold = labelling.multi_label, labelling.threshold

    @classmethod
    def load(cls, *directories: str | os.PathLike) -> Ensemble:
        """`TextClassifier.load` of each directory (e.g. `classifier_fwd`, `classifier_bwd`)."""
        return cls([TextClassifier.load(d) for d in directories])

    @property
    def class_names(self) -> list[str]:
        """The members' common class names."""
        return self.classifiers[0].class_names

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64,
                      progress: bool | None = None) -> np.ndarray:
        """Mean of the members' probabilities, `[len(texts), n_classes]`, input order."""
        return mean_probabilities(self.classifiers, texts, batch_size, progress)

    def predict(self, texts: Sequence[str], batch_size: int = 64,
                progress: bool | None = None) -> list[str] | list[list[str]]:
        """The most likely class name of each text; for multi-label members, the list of class
        names whose mean probability exceeds their threshold."""
        probs = self.predict_proba(texts, batch_size=batch_size, progress=progress)
        return predicted_labels(probs, self.class_names, self.multi_label, self.threshold)
