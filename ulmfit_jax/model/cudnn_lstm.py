"""One LSTM layer on cuDNN's fused kernel (`jax.experimental.rnn.lstm`), in our weight layout.

fastai runs its LSTMs on cuDNN; a `lax.scan` issues one small matmul per time step instead.
`jax.experimental.rnn.lstm` has GPU lowerings only, so it is called one layer at a time (the
AWD-LSTM's widths differ per layer) with:
- weights packed in cuDNN's flat layout for one layer: W_ih [4h, in], W_hh [4h, h], b_ih [4h],
  b_hh [4h], gates i, f, g, o as PyTorch. Our single bias is PyTorch's sum, packed as b_ih with
  a zero b_hh; W_hh arrives after DropConnect (the AWD dropouts stay outside the kernel);
- the classifier's `step_mask` (False before a row's first token, and after the batch's last
  one): each row's leading steps moved to its end, where cuDNN's `seq_lengths` ignore them
  with its trailing ones: the state then stays untouched there, as in the scan, and outputs
  are shifted back. Masks must be one run of steps per row.
cuDNN's LSTM is float32 only (jax raises for bfloat16). On an H200 it was slower than the scan,
so `auto` does not pick it (`lstm_impl.py`).
CPU tests pass jax's own pure-JAX `lstm_ref` (behind jax's `unpack_lstm_weights`) as `lstm_fn`,
which checks the packing, the state layout and the masking against the scan without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental import rnn

from ulmfit_jax.model.lstm import LSTMState

LSTMFn = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]


def on_cuda() -> bool:
    """Whether jax's default device is a CUDA GPU, the only place cuDNN's LSTM runs."""
    device = jax.devices()[0]
    return device.platform == "gpu" and "cuda" in device.client.platform_version.lower()


def pack_weights(w_ih: jax.Array, w_hh: jax.Array, bias: jax.Array) -> jax.Array:
    """Our layer (w_ih [in, 4h], w_hh [h, 4h], bias [4h]) as cuDNN's flat one-layer weights."""
    return jnp.concatenate([w_ih.T.ravel(), w_hh.T.ravel(), bias, jnp.zeros_like(bias)])


def cudnn_layer(
    x: jax.Array,
    state: LSTMState,
    w_ih: jax.Array,
    w_hh: jax.Array,
    bias: jax.Array,
    step_mask: jax.Array | None = None,
    lstm_fn: LSTMFn = rnn.lstm,
) -> tuple[jax.Array, LSTMState]:
    """x [time, batch, in] -> outputs [time, batch, hid] and the final (h, c), like the scan.

    step_mask [time, batch] bool: True on one run of steps per row (False on its leading and
    trailing padding) or None.
    """
    time, batch, n_in = x.shape
    hidden = w_hh.shape[0]
    h0, c0 = state
    if step_mask is None:
        taken, skipped = jnp.full(batch, time, jnp.int32), jnp.zeros(batch, jnp.int32)
    else:
        taken = jnp.sum(step_mask, axis=0, dtype=jnp.int32)
        skipped = jnp.where(taken > 0, jnp.argmax(step_mask, axis=0), time).astype(jnp.int32)
    x_bm = _shift_rows(jnp.swapaxes(x, 0, 1), skipped)
    # A row with no real step still runs one (cuDNN needs length >= 1); its state is kept below.
    lengths = jnp.maximum(taken, 1)
    y, h, c = lstm_fn(x_bm.astype(jnp.float32), h0[None], c0[None],
                      pack_weights(w_ih, w_hh, bias), lengths, input_size=n_in,
                      hidden_size=hidden, num_layers=1, dropout=0.0, bidirectional=False)
    idle = (taken == 0)[:, None]
    h, c = jnp.where(idle, h0, h[0]), jnp.where(idle, c0, c[0])
    outputs = _unshift_rows(y, skipped, taken, h0, h)
    return jnp.swapaxes(outputs, 0, 1), (h, c)


def _shift_rows(x: jax.Array, skipped: jax.Array) -> jax.Array:
    """x [batch, time, ...] with row b moved left by skipped[b] (its leading steps dropped)."""
    time = x.shape[1]
    index = jnp.minimum(jnp.arange(time)[None, :] + skipped[:, None], time - 1)
    return jnp.take_along_axis(x, index[:, :, None], axis=1)


def _unshift_rows(y: jax.Array, skipped: jax.Array, taken: jax.Array, h0: jax.Array,
                  h: jax.Array) -> jax.Array:
    """Inverse of `_shift_rows` for outputs [batch, time, hid] of rows that took `taken` steps;
    a step not taken outputs the untouched state, as the scan does: h0 before the row's run,
    its final h after it."""
    time = y.shape[1]
    steps = jnp.arange(time)[None, :]
    index = jnp.clip(steps - skipped[:, None], 0, time - 1)
    moved = jnp.take_along_axis(y, index[:, :, None], axis=1)
    moved = jnp.where((steps >= (skipped + taken)[:, None])[:, :, None], h[:, None, :], moved)
    return jnp.where((steps < skipped[:, None])[:, :, None], h0[:, None, :], moved)
