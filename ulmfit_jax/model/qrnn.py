"""The AWD-QRNN encoder (encoder kind "qrnn"): embedding + stacked QRNN layers + AWD dropouts.

A QRNN layer (Bradbury et al. 2016, "Quasi-Recurrent Neural Networks"), as fastai v1's
`QRNNLayer` and early fastai v2's `AWD_QRNN` define it (fastai/text/models/qrnn.py,
awd_lstm.py):
- one linear map over a causal window of the input: window 2 sees each step's input next to
  the previous step's (`[x_t, x_{t-1}]`; before the first step the last input of the previous
  call when the layer saves it, `save_prev_x`, else zeros), window 1 the input alone;
- its output splits into z, f, o: `z = tanh`, `f = sigmoid` (times a zoneout dropout mask in
  training), `o` the output gate;
- the forget-mult `c_t = f_t z_t + (1 - f_t) c_{t-1}` (`forget_mult.py`, a parallel scan),
  and the output `sigmoid(o_t) * c_t`. The carried state is the last `c` (and the saved input).
`AWD_QRNN` stacks one such layer per AWD layer, window 2 for layer 0 and 1 after, with the
AWD-LSTM's embedding, input and between-layer dropouts and DropConnect on each layer's whole
linear weight (fastai's `WeightDropout(linear, weight_p, 'weight')`; the bias is not dropped).

All matrix work happens outside the recurrence, so a layer is two big matmul-shaped steps
around a log-depth scan. Parameters: `encoder/embedding` [vocab, emb] and per layer
`encoder/layers/{l}/kernel` [window_l * in_l, 3 * hid_l] (rows: the current input, then the
previous one; columns: z, f, o) and `encoder/layers/{l}/bias` [3 * hid_l].
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.model.dropout import dropout_mask, embed_tokens
from ulmfit_jax.model.forget_mult import forget_mult

KIND = "qrnn"
# Per layer: (c [batch, hid_l],) or, for a window-2 layer that saves its previous input,
# (c, prev_input [batch, in_l]).
QRNNLayerState = tuple[jax.Array, ...]
QRNNState = tuple[QRNNLayerState, ...]


class QRNNWeights(NamedTuple):
    """Plain arrays of an encoder: embedding [vocab, emb]; layers of (kernel, bias)."""

    embedding: jax.Array
    layers: tuple[tuple[jax.Array, jax.Array], ...]


@struct.dataclass
class QRNNMasks:
    """The encoder's AWD dropout masks for one forward call (scaled by 1 / (1 - p)).

    embed: [vocab] row mask; input: [batch, emb]; hidden: tuple over layers 0..n-2 of
    [batch, hid_l]; weight: tuple over layers of [window_l * in_l, 3 * hid_l] (DropConnect on
    the kernel); zoneout_keys: one PRNG key per batch row when `qrnn_zoneout` > 0, else None
    (the zoneout mask is [batch, time, hid_l], so it is drawn from them for the length at hand).
    """

    embed: jax.Array
    input: jax.Array
    hidden: tuple[jax.Array, ...]
    weight: tuple[jax.Array, ...]
    zoneout_keys: jax.Array | None = None


def layer_windows(config: AWDLSTMConfig) -> list[int]:
    """Each layer's input window: `qrnn_window` for layer 0, 1 after (fastai's AWD_QRNN)."""
    return [config.qrnn_window if layer == 0 else 1 for layer in range(config.n_layers)]


def _saves_input(config: AWDLSTMConfig, window: int) -> bool:
    return window == 2 and config.qrnn_save_prev_x


def zero_state(config: AWDLSTMConfig, batch_size: int) -> QRNNState:
    """All-zero state: per layer c [batch, hid_l], plus the saved input [batch, in_l] of a
    window-2 layer with `qrnn_save_prev_x`."""
    state: list[QRNNLayerState] = []
    for (n_in, n_out), window in zip(config.layer_sizes(), layer_windows(config), strict=True):
        cell = jnp.zeros((batch_size, n_out), jnp.float32)
        if _saves_input(config, window):
            state.append((cell, jnp.zeros((batch_size, n_in), jnp.float32)))
        else:
            state.append((cell,))
    return tuple(state)


def sample_masks(key: jax.Array, config: AWDLSTMConfig, batch_size: int) -> QRNNMasks:
    """Draw the embedding-row, input, between-layer hidden, DropConnect and zoneout masks."""
    sizes, windows = config.layer_sizes(), layer_windows(config)
    keys = jax.random.split(key, 3 + 2 * len(sizes))
    embed = dropout_mask(keys[0], (config.vocab_size,), config.embed_dropout)
    inp = dropout_mask(keys[1], (batch_size, config.emb_size), config.input_dropout)
    hidden = tuple(
        dropout_mask(keys[3 + layer], (batch_size, n_out), config.hidden_dropout)
        for layer, (_, n_out) in enumerate(sizes[:-1])
    )
    weight = tuple(
        dropout_mask(keys[3 + len(sizes) + layer], (window * n_in, 3 * n_out),
                     config.weight_dropout)
        for layer, ((n_in, n_out), window) in enumerate(zip(sizes, windows, strict=True))
    )
    zoneout = jax.random.split(keys[2], batch_size) if config.qrnn_zoneout > 0 else None
    return QRNNMasks(embed=embed, input=inp, hidden=hidden, weight=weight, zoneout_keys=zoneout)


def zoneout_masks(
    masks: QRNNMasks, config: AWDLSTMConfig, time: int
) -> tuple[jax.Array, ...] | None:
    """Each layer's zoneout mask [batch, time, hid_l] (fastai's `dropout_mask` on the forget
    gate: Bernoulli(1 - p) / (1 - p)), from the masks' per-row keys; None without zoneout."""
    keys = masks.zoneout_keys
    if keys is None:
        return None
    p = config.qrnn_zoneout

    def draw(layer: int, n_out: int) -> jax.Array:
        def row(key: jax.Array) -> jax.Array:
            return dropout_mask(jax.random.fold_in(key, layer), (time, n_out), p)

        return jax.vmap(row)(keys)

    return tuple(draw(layer, n_out) for layer, (_, n_out) in enumerate(config.layer_sizes()))


