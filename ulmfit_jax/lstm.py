"""One single-layer LSTM with PyTorch semantics, written for speed.

The input projection of the whole window is one matmul before the time loop; the loop is a
`jax.lax.scan` whose body does one fused 4-gate recurrent matmul. Gate order is PyTorch's
i, f, g, o and the single bias is PyTorch's `bias_ih + bias_hh`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

LSTMState = tuple[jax.Array, jax.Array]


def _uniform(key: jax.Array, shape: tuple[int, ...], bound: float) -> jax.Array:
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class LSTMLayer(nnx.Module):
    """Parameters: w_ih [in, 4*hid], w_hh [hid, 4*hid] (raw, before DropConnect), bias [4*hid]."""

    def __init__(self, n_in: int, n_hidden: int, *, rngs: nnx.Rngs):
        # PyTorch's nn.LSTM init: every weight and both biases ~ U(-1/sqrt(hid), 1/sqrt(hid)).
        bound = 1.0 / float(n_hidden) ** 0.5
        self.n_hidden = n_hidden
        self.w_ih = nnx.Param(_uniform(rngs.params(), (n_in, 4 * n_hidden), bound))
        self.w_hh = nnx.Param(_uniform(rngs.params(), (n_hidden, 4 * n_hidden), bound))
        b_ih = _uniform(rngs.params(), (4 * n_hidden,), bound)
        b_hh = _uniform(rngs.params(), (4 * n_hidden,), bound)
        self.bias = nnx.Param(b_ih + b_hh)

    def __call__(
        self,
        x: jax.Array,
        state: LSTMState,
        weight_mask: jax.Array | None = None,
        step_mask: jax.Array | None = None,
        compute_dtype: Any = jnp.float32,
    ) -> tuple[jax.Array, LSTMState]:
        """Run the window.

        x [batch, time, in]; state (h, c) each [batch, hid]; weight_mask [hid, 4*hid] DropConnect
        mask (None = no dropout); step_mask [batch, time] bool, False keeps the state unchanged
        (used for leading padding). Returns outputs [batch, time, hid] and the final state.
        """
        w_hh = self.w_hh[...]
        if weight_mask is not None:
            w_hh = w_hh * weight_mask
        projected = input_projection(x, self.w_ih[...], self.bias[...], compute_dtype)
        return recurrence(projected, state, w_hh, step_mask, compute_dtype)


def input_projection(
    x: jax.Array, w_ih: jax.Array, bias: jax.Array, compute_dtype: Any = jnp.float32
) -> jax.Array:
    """x [batch, time, in] @ w_ih [in, 4*hid] + bias -> time-major [time, batch, 4*hid]."""
    x_tm = jnp.swapaxes(x, 0, 1).astype(compute_dtype)
    out = jnp.matmul(x_tm, w_ih.astype(compute_dtype), preferred_element_type=jnp.float32)
    return out + bias


def _cell(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
    return h_new, c_new


def recurrence(
    projected: jax.Array,
    state: LSTMState,
    w_hh: jax.Array,
    step_mask: jax.Array | None = None,
    compute_dtype: Any = jnp.float32,
) -> tuple[jax.Array, LSTMState]:
    """Scan the LSTM cell over time.

    projected [time, batch, 4*hid] (input projection + bias); w_hh [hid, 4*hid] (already
    dropped); step_mask [batch, time] bool or None. Returns [batch, time, hid] and (h, c).
    """
    w = w_hh.astype(compute_dtype)

    def step(carry: LSTMState, xs: tuple[jax.Array, jax.Array | None]):
        h, c = carry
        x_t, m_t = xs
        gates = x_t + jnp.matmul(h.astype(compute_dtype), w, preferred_element_type=jnp.float32)
        h_new, c_new = _cell(gates, c)
        if m_t is not None:
            keep = m_t[:, None]
            h_new, c_new = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
        return (h_new, c_new), h_new

    masks_tm = None if step_mask is None else jnp.swapaxes(step_mask, 0, 1)
    (h, c), outputs = jax.lax.scan(step, state, (projected, masks_tm))
    return jnp.swapaxes(outputs, 0, 1), (h, c)
