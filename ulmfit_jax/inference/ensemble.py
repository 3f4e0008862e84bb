"""The paper's forward + backward ensemble: the average of the classifiers' probabilities.

What the members offer is a protocol, so this module knows no wrapper class; the public
`Ensemble` (in `ulmfit_jax.api`) loads saved classifiers and labels the averaged probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np


class Classifier(Protocol):
    """What an ensemble member offers (`TextClassifier`, `serving.ServedClassifier`)."""

    class_names: list[str]

    def predict_proba(self, texts: Sequence[str], batch_size: int = ...,
                      progress: bool | None = ...) -> np.ndarray: ...


class Labelling(NamedTuple):
    """How a member turns probabilities into labels."""

    class_names: list[str]
    multi_label: bool
    threshold: float


def common_labelling(classifiers: Sequence[Classifier]) -> Labelling:
    """The members' shared class names, multi-label flag and threshold; a `ValueError` names
    the first member that differs from member #0."""
    if not classifiers:
        raise ValueError("Ensemble needs at least one classifier")
    first = _labelling(classifiers[0])
    for i, clf in enumerate(classifiers[1:], 1):
        for what, theirs, ours in zip(("classes", "multi_label", "threshold"),
                                      _labelling(clf), first, strict=True):
            if theirs != ours:
                raise ValueError(f"Ensemble: classifier #{i} has {what} {theirs}, "
                                 f"classifier #0 has {ours}")
    return first


def mean_probabilities(classifiers: Sequence[Classifier], texts: Sequence[str],
                       batch_size: int = 64, progress: bool | None = None) -> np.ndarray:
    """Mean of the members' probabilities, `[len(texts), n_classes]`, input order. Each member
    tokenizes the texts itself; a backward classifier reverses its ids itself."""
    probs = [clf.predict_proba(texts, batch_size=batch_size, progress=progress)
             for clf in classifiers]
    return np.mean(probs, axis=0)


def _labelling(clf: Classifier) -> Labelling:
    # A served model is single-label: it has neither attribute.
    return Labelling(clf.class_names, getattr(clf, "multi_label", False),
                     getattr(clf, "threshold", 0.5))