def encode(
    weights: QRNNWeights,
    config: AWDLSTMConfig,
    ids: jax.Array,
    state: QRNNState | None = None,
    masks: QRNNMasks | None = None,
    step_mask: jax.Array | None = None,
) -> tuple[jax.Array, QRNNState]:
    """Pure encoder forward.

    ids [batch, time] int; state as `zero_state` gives, or None (zeros); masks None = eval;
    step_mask [batch, time] bool, False leaves the state (cells and saved input) untouched.
    Returns the raw (undropped) last-layer output [batch, time, emb] and the new state.
    """
    if ids.ndim != 2:
        raise ValueError(f"ids must be [batch, time], got shape {ids.shape}")
    if state is None:
        state = zero_state(config, ids.shape[0])
    # Time-major inside, as the scan wants it.
    x = embed_tokens(
        weights.embedding, ids.T, config.pad_id, None if masks is None else masks.embed
    )
    if masks is not None:
        x = x * masks.input[None, :, :]
    steps = None if step_mask is None else step_mask.T
    zoneouts = None if masks is None else zoneout_masks(masks, config, ids.shape[1])
    new_state = []
    last = len(weights.layers) - 1
    for layer, ((kernel, bias), window) in enumerate(
        zip(weights.layers, layer_windows(config), strict=True)
    ):
        if masks is not None:
            kernel = kernel * masks.weight[layer]  # DropConnect, once per forward call
        zoneout = None if zoneouts is None else jnp.swapaxes(zoneouts[layer], 0, 1)
        x, layer_state = qrnn_layer(x, state[layer], kernel, bias, window, steps, zoneout,
                                    config.compute_dtype)
        new_state.append(layer_state)
        if masks is not None and layer != last:
            x = x * masks.hidden[layer][None, :, :]
    return jnp.swapaxes(x, 0, 1), tuple(new_state)


def qrnn_layer(
    x: jax.Array,
    state: QRNNLayerState,
    kernel: jax.Array,
    bias: jax.Array,
    window: int,
    step_mask: jax.Array | None = None,
    zoneout: jax.Array | None = None,
    compute_dtype: Any = jnp.float32,
) -> tuple[jax.Array, QRNNLayerState]:
    """One QRNN layer, time-major: x [time, batch, in] -> output [time, batch, hid], new state.

    state: (c [batch, hid],) or (c, saved input [batch, in]) (window 2 saving its input; a
    window-2 layer without it starts from zeros each call); kernel [window * in, 3 * hid]
    (already dropped), bias [3 * hid]; step_mask [time, batch] bool or None; zoneout
    [time, batch, hid] scaled mask on the forget gate, or None.
    """
    c0 = state[0]
    source = x
    if window == 2:
        saved = state[1] if len(state) > 1 else jnp.zeros(x.shape[1:], x.dtype)
        source = jnp.concatenate([x, previous_inputs(x, saved, step_mask)], axis=-1)
    gates = jnp.matmul(source.astype(compute_dtype), kernel.astype(compute_dtype),
                       preferred_element_type=jnp.float32) + bias
    z, f, o = jnp.split(gates, 3, axis=-1)
    z, f = jnp.tanh(z), jax.nn.sigmoid(f)
    if zoneout is not None:
        f = f * zoneout
    cells = forget_mult(f, z, c0, step_mask)
    output = jax.nn.sigmoid(o) * cells
    if len(state) > 1:
        return output, (cells[-1], last_input(x, state[1], step_mask))
    return output, (cells[-1],)


