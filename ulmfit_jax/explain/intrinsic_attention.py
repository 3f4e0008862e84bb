"""Intrinsic attention: how strongly a class probability responds to each token's embedding.

fastai v1's `TextClassificationInterpretation.intrinsic_attention`: the score of token t of
document b is the L1 norm over the embedding dimension of d p[b, c] / d x[b, t, :], x the
embedding output (the rows the encoder looks up) and p[b, c] the probability of class c (the
softmax, or the class's sigmoid for a multi-label model), in eval mode.

The gradient is taken through the classifier's own eval forward (`classifier_eval`), run on a
copy of the embedding matrix with one extra row per (document, position): each position looks
up its own row, equal to its token's, so the gradient of a row is that position's. Padding
keeps the pad id, so the document layout, pooling and results are exactly the model's.
Documents do not interact in eval mode, so one backward pass serves the whole batch.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ulmfit_jax.inference.classify import classifier_eval


class Attention(NamedTuple):
    """probs `[batch, n_classes]`, the class explained `[batch]` and scores `[batch, time]`."""

    probs: jax.Array
    classes: jax.Array
    scores: jax.Array


@functools.partial(jax.jit, static_argnums=0, static_argnames=("pad_id", "multi_label"))
def intrinsic_attention(graphdef: nnx.GraphDef, state: dict[str, Any], ids: jax.Array,
                        classes: jax.Array, *, pad_id: int,
                        multi_label: bool = False) -> Attention:
    """ids `[batch, time]` in fastai's padded layout, classes `[batch]` (-1: the most likely
    class) -> the probabilities, the classes explained and each position's score `[batch,
    time]` (0 at padding). `state` is the classifier's pure state dict (`nnx.to_pure_dict`)."""
    table = state["encoder"]["embedding"]
    batch, time = ids.shape
    own_rows = table.shape[0] + jnp.arange(batch * time, dtype=ids.dtype).reshape(batch, time)
    lookup = jnp.where(ids == pad_id, ids, own_rows)

    def class_probability(rows: jax.Array):
        encoder = {**state["encoder"], "embedding": jnp.concatenate(
            [table, rows.reshape(batch * time, -1)])}
        probs = classifier_eval(graphdef, lookup, {**state, "encoder": encoder},
                                multi_label=multi_label).probs
        chosen = jnp.where(classes < 0, jnp.argmax(probs, axis=-1), classes)
        picked = jnp.take_along_axis(probs, chosen[:, None], axis=1)[:, 0]
        return picked.sum(), (probs, chosen)

    rows = jnp.take(table, ids, axis=0)
    grads, (probs, chosen) = jax.grad(class_probability, has_aux=True)(rows)
    return Attention(probs, chosen, jnp.abs(grads).sum(axis=-1))
