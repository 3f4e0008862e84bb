"""Host-side metrics against scikit-learn, and exact under split sums."""

import math

import numpy as np
import pytest
from sklearn import metrics as sk

from ulmfit_jax.trainer.metrics import (
    SumAccumulator,
    classification_report,
    classifier_summary,
    confusion_matrix,
    lm_summary,
    macro_f1,
)


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 6))
    labels = rng.integers(0, n_classes, 200)
    probs = rng.dirichlet(np.ones(n_classes), 200)
    predictions = probs.argmax(-1)
    every_class = list(range(n_classes))
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, n_classes),
                                  sk.confusion_matrix(labels, predictions, labels=every_class))
    report = classification_report(labels, probs)
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(labels, predictions))
    assert report["macro_f1"] == pytest.approx(
        sk.f1_score(labels, predictions, average="macro", labels=every_class, zero_division=0))


def test_macro_f1_counts_a_class_never_seen_as_zero():
    # Classes 0 and 1 each have F1 2/3; class 2 is neither a label nor a prediction: F1 0.
    assert macro_f1(np.array([0, 1, 1]), np.array([0, 1, 0]), 3) == pytest.approx(
        (2 / 3 + 2 / 3 + 0.0) / 3)


def test_summaries_of_summed_steps_equal_the_whole_batch():
    rng = np.random.default_rng(0)
    losses, correct = rng.uniform(0, 5, 90), rng.random(90) < 0.3
    acc = SumAccumulator()
    for part in np.array_split(np.arange(90), 7):  # uneven steps, as under padding
        acc.add({"loss_sum": losses[part].sum(), "correct": correct[part].sum(),
                 "count": len(part)})
    lm = lm_summary(acc.sums)
    assert lm["loss"] == pytest.approx(losses.mean())
    assert lm["accuracy"] == pytest.approx(correct.mean())
    assert lm["perplexity"] == pytest.approx(math.exp(losses.mean()))
    assert classifier_summary(acc.sums) == pytest.approx(
        {"loss": losses.mean(), "accuracy": correct.mean()})
    acc.reset()
    assert acc.sums == {}
