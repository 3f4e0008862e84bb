"""AWD-LSTM encoder: embedding + stacked LSTMs + AWD dropouts, explicit hidden state.

The module holds the parameters; the forward pass is the pure function `encode` on plain
arrays (`EncoderWeights`), so the classifier can scan it over BPT3C chunks and run a
gradient-free prefix without touching module state.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.model.cudnn_lstm import cudnn_layer, resolve_lstm_impl
from ulmfit_jax.model.lstm import (
    LSTMLayer,
    LSTMState,
    input_projection_time_major,
    recurrence_time_major,
)

EncoderState = tuple[LSTMState, ...]


class EncoderMasks(Protocol):
    """The four encoder mask kinds (see `dropout.LMDropoutMasks`)."""

    embed: jax.Array
    input: jax.Array
    hidden: tuple[jax.Array, ...]
    weight: tuple[jax.Array, ...]


class EncoderWeights(NamedTuple):
    """Plain arrays of an encoder: embedding [vocab, emb]; layers of (w_ih, w_hh, bias)."""

    embedding: jax.Array
    layers: tuple[tuple[jax.Array, jax.Array, jax.Array], ...]


def zero_state(config: AWDLSTMConfig, batch_size: int) -> EncoderState:
    """All-zero hidden state: per layer (h, c), each [batch, hid_l]."""
    return tuple(
        (jnp.zeros((batch_size, n_out), jnp.float32), jnp.zeros((batch_size, n_out), jnp.float32))
        for _, n_out in config.layer_sizes()
    )


class AWDLSTMEncoder(nnx.Module):
    """Parameters: embedding [vocab, emb] and layers/{l} = `LSTMLayer`."""

    def __init__(self, config: AWDLSTMConfig, *, rngs: nnx.Rngs):
        self.config = config
        # fastai re-initialises the whole matrix (pad row included) with U(-0.1, 0.1).
        self.embedding = nnx.Param(
            jax.random.uniform(
                rngs.params(), (config.vocab_size, config.emb_size), jnp.float32, -0.1, 0.1
            )
        )
        self.layers = nnx.List(
            [LSTMLayer(n_in, n_out, rngs=rngs) for n_in, n_out in config.layer_sizes()]
        )

    def weights(self) -> EncoderWeights:
        """The parameters as plain arrays (traceable, differentiable)."""
        layers = tuple((lay.w_ih[...], lay.w_hh[...], lay.bias[...]) for lay in self.layers)
        return EncoderWeights(self.embedding[...], layers)

    def __call__(
        self,
        ids: jax.Array,
        state: EncoderState | None = None,
        masks: EncoderMasks | None = None,
        step_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, EncoderState]:
        """ids [batch, time] -> raw last-layer output [batch, time, emb] and the new state."""
        return encode(self.weights(), self.config, ids, state, masks, step_mask)


def embed_tokens(
    embedding: jax.Array, ids: jax.Array, pad_id: int, row_mask: jax.Array | None
) -> jax.Array:
    """Rows of the (row-dropped) embedding: ids [...] -> [..., emb].

    Gathers first and scales by the gathered row mask, so the dropped [vocab, emb] matrix is
    never built. The pad row gets no gradient through the lookup, as torch's `padding_idx`.
    """
    rows = jnp.take(embedding, ids, axis=0)
    if row_mask is not None:
        rows = rows * jnp.take(row_mask, ids, axis=0)[..., None]
    return jnp.where((ids == pad_id)[..., None], jax.lax.stop_gradient(rows), rows)


def encode(
    weights: EncoderWeights,
    config: AWDLSTMConfig,
    ids: jax.Array,
    state: EncoderState | None = None,
    masks: EncoderMasks | None = None,
    step_mask: jax.Array | None = None,
) -> tuple[jax.Array, EncoderState]:
    """Pure encoder forward.

    ids [batch, time] int; state per layer (h, c) [batch, hid_l] or None (zeros); masks None =
    eval; step_mask [batch, time] bool, False leaves the state untouched (leading padding).
    Returns the raw (undropped) last-layer output [batch, time, emb] and the new state.
    """
    if ids.ndim != 2:
        raise ValueError(f"ids must be [batch, time], got shape {ids.shape}")
    if state is None:
        state = zero_state(config, ids.shape[0])
    # The layers run time-major ([time, batch, ...]), the scan's layout, so the only layout
    # changes are the ids on the way in and the last output on the way out.
    x = embed_tokens(
        weights.embedding, ids.T, config.pad_id, None if masks is None else masks.embed
    )
    if masks is not None:
        x = x * masks.input[None, :, :]
    steps = None if step_mask is None else step_mask.T
    new_state = []
    last = len(weights.layers) - 1
    for layer, (w_ih, w_hh, bias) in enumerate(weights.layers):
        x, layer_state = _run_layer(x, state[layer], w_ih, w_hh, bias, masks, layer, steps, config)
        new_state.append(layer_state)
        if masks is not None and layer != last:
            x = x * masks.hidden[layer][None, :, :]
    return jnp.swapaxes(x, 0, 1), tuple(new_state)


def _run_layer(
    x: jax.Array,
    state: LSTMState,
    w_ih: jax.Array,
    w_hh: jax.Array,
    bias: jax.Array,
    masks: EncoderMasks | None,
    layer: int,
    step_mask: jax.Array | None,
    config: AWDLSTMConfig,
) -> tuple[jax.Array, LSTMState]:
    """One layer, time-major: x [time, batch, in], step_mask [time, batch] -> [time, batch, hid]."""
    if masks is not None:
        w_hh = w_hh * masks.weight[layer]  # DropConnect before any kernel sees W_hh
    if resolve_lstm_impl(config.lstm_impl, config.compute_dtype) == "cudnn":
        return cudnn_layer(x, state, w_ih, w_hh, bias, step_mask)
    projected = input_projection_time_major(x, w_ih, bias, config.compute_dtype)
    return recurrence_time_major(projected, state, w_hh, step_mask, config.compute_dtype)


def stop_gradient_weights(weights: EncoderWeights) -> EncoderWeights:
    """The same weights with gradients cut (for the BPT3C prefix that gets no backward)."""
    return jax.tree_util.tree_map(jax.lax.stop_gradient, weights)
