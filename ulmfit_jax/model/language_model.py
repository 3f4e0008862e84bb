"""AWD-LSTM language model: encoder + decoder tied to the embedding, with a bias.

The encoder is whichever kind `config.encoder_kind` names (`model.encoder`); the LM owns the
output dropout before its decoder.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.model.dropout import dropout_mask
from ulmfit_jax.model.encoder import EncoderMasks, EncoderState, build_encoder, encoder_class
from ulmfit_jax.model.precision import matmul_precision


@struct.dataclass
class LMDropoutMasks:
    """Masks for one LM forward call (scaled by 1 / (1 - p)): the encoder's (`encoder`, its
    kind's `sample_masks`) and the output mask [batch, emb] before the decoder."""

    encoder: EncoderMasks
    output: jax.Array


def sample_lm_masks(key: jax.Array, config: AWDLSTMConfig, batch_size: int) -> LMDropoutMasks:
    """Draw every LM dropout mask for one forward call of `batch_size` rows."""
    encoder_key, output_key = jax.random.split(key)
    encoder = encoder_class(config).sample_masks(encoder_key, config, batch_size)
    output = dropout_mask(output_key, (batch_size, config.emb_size), config.output_dropout)
    return LMDropoutMasks(encoder=encoder, output=output)


class LMOutput(NamedTuple):
    """logits [batch, time, vocab]; state the encoder's (AWD-LSTM: per layer (h, c));
    raw_last and dropped_last [batch, time, emb] are the last layer's output before / after
    output dropout (for AR/TAR)."""

    logits: jax.Array
    state: EncoderState
    raw_last: jax.Array
    dropped_last: jax.Array


class AWDLSTMLanguageModel(nnx.Module):
    """Parameters: encoder/... (see `model.encoder`) and decoder_bias [vocab]."""

    def __init__(self, config: AWDLSTMConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = build_encoder(config, rngs=rngs)
        self.decoder_bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))

    def __call__(
        self,
        ids: jax.Array,
        state: EncoderState | None = None,
        masks: LMDropoutMasks | None = None,
    ) -> LMOutput:
        """ids [batch, time] int32 -> `LMOutput`. masks None = eval mode.

        The caller cuts the gradient of the returned state between windows.
        """
        with matmul_precision(self.config.matmul_precision):
            raw, new_state = self.encoder(ids, state, None if masks is None else masks.encoder)
            dropped = raw if masks is None else raw * masks.output[:, None, :]
            logits = tied_decoder(dropped, self.encoder.embedding[...], self.decoder_bias[...],
                                  self.config)
        return LMOutput(logits, new_state, raw, dropped)


def tied_decoder(
    x: jax.Array, embedding: jax.Array, bias: jax.Array, config: AWDLSTMConfig
) -> jax.Array:
    """x [batch, time, emb] @ embedding.T + bias -> [batch, time, vocab].

    fastai's decoder uses the undropped embedding matrix (embedding dropout makes a copy).
    The bias rides in the matmul as an extra input column of ones: XLA:CPU does not fuse a
    bias add into a dot, and on the [batch*time, vocab] logits a separate add (and, in the
    backward pass, a separate bias-gradient reduction) is a full extra pass over the largest
    array of the model; as a column the matmul produces both for free (float32 only).
    """
    dtype = config.compute_dtype
    if jnp.dtype(dtype) != jnp.float32:
        # A low-precision bias column would round the bias; keep it as an f32 add.
        logits = jnp.einsum(
            "bte,ve->btv", x.astype(dtype), embedding.astype(dtype),
            preferred_element_type=jnp.float32,
        )
        return logits + bias
    ones = jnp.ones((*x.shape[:-1], 1), dtype)
    x_aug = jnp.concatenate([x.astype(dtype), ones], axis=-1)
    w_aug = jnp.concatenate([embedding.astype(dtype), bias.astype(dtype)[:, None]], axis=-1)
    return jnp.einsum("bte,ve->btv", x_aug, w_aug, preferred_element_type=jnp.float32)


def resize_state(state: EncoderState, batch_size: int) -> EncoderState:
    """fastai's rule when the batch size changes between calls: keep the first rows when
    shrinking, append zero rows when growing. Every array of the state is [batch, ...]."""

    def resize(x: jax.Array) -> jax.Array:
        current = x.shape[0]
        if batch_size <= current:
            return x[:batch_size]
        return jnp.concatenate([x, jnp.zeros((batch_size - current, *x.shape[1:]), x.dtype)])

    return jax.tree.map(resize, state)