def _last_active(step_mask: jax.Array) -> jax.Array:
    """[time, batch]: index of the latest unmasked step at or before t, -1 if none."""
    positions = jnp.arange(step_mask.shape[0])[:, None]
    return jax.lax.cummax(jnp.where(step_mask, positions, -1), axis=0)


def previous_inputs(x: jax.Array, saved: jax.Array, step_mask: jax.Array | None) -> jax.Array:
    """The input each step's window sees before its own: x [time, batch, in], saved
    [batch, in] (before the first step) -> [time, batch, in]. Masked steps are skipped: a
    step sees the latest unmasked input before it, or `saved`."""
    if step_mask is None:
        return jnp.concatenate([saved[None], x[:-1]], axis=0)
    latest = _last_active(step_mask)
    before = jnp.concatenate([jnp.full_like(latest[:1], -1), latest[:-1]], axis=0)
    gathered = jnp.take_along_axis(x, jnp.maximum(before, 0)[:, :, None], axis=0)
    return jnp.where((before >= 0)[:, :, None], gathered, saved[None])


def last_input(x: jax.Array, saved: jax.Array, step_mask: jax.Array | None) -> jax.Array:
    """The input a window-2 layer saves for the next call: the last unmasked step's
    [batch, in] (`saved` when every step is masked)."""
    if step_mask is None:
        return x[-1]
    latest = _last_active(step_mask)[-1]
    gathered = jnp.take_along_axis(x, jnp.maximum(latest, 0)[None, :, None], axis=0)[0]
    return jnp.where((latest >= 0)[:, None], gathered, saved)


class QRNNLayer(nnx.Module):
    """Parameters: kernel [window * in, 3 * hid] (raw, before DropConnect), bias [3 * hid]."""

    def __init__(self, n_in: int, n_hidden: int, window: int, *, rngs: nnx.Rngs):
        # torch's nn.Linear init, as fastai's QRNN linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / float(window * n_in) ** 0.5
        shape = (window * n_in, 3 * n_hidden)
        self.kernel = nnx.Param(
            jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))
        self.bias = nnx.Param(
            jax.random.uniform(rngs.params(), (3 * n_hidden,), jnp.float32, -bound, bound))


class QRNNEncoder(nnx.Module):
    """Parameters: embedding [vocab, emb] and layers/{l} = `QRNNLayer` (kernel, bias)."""

    # fastai's QRNN linear has one bias, stepped once: nothing to multiply.
    fastai_step_multiplicity: tuple[tuple[str, float], ...] = ()

    def __init__(self, config: AWDLSTMConfig, *, rngs: nnx.Rngs):
        self.config = config
        # As the AWD-LSTM: fastai re-initialises the whole matrix with U(-0.1, 0.1).
        self.embedding = nnx.Param(
            jax.random.uniform(
                rngs.params(), (config.vocab_size, config.emb_size), jnp.float32, -0.1, 0.1
            )
        )
        self.layers = nnx.List([
            QRNNLayer(n_in, n_out, window, rngs=rngs)
            for (n_in, n_out), window in zip(config.layer_sizes(), layer_windows(config),
                                             strict=True)
        ])

    def weights(self) -> QRNNWeights:
        """The parameters as plain arrays (traceable, differentiable)."""
        layers = tuple((lay.kernel[...], lay.bias[...]) for lay in self.layers)
        return QRNNWeights(self.embedding[...], layers)

    def __call__(
        self,
        ids: jax.Array,
        state: QRNNState | None = None,
        masks: QRNNMasks | None = None,
        step_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, QRNNState]:
        """ids [batch, time] -> raw last-layer output [batch, time, emb] and the new state."""
        return encode(self.weights(), self.config, ids, state, masks, step_mask)

    # The pure functions of the `Encoder` protocol.
    encode = staticmethod(encode)
    zero_state = staticmethod(zero_state)
    sample_masks = staticmethod(sample_masks)
