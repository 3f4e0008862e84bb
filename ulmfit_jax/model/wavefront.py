"""The stacked LSTM as one layer wavefront: a single loop over T + L - 1 steps.

The per-layer scan runs layer 0 over all T steps, then layer 1, and so on: L * T dependent
loop iterations, each a small recurrent matmul that a GPU launches one after another. In a
wavefront, iteration s advances every layer at once, layer l at time t = s - l (as cuDNN
overlaps layers): the layers' matmuls inside one iteration do not depend on each other, so
the dependent chain falls to T + L - 1 iterations. The number of matmuls is unchanged: the
input projection of layers above the first moves into the loop, because layer l's input at
time t is produced by layer l - 1 one iteration earlier.

Exactly the per-layer recurrence (`lstm.recurrence_time_major`): PyTorch gates i, f, g, o, the
single summed bias, DropConnected W_hh passed in, variational dropout between layers, and a
step mask (False keeps a row's state and repeats its last output: the classifier's leading
padding). Gradients come from autodiff of the scan.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ulmfit_jax.model.lstm import (
    LSTMState,
    _cell_forward,
    _split_gates,
    input_projection_time_major,
)

LayerWeights = tuple[jax.Array, jax.Array, jax.Array]  # w_ih [in, 4*hid], w_hh (dropped), bias


def wavefront_lstm(
    x: jax.Array,
    states: Sequence[LSTMState],
    layers: Sequence[LayerWeights],
    hidden_masks: Sequence[jax.Array] | None = None,
    step_mask: jax.Array | None = None,
    compute_dtype: Any = jnp.float32,
) -> tuple[jax.Array, tuple[LSTMState, ...]]:
    """Stacked LSTMs over x [time, batch, in_0] in one wavefront loop.

    states: per layer (h, c) [batch, hid_l]; layers: per layer (w_ih, w_hh, bias) with w_hh
    already DropConnected; hidden_masks: per layer except the last, [batch, hid_l] multiplied
    into that layer's output before the next layer reads it (None: eval); step_mask
    [time, batch] bool or None. Returns the last layer's outputs [time, batch, hid_last] and the
    new state per layer.
    """
    n_layers, n_time = len(layers), x.shape[0]
    dtype = jnp.dtype(compute_dtype)
    w_ih0, _, bias0 = layers[0]
    projected0 = _pad_time(input_projection_time_major(x, w_ih0, bias0, dtype), n_layers - 1)
    keep = _layer_keep_masks(n_time, n_layers, x.shape[1], step_mask)
    inbox = tuple(jnp.zeros_like(states[l - 1][0]) for l in range(1, n_layers))

    def iteration(carry, xs):
        layer_states, inbox = carry
        proj0_s, keep_s = xs
        new_states, outputs = [], []
        for l, (w_ih, w_hh, bias) in enumerate(layers):
            gates_in = proj0_s if l == 0 else _project(inbox[l - 1], w_ih, bias, dtype)
            state = _cell(gates_in, layer_states[l], w_hh, keep_s[l], dtype)
            new_states.append(state)
            outputs.append(state[0])
        next_inbox = tuple(
            outputs[l] if hidden_masks is None else outputs[l] * hidden_masks[l]
            for l in range(n_layers - 1)
        )
        return (tuple(new_states), next_inbox), outputs[-1]

    (final, _), last = jax.lax.scan(iteration, (tuple(states), inbox), (projected0, keep))
    return last[n_layers - 1:], final


def _pad_time(a: jax.Array, extra: int) -> jax.Array:
    return jnp.pad(a, [(0, extra)] + [(0, 0)] * (a.ndim - 1))


def _layer_keep_masks(
    n_time: int, n_layers: int, batch: int, step_mask: jax.Array | None
) -> jax.Array:
    """[T + L - 1, L, batch] bool: whether layer l advances row b at iteration s (it is inside
    its window, s - l in [0, T), and the step mask lets time s - l through)."""
    steps = jnp.ones((n_time, batch), bool) if step_mask is None else step_mask.astype(bool)
    shifted = [jnp.pad(steps, [(l, n_layers - 1 - l), (0, 0)]) for l in range(n_layers)]
    return jnp.stack(shifted, axis=1)


def _project(x: jax.Array, w_ih: jax.Array, bias: jax.Array, dtype: Any) -> jax.Array:
    """One time step's input projection: x [batch, in] -> [batch, 4*hid] (float32)."""
    out = jnp.matmul(x.astype(dtype), w_ih.astype(dtype), preferred_element_type=jnp.float32)
    return out + bias


def _cell(
    gates_in: jax.Array, state: LSTMState, w_hh: jax.Array, keep: jax.Array, dtype: Any
) -> LSTMState:
    """One LSTM step; rows where `keep` [batch] is False keep their state."""
    h, c, _ = _cell_forward(_split_gates(gates_in), *state, w_hh, keep, dtype)
    return h, c
