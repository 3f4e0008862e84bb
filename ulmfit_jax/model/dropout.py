"""AWD-LSTM dropouts as explicit mask data: the primitives every encoder and head draws from.

fastai draws five kinds of masks (all Bernoulli(1 - p) scaled by 1 / (1 - p)):
embedding rows `(vocab, 1)`, variational input `(batch, 1, emb)`, variational hidden between
layers `(batch, 1, hidden)` (not after the last layer), DropConnect on each recurrent weight
(same shape as the weight, once per forward call) and the variational output `(batch, 1, emb)`.
Here masks are sampled up front into a pytree and passed to the model (`masks=None` = eval),
so a test can inject the very masks fastai drew. The time axis of variational masks is dropped:
they are stored as `[batch, features]` and broadcast over time.
Who owns which masks: the encoder kind the first four (`Encoder.sample_masks`, e.g.
`awd_lstm.AWDLSTMMasks`), the LM the output mask (`language_model.LMDropoutMasks`), the
classifier its head's (`classifier.ClassifierDropoutMasks`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout_mask(key: jax.Array, shape: tuple[int, ...], p: float) -> jax.Array:
    """Bernoulli(1 - p) mask scaled by 1 / (1 - p), float32 of `shape` (ones when p == 0)."""
    if p == 0.0:
        return jnp.ones(shape, jnp.float32)
    keep = jax.random.bernoulli(key, 1.0 - p, shape)
    return keep.astype(jnp.float32) / (1.0 - p)


def embed_tokens(
    embedding: jax.Array, ids: jax.Array, pad_id: int, row_mask: jax.Array | None
) -> jax.Array:
    """Rows of the (row-dropped) embedding: ids [...] -> [..., emb] (embedding dropout).

    Gathers first and scales by the gathered row mask, so the dropped [vocab, emb] matrix is
    never built. The pad row gets no gradient through the lookup, as torch's `padding_idx`.
    """
    rows = jnp.take(embedding, ids, axis=0)
    if row_mask is not None:
        rows = rows * jnp.take(row_mask, ids, axis=0)[..., None]
    return jnp.where((ids == pad_id)[..., None], jax.lax.stop_gradient(rows), rows)
