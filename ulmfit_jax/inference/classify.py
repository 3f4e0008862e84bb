"""Classifier probabilities for raw texts, in input order (`TextClassifier.predict_proba`).

The host side (tokenize, sort by length, pad to a few bucketed shapes, restore the order) is
`text.prediction_batches`; here is the jitted eval forward + softmax it calls per batch. A
document's probabilities do not depend on its batch: leading padding leaves the state at zero
and BatchNorm uses its running statistics (see `model.classifier`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from ulmfit_jax.model.classifier import AWDLSTMClassifier
from ulmfit_jax.text import prediction_batches as pb
from ulmfit_jax.text.vocab import Vocab


@functools.partial(jax.jit, static_argnums=(0, 3))
def _probabilities(graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array,
                   multi_label: bool) -> jax.Array:
    """ids [batch, time] in fastai's padded layout -> probabilities [batch, n_classes]:
    softmax, or each class's sigmoid for a multi-label classifier."""
    logits = nnx.merge(graphdef, state)(ids)
    return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits, axis=-1)


def classifier_probabilities(module: AWDLSTMClassifier, vocab: Vocab, tokenizer,
                             texts: Sequence[str], batch_size: int, backward: bool,
                             progress: bool | None, multi_label: bool = False) -> np.ndarray:
    """Probabilities `[len(texts), n_classes]` of raw texts, in input order."""
    graphdef, state = nnx.split(module)
    config = module.config
    return pb.texts_to_probabilities(
        lambda ids: _probabilities(graphdef, state, ids, multi_label), tokenizer, vocab, texts,
        batch_size=batch_size, bptt=config.bptt, pad_id=config.encoder.pad_id,
        n_classes=config.n_classes, backward=backward, progress=progress)
