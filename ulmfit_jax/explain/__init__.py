"""Look inside a trained classifier: where it fails and why (fastai's
`ClassificationInterpretation` and v1's intrinsic attention).

```python
from ulmfit_jax import explain
interp = explain.interpret(clf, texts, labels)     # one prediction pass; clf or Ensemble
interp.confusion_matrix(); interp.most_confused(); interp.report(); interp.top_losses(10)
interp.plot_confusion_matrix("confusion_matrix.png")
result = explain.word_importance(clf, "A splendid film.")   # or a list of texts
print(explain.to_terminal(result)); html = explain.to_html([result])
```

`confusion_matrix`, `most_confused`, `classification_report` and `top_losses` below are the
same, one call each. What a word-importance score means and does not mean:
`ulmfit_jax.explain.importance` (module doc).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ulmfit_jax.explain.importance import WordImportance, word_importance
from ulmfit_jax.explain.interpretation import Interpretation, TopLoss
from ulmfit_jax.explain.render import to_html, to_terminal, write_word_importance
from ulmfit_jax.inference.ensemble import Classifier

__all__ = [
    "Interpretation", "TopLoss", "WordImportance", "classification_report", "confusion_matrix",
    "interpret", "most_confused", "to_html", "to_terminal", "top_losses", "word_importance",
    "write_word_importance",
]


def interpret(model: Classifier, texts: Sequence[str], labels: Sequence[Any] | np.ndarray,
              batch_size: int = 64) -> Interpretation:
    """`Interpretation.from_texts`: predict `texts` once, against their `labels` (class names
    or indices; multi-label: lists of names or multi-hot rows)."""
    return Interpretation.from_texts(model, texts, labels, batch_size=batch_size)


def confusion_matrix(model: Classifier, texts: Sequence[str],
                     labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Counts `[n_classes, n_classes]`, rows true and columns predicted (multi-label: per
    class `[[TN, FP], [FN, TP]]`)."""
    return interpret(model, texts, labels).confusion_matrix()


def most_confused(model: Classifier, texts: Sequence[str], labels: Sequence[Any] | np.ndarray,
                  min_count: int = 1) -> list[tuple[str, str, int]]:
    """`(true class, predicted class, count)`, most frequent confusion first."""
    return interpret(model, texts, labels).most_confused(min_count)


def classification_report(model: Classifier, texts: Sequence[str],
                          labels: Sequence[Any] | np.ndarray) -> dict[str, Any]:
    """Precision, recall, F1 and support per class (multi-label: per label) and averages."""
    return interpret(model, texts, labels).report()


def top_losses(model: Classifier, texts: Sequence[str], labels: Sequence[Any] | np.ndarray,
               k: int = 10) -> list[TopLoss]:
    """The `k` texts with the largest loss, with true and predicted labels and probabilities."""
    return interpret(model, texts, labels).top_losses(k)
