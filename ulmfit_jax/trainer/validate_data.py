"""Refuse data that cannot train before any training starts; warn where fastai would go on.

Errors (`DataError`, naming the source and split): a split with no documents or no tokens,
fewer than two classes, a validation class never seen in training, a batch size larger than
the data allows. Warnings (one log line each): very few documents in a classifier split, a
strongly imbalanced training label set.
"""

from __future__ import annotations

import logging

import ml_collections
import numpy as np

from ulmfit_jax.errors import DataError
from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus
from ulmfit_jax.trainer.data import PreparedData, source_name

logger = logging.getLogger(__name__)

FEW_DOCS = 20  # fewer classifier documents in a split than this: a warning
IMBALANCE = 10.0  # largest / smallest training class above this: a warning


def _check_not_empty(corpus: TokenizedCorpus, where: str) -> None:
    if corpus.num_docs == 0:
        raise DataError(f"{where}: no documents")
    if len(corpus.ids) == 0:
        raise DataError(f"{where}: {corpus.num_docs} documents but no tokens")


def check_lm_data(data: PreparedData, config: ml_collections.ConfigDict) -> None:
    """The LM corpus: tokens in both parts, enough for `config.lm.batch_size` rows."""
    source = source_name(config.data, lm=True)
    batch_size = config.lm.batch_size
    for part, corpus in (("training", data.lm_train), ("validation", data.lm_valid)):
        where = f"{source}, LM {part} documents"
        _check_not_empty(corpus, where)
        # LMStream lays the tokens out as batch_size rows of at least one input and target.
        if len(corpus.ids) - 1 < batch_size:
            raise DataError(
                f"{where}: {len(corpus.ids)} tokens cannot fill config.lm.batch_size="
                f"{batch_size} rows; lower config.lm.batch_size to {len(corpus.ids) - 1} or "
                "less, or add text (config.data.lm_valid_fraction sets the validation share)"
            )


def check_classifier_data(data: PreparedData, config: ml_collections.ConfigDict) -> None:
    """Labelled splits with two or more classes, all validation classes seen in training, and
    at least one full training batch of `config.classifier.batch_size` documents."""
    source = source_name(config.data)
    train, valid = data.clf_train, data.clf_valid
    for split, corpus in (("train", train), ("validation", valid)):
        _check_not_empty(corpus, f"{source}, {split} split")
        if corpus.labels is None:
            raise DataError(f"{source}, {split} split: no labels; the classifier stage needs "
                            "labelled documents (config.data.csv_label_cols)")
    seen = set(np.flatnonzero(_class_counts(train, len(data.class_names))).tolist())
    if len(seen) < 2:
        names = [data.class_names[i] for i in sorted(seen)]
        raise DataError(f"{source}, train split: fewer than two classes ({names}); a classifier "
                        "needs at least two")
    in_valid = np.flatnonzero(_class_counts(valid, len(data.class_names)))
    unseen = sorted(set(in_valid.tolist()) - seen)
    if unseen:
        names = [data.class_names[i] for i in unseen]
        raise DataError(f"{source}, validation split: classes {names} never occur in the train "
                        "split")
    batch_size = config.classifier.batch_size
    if train.num_docs < batch_size:
        raise DataError(f"{source}, train split: {train.num_docs} documents cannot fill one "
                        f"batch of config.classifier.batch_size={batch_size} (the last partial "
                        f"batch is dropped, as in fastai); lower it to {train.num_docs} or less")
    _warn_small_or_imbalanced(data, source)


def _class_counts(corpus: TokenizedCorpus, n_classes: int) -> np.ndarray:
    """Documents of each class `[n_classes]` (multi-hot labels count every class they have)."""
    labels = np.asarray(corpus.labels)
    if labels.ndim == 2:
        return labels.sum(0)
    return np.bincount(labels, minlength=n_classes)


def _warn_small_or_imbalanced(data: PreparedData, source: str) -> None:
    for split, corpus in (("train", data.clf_train), ("validation", data.clf_valid)):
        if corpus.num_docs < FEW_DOCS:
            logger.warning("%s, %s split: only %d documents; results will be noisy",
                           source, split, corpus.num_docs)
    counts = _class_counts(data.clf_train, len(data.class_names))
    present = counts[counts > 0]
    if present.max() > IMBALANCE * present.min():
        shares = ", ".join(f"{n}: {c}" for n, c in zip(data.class_names, counts, strict=True))
        logger.warning("%s, train split: strongly imbalanced classes (%s); accuracy may hide "
                       "a poor minority class, watch macro F1", source, shares)
