"""The AWD-LSTM encoder (encoder kind "awd_lstm"): embedding + stacked LSTMs + AWD dropouts.

The module holds the parameters; the forward pass is the pure function `encode` on plain
arrays (`AWDLSTMWeights`), so the classifier can scan it over BPT3C chunks and run a
gradient-free prefix without touching module state. Which LSTM kernel runs each layer (the
scan of `lstm.py` or cuDNN's, `config.lstm_impl`) is this encoder's own detail. It satisfies
the `model.encoder.Encoder` protocol and is registered there.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.model.cudnn_lstm import cudnn_layer
from ulmfit_jax.model.dropout import dropout_mask, embed_tokens
from ulmfit_jax.model.lstm import (
    LSTMLayer,
    LSTMState,
    input_projection_time_major,
    recurrence_time_major,
)
from ulmfit_jax.model.lstm_impl import resolve_lstm_impl
from ulmfit_jax.model.wavefront import wavefront_lstm

KIND = "awd_lstm"
# Per layer (h, c), each [batch, hid_l].
AWDLSTMState = tuple[LSTMState, ...]
# Our single LSTM bias stands for fastai's two tensors `bias_ih` + `bias_hh`. Both receive the
# same gradient, so fastai's Adam moves each by the same step and their sum by twice it; the
# global gradient norm also counts that gradient twice. Multiplicity 2 reproduces both.
FASTAI_FUSED_BIAS_MULTIPLICITY: tuple[tuple[str, float], ...] = ((r"encoder/layers/\d+/bias", 2.0),)


class AWDLSTMWeights(NamedTuple):
    """Plain arrays of an encoder: embedding [vocab, emb]; layers of (w_ih, w_hh, bias)."""

    embedding: jax.Array
    layers: tuple[tuple[jax.Array, jax.Array, jax.Array], ...]


@struct.dataclass
class AWDLSTMMasks:
    """The encoder's four AWD dropout masks for one forward call (scaled by 1 / (1 - p)).

    embed: [vocab] row mask; input: [batch, emb]; hidden: tuple over layers 0..n-2 of
    [batch, hid_l]; weight: tuple over layers of [hid_l, 4 * hid_l] (DropConnect on w_hh).
    """

    embed: jax.Array
    input: jax.Array
    hidden: tuple[jax.Array, ...]
    weight: tuple[jax.Array, ...]


def zero_state(config: AWDLSTMConfig, batch_size: int) -> AWDLSTMState:
    """All-zero hidden state: per layer (h, c), each [batch, hid_l]."""
    return tuple(
        (jnp.zeros((batch_size, n_out), jnp.float32), jnp.zeros((batch_size, n_out), jnp.float32))
        for _, n_out in config.layer_sizes()
    )


def sample_masks(key: jax.Array, config: AWDLSTMConfig, batch_size: int) -> AWDLSTMMasks:
    """Draw the embedding-row, input, between-layer hidden and DropConnect masks."""
    sizes = config.layer_sizes()
    keys = jax.random.split(key, 2 + 2 * len(sizes))
    embed = dropout_mask(keys[0], (config.vocab_size,), config.embed_dropout)
    inp = dropout_mask(keys[1], (batch_size, config.emb_size), config.input_dropout)
    hidden = tuple(
        dropout_mask(keys[2 + layer], (batch_size, n_out), config.hidden_dropout)
        for layer, (_, n_out) in enumerate(sizes[:-1])
    )
    weight = tuple(
        dropout_mask(keys[2 + len(sizes) + layer], (n_out, 4 * n_out), config.weight_dropout)
        for layer, (_, n_out) in enumerate(sizes)
    )
    return AWDLSTMMasks(embed=embed, input=inp, hidden=hidden, weight=weight)


def encode(
    weights: AWDLSTMWeights,
    config: AWDLSTMConfig,
    ids: jax.Array,
    state: AWDLSTMState | None = None,
    masks: AWDLSTMMasks | None = None,
    step_mask: jax.Array | None = None,
) -> tuple[jax.Array, AWDLSTMState]:
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
    if resolve_lstm_impl(config.lstm_impl, config.compute_dtype) == "wavefront":
        x, wave_state = _run_wavefront(x, state, weights.layers, masks, steps, config)
        return jnp.swapaxes(x, 0, 1), wave_state
    new_state = []
    last = len(weights.layers) - 1
    for layer, (w_ih, w_hh, bias) in enumerate(weights.layers):
        x, layer_state = _run_layer(x, state[layer], w_ih, w_hh, bias, masks, layer, steps, config)
        new_state.append(layer_state)
        if masks is not None and layer != last:
            x = x * masks.hidden[layer][None, :, :]
    return jnp.swapaxes(x, 0, 1), tuple(new_state)


class AWDLSTMEncoder(nnx.Module):
    """Parameters: embedding [vocab, emb] and layers/{l} = `LSTMLayer` (w_ih, w_hh, bias)."""

    # What the optimizer must know to reproduce fastai's updates of these parameters.
    fastai_step_multiplicity = FASTAI_FUSED_BIAS_MULTIPLICITY

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

    def weights(self) -> AWDLSTMWeights:
        """The parameters as plain arrays (traceable, differentiable)."""
        layers = tuple((lay.w_ih[...], lay.w_hh[...], lay.bias[...]) for lay in self.layers)
        return AWDLSTMWeights(self.embedding[...], layers)

    def __call__(
        self,
        ids: jax.Array,
        state: AWDLSTMState | None = None,
        masks: AWDLSTMMasks | None = None,
        step_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, AWDLSTMState]:
        """ids [batch, time] -> raw last-layer output [batch, time, emb] and the new state."""
        return encode(self.weights(), self.config, ids, state, masks, step_mask)

    # The pure functions of the `Encoder` protocol.
    encode = staticmethod(encode)
    zero_state = staticmethod(zero_state)
    sample_masks = staticmethod(sample_masks)


def _run_layer(
    x: jax.Array,
    state: LSTMState,
    w_ih: jax.Array,
    w_hh: jax.Array,
    bias: jax.Array,
    masks: AWDLSTMMasks | None,
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


def _run_wavefront(
    x: jax.Array,
    state: AWDLSTMState,
    layers: tuple[tuple[jax.Array, jax.Array, jax.Array], ...],
    masks: AWDLSTMMasks | None,
    step_mask: jax.Array | None,
    config: AWDLSTMConfig,
) -> tuple[jax.Array, AWDLSTMState]:
    """All layers in one wavefront loop, time-major: x [time, batch, emb] -> [time, batch, emb]."""
    if masks is not None:  # DropConnect before the loop, once per forward call as in the scan
        layers = tuple((w_ih, w_hh * drop, bias)
                       for (w_ih, w_hh, bias), drop in zip(layers, masks.weight, strict=True))
    hidden = None if masks is None else tuple(masks.hidden[: len(layers) - 1])
    return wavefront_lstm(x, state, layers, hidden, step_mask, config.compute_dtype)
