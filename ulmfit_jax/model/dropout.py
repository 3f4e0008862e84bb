"""AWD-LSTM dropouts as explicit mask data.

fastai draws five kinds of masks (all Bernoulli(1 - p) scaled by 1 / (1 - p)):
embedding rows `(vocab, 1)`, variational input `(batch, 1, emb)`, variational hidden between
layers `(batch, 1, hidden)` (not after the last layer), DropConnect on each W_hh (same shape as
the weight, once per forward call) and the variational output `(batch, 1, emb)`.
Here masks are sampled up front into a pytree and passed to the model (`masks=None` = eval),
so a test can inject the very masks fastai drew. The time axis of variational masks is dropped:
they are stored as `[batch, features]` and broadcast over time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig


@struct.dataclass
class LMDropoutMasks:
    """Masks for one LM forward call (all already scaled by 1 / (1 - p)).

    embed: [vocab] row mask; input: [batch, emb]; hidden: tuple over layers 0..n-2 of
    [batch, hid_l]; weight: tuple over layers of [hid_l, 4 * hid_l] (our w_hh layout);
    output: [batch, emb].
    """

    embed: jax.Array
    input: jax.Array
    hidden: tuple[jax.Array, ...]
    weight: tuple[jax.Array, ...]
    output: jax.Array


@struct.dataclass
class ClassifierDropoutMasks:
    """Masks for one classifier forward call: the encoder's four kinds plus the head's.

    The encoder masks are drawn once per call and shared by all BPT3C chunks (fastai redraws
    them per chunk). head: tuple over head blocks of [batch, features_k].
    """

    embed: jax.Array
    input: jax.Array
    hidden: tuple[jax.Array, ...]
    weight: tuple[jax.Array, ...]
    head: tuple[jax.Array, ...]


def dropout_mask(key: jax.Array, shape: tuple[int, ...], p: float) -> jax.Array:
    """Bernoulli(1 - p) mask scaled by 1 / (1 - p), float32 of `shape` (ones when p == 0)."""
    if p == 0.0:
        return jnp.ones(shape, jnp.float32)
    keep = jax.random.bernoulli(key, 1.0 - p, shape)
    return keep.astype(jnp.float32) / (1.0 - p)


def _sample_encoder_masks(
    key: jax.Array, config: AWDLSTMConfig, batch_size: int
) -> tuple[jax.Array, jax.Array, tuple[jax.Array, ...], tuple[jax.Array, ...], jax.Array]:
    """Embed, input, hidden and weight masks plus a key left over for the caller."""
    sizes = config.layer_sizes()
    keys = jax.random.split(key, 3 + 2 * len(sizes))
    embed = dropout_mask(keys[0], (config.vocab_size,), config.embed_dropout)
    inp = dropout_mask(keys[1], (batch_size, config.emb_size), config.input_dropout)
    hidden = tuple(
        dropout_mask(keys[3 + layer], (batch_size, n_out), config.hidden_dropout)
        for layer, (_, n_out) in enumerate(sizes[:-1])
    )
    weight = tuple(
        dropout_mask(keys[3 + len(sizes) + layer], (n_out, 4 * n_out), config.weight_dropout)
        for layer, (_, n_out) in enumerate(sizes)
    )
    return embed, inp, hidden, weight, keys[2]


def sample_lm_masks(key: jax.Array, config: AWDLSTMConfig, batch_size: int) -> LMDropoutMasks:
    """Draw every LM dropout mask for one forward call of `batch_size` rows."""
    embed, inp, hidden, weight, rest = _sample_encoder_masks(key, config, batch_size)
    output = dropout_mask(rest, (batch_size, config.emb_size), config.output_dropout)
    return LMDropoutMasks(embed=embed, input=inp, hidden=hidden, weight=weight, output=output)


def sample_classifier_masks(
    key: jax.Array, config: ClassifierConfig, batch_size: int
) -> ClassifierDropoutMasks:
    """Draw the encoder masks and one [batch, features_k] mask per head block."""
    embed, inp, hidden, weight, rest = _sample_encoder_masks(key, config.encoder, batch_size)
    features = config.head_features[:-1]
    keys = jax.random.split(rest, len(features))
    head = tuple(
        dropout_mask(k, (batch_size, n), p)
        for k, n, p in zip(keys, features, config.head_dropouts, strict=True)
    )
    return ClassifierDropoutMasks(embed=embed, input=inp, hidden=hidden, weight=weight, head=head)
