"""One single-layer LSTM with PyTorch semantics, written for speed.

The input projection of the whole window is one matmul before the time loop; the loop is a
`jax.lax.scan` whose body does one fused 4-gate recurrent matmul. Gate order is PyTorch's
i, f, g, o and the single bias is PyTorch's `bias_ih + bias_hh`.

The recurrence has a hand-written VJP. Autodiff of a scan accumulates the gradient of W_hh
inside the backward loop: one [hid, 4*hid] read-modify-write per time step, which dominates
the backward pass on CPU. Here the backward loop only emits the per-step gate gradients and
W_hh's gradient is one [hid, batch*time] @ [batch*time, 4*hid] matmul after it.

XLA:CPU compiles a loop fusion that reads one dynamically indexed slice at several offsets
(`projected[t]` split four ways) to slow code. So on a CPU some loops read one array per gate,
[time, batch, hid] each, split before the loop: the unmasked forward pass without residuals
(a forward step at the quickstart's size, hidden 256, took 1.1-1.4x as long the other way)
and, on the classifier's loop over taken steps, the forward pass that saves residuals and the
backward pass (about 1.07x). The other loops measured as fast or faster packed and stay so
(benchmarks/RESULTS.md); results are the same bit for bit either way. Other platforms keep the
packed loops, measured there (`lax.platform_dependent`). The backward pass's residuals are
packed on every platform.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ulmfit_jax.model.precision import active_matmul_precision, matmul_precision

LSTMState = tuple[jax.Array, jax.Array]
# Per-gate arrays i, f, g, o (PyTorch's order), each [..., hid].
Gates = tuple[jax.Array, ...]
# (compute dtype, matmul precision) of the hand-written recurrence, static in its custom VJP.
Kernel = tuple[Any, "str | None"]


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


def input_projection_time_major(
    x_tm: jax.Array, w_ih: jax.Array, bias: jax.Array, compute_dtype: Any = jnp.float32
) -> jax.Array:
    """x [time, batch, in] @ w_ih [in, 4*hid] + bias -> [time, batch, 4*hid] (float32)."""
    out = jnp.matmul(
        x_tm.astype(compute_dtype), w_ih.astype(compute_dtype), preferred_element_type=jnp.float32
    )
    return out + bias


def recurrence_time_major(
    projected: jax.Array,
    state: LSTMState,
    w_hh: jax.Array,
    step_mask: jax.Array | None = None,
    compute_dtype: Any = jnp.float32,
) -> tuple[jax.Array, LSTMState]:
    """Scan the LSTM cell over time: projected [time, batch, 4*hid] (input projection + bias),
    w_hh [hid, 4*hid] (already dropped), step_mask [time, batch] bool or None (False keeps the
    state unchanged: leading padding) -> outputs [time, batch, hid] and the final (h, c)."""
    h0, c0 = state
    # The backward pass is traced later, outside the caller's precision context: it re-enters
    # the precision the forward saw (model/precision.py).
    kernel = (jnp.dtype(compute_dtype), active_matmul_precision())
    if step_mask is None:
        outputs, h, c = _lstm_scan(kernel, projected, h0, c0, w_hh)
    else:
        outputs, h, c = _lstm_scan_masked(kernel, projected, h0, c0, w_hh, step_mask)
    return outputs, (h, c)


def _recurrent_matmul(h: jax.Array, w: jax.Array, dtype: Any) -> jax.Array:
    return jnp.matmul(h.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _split_gates(projected: jax.Array) -> Gates:
    """[..., 4*hid] -> its i, f, g, o parts, each [..., hid]."""
    return tuple(jnp.split(projected, 4, axis=-1))


def _cell_forward(x_t: Gates, h: jax.Array, c: jax.Array, w: jax.Array,
                  m_t: jax.Array | None, dtype: Any) -> tuple[jax.Array, jax.Array, Gates]:
    """One time step: the step's input projection per gate (4 x [batch, hid]) and (h, c)
    [batch, hid] -> new (h, c) and the activated gates (i, f, g, o); rows where `m_t` [batch]
    is False keep their state."""
    recurrent = _split_gates(_recurrent_matmul(h, w, dtype))
    i, f, g, o = (r + x for r, x in zip(recurrent, x_t, strict=True))
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * jnp.tanh(c_new)
    if m_t is not None:
        keep = m_t[:, None]
        h_new, c_new = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
    return h_new, c_new, (i, f, g, o)


def _cell_backward(
    dh: jax.Array, dc_next: jax.Array, acts_t: Gates, c_t: jax.Array, c_prev: jax.Array,
    m_t: jax.Array | None, w_t: jax.Array, dtype: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One step back: the gradient of the step's h (its output's and the next step's) and c
    -> of the previous (h, c), and of the gate pre-activations [batch, 4*hid]."""
    i, f, g, o = acts_t
    tanh_c = jnp.tanh(c_t)
    dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
    d_gates = jnp.concatenate(
        [
            dc * g * i * (1.0 - i),
            dc * c_prev * f * (1.0 - f),
            dc * i * (1.0 - g * g),
            dh * tanh_c * o * (1.0 - o),
        ],
        axis=-1,
    )
    dh_prev = _recurrent_matmul(d_gates, w_t, dtype)
    dc_prev = dc * f
    if m_t is not None:
        # A skipped step copied the state through: its gradient passes straight back.
        keep = m_t[:, None]
        d_gates = jnp.where(keep, d_gates, 0.0)
        dh_prev, dc_prev = jnp.where(keep, dh_prev, dh), jnp.where(keep, dc_prev, dc_next)
    return dh_prev, dc_prev, d_gates


def _forward_scan(
    dtype: Any,
    projected: jax.Array,
    h0: jax.Array,
    c0: jax.Array,
    w: jax.Array,
    step_mask: jax.Array | None,
    save: bool,
    gate_arrays: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, tuple[jax.Array, jax.Array] | None]:
    """The time loop. Returns outputs [time, batch, hid], final h, c and, when `save`, the
    residuals of the backward pass: activated gates [time, batch, 4*hid] and cells
    [time, batch, hid]. With `gate_arrays` the loop reads the input projection as one array
    per gate (the module's docstring)."""
    w = w.astype(dtype)

    def step(carry, xs):
        x_t, m_t = xs
        h_new, c_new, acts = _cell_forward(x_t if gate_arrays else _split_gates(x_t), *carry,
                                           w, m_t, dtype)
        return (h_new, c_new), ((h_new, c_new, _packed(acts)) if save else h_new)

    xs = _split_gates(projected) if gate_arrays else projected
    (h, c), ys = jax.lax.scan(step, (h0, c0), (xs, step_mask))
    if save:
        outputs, cells, acts = ys
        return outputs, h, c, (acts, cells)
    return ys, h, c, None


def _packed(gates: Gates) -> jax.Array:
    return jnp.concatenate(gates, axis=-1)


def _backward_scan(
    dtype: Any,
    residuals: tuple,
    cotangents: tuple[jax.Array, jax.Array, jax.Array],
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Gradients of (outputs, h, c) -> of (projected, h0, c0, w)."""
    outputs, acts, cells, h0, c0, w, step_mask = residuals
    d_outputs, d_h, d_c = cotangents
    w_t = w.astype(dtype).T
    cells_prev = jnp.concatenate([c0[None], cells[:-1]], axis=0)

    def step(carry, xs):
        dh_next, dc_next = carry
        d_out, acts_t, c_t, c_prev, m_t = xs
        dh_prev, dc_prev, d_gates = _cell_backward(dh_next + d_out, dc_next,
                                                   _split_gates(acts_t), c_t, c_prev, m_t,
                                                   w_t, dtype)
        return (dh_prev, dc_prev), d_gates

    xs = (d_outputs, acts, cells, cells_prev, step_mask)
    (dh0, dc0), d_projected = jax.lax.scan(step, (d_h, d_c), xs, reverse=True)
    return d_projected, dh0, dc0, _w_gradient(dtype, d_projected, outputs, h0, w)


def _w_gradient(dtype: Any, d_projected: jax.Array, outputs: jax.Array, h0: jax.Array,
                w: jax.Array) -> jax.Array:
    """W_hh's gradient in one matmul over every step: [hid, batch*time] @ [batch*time, 4*hid]."""
    h_prev = jnp.concatenate([h0[None], outputs[:-1]], axis=0)
    d_w = jnp.einsum(
        "tbh,tbg->hg", h_prev.astype(dtype), d_projected.astype(dtype),
        preferred_element_type=jnp.float32,
    )
    return d_w.astype(w.dtype)


# --- masked steps on a CPU: only the steps some row takes ------------------------------------
# A step where every row is masked only copies the state (the classifier's batches: padding
# before every row's text, or after it). On a CPU the loop then runs just from the first step
# some row takes to the last; the skipped steps are filled in as masked steps would be. Other
# platforms keep the fixed-length scan: a loop whose length is data makes a GPU wait for it.


def _active_range(step_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[lo, hi): from the first step some row of step_mask [time, batch] takes to the last
    (lo = hi = 0 when none does)."""
    taken = jnp.any(step_mask, axis=1)
    steps = jnp.arange(step_mask.shape[0])
    hi = jnp.max(jnp.where(taken, steps + 1, 0))
    return jnp.minimum(jnp.min(jnp.where(taken, steps, step_mask.shape[0])), hi), hi


def _forward_active_steps(
    dtype: Any, projected: jax.Array, h0: jax.Array, c0: jax.Array, w: jax.Array,
    step_mask: jax.Array, save: bool, gate_arrays: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, tuple[jax.Array, jax.Array] | None]:
    """`_forward_scan` with a step mask, looping over `_active_range` only (same results)."""
    w = w.astype(dtype)
    lo, hi = _active_range(step_mask)
    gates = _split_gates(projected) if gate_arrays else ()
    time, batch, n_gates = projected.shape
    outputs = jnp.zeros((time, batch, n_gates // 4), jnp.float32)
    empty = jnp.zeros_like
    saved = None
    if save:
        saved = (tuple(map(empty, gates)) if gate_arrays else empty(projected), empty(outputs))

    def body(t, carry):
        h, c, outputs, saved = carry
        x_t = tuple(x[t] for x in gates) if gate_arrays else _split_gates(projected[t])
        h, c, acts = _cell_forward(x_t, h, c, w, step_mask[t], dtype)
        outputs = outputs.at[t].set(h)
        if saved is not None:
            if gate_arrays:
                written = tuple(s.at[t].set(a) for s, a in zip(saved[0], acts, strict=True))
            else:
                written = saved[0].at[t].set(_packed(acts))
            saved = (written, saved[1].at[t].set(c))
        return h, c, outputs, saved

    h, c, outputs, saved = jax.lax.fori_loop(lo, hi, body, (h0, c0, outputs, saved))
    before, after = _outside(time, lo, hi)
    outputs = jnp.where(before, h0, jnp.where(after, h, outputs))
    if saved is None:
        return outputs, h, c, None
    acts, cells = saved
    acts = _packed(acts) if gate_arrays else acts
    return outputs, h, c, (acts, jnp.where(before, c0, jnp.where(after, c, cells)))


def _backward_active_steps(
    dtype: Any, residuals: tuple, cotangents: tuple[jax.Array, jax.Array, jax.Array],
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """`_backward_scan` over `_active_range` only (same results), reading the activated gates
    as one array per gate."""
    outputs, acts, cells, h0, c0, w, step_mask = residuals
    acts = _split_gates(acts)
    d_outputs, d_h, d_c = cotangents
    w_t = w.astype(dtype).T
    lo, hi = _active_range(step_mask)
    before, after = _outside(outputs.shape[0], lo, hi)
    cells_prev = jnp.concatenate([c0[None], cells[:-1]], axis=0)
    # A skipped step's output is the state it copied: its gradient joins the state's.
    d_h = d_h + jnp.sum(jnp.where(after, d_outputs, 0.0), axis=0)

    def body(i, carry):
        dh_next, dc_next, d_projected = carry
        t = hi - 1 - i
        dh_prev, dc_prev, d_gates = _cell_backward(dh_next + d_outputs[t], dc_next,
                                                   tuple(a[t] for a in acts), cells[t],
                                                   cells_prev[t], step_mask[t], w_t, dtype)
        return dh_prev, dc_prev, d_projected.at[t].set(d_gates)

    d_projected = jnp.zeros(outputs.shape[:2] + (4 * outputs.shape[2],), jnp.float32)
    dh0, dc0, d_projected = jax.lax.fori_loop(0, hi - lo, body, (d_h, d_c, d_projected))
    dh0 = dh0 + jnp.sum(jnp.where(before, d_outputs, 0.0), axis=0)
    return d_projected, dh0, dc0, _w_gradient(dtype, d_projected, outputs, h0, w)


def _outside(time: int, lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[time, 1, 1] masks of the steps before `lo` and from `hi` on."""
    steps = jnp.arange(time)[:, None, None]
    return steps < lo, steps >= hi


def _unmasked_forward(dtype: Any, projected: jax.Array, h0: jax.Array, c0: jax.Array,
                      w: jax.Array, save: bool):
    if save:  # training: the packed loop everywhere (the module's docstring)
        return _forward_scan(dtype, projected, h0, c0, w, None, save=True)
    # Inference reads one array per gate on a CPU; other platforms keep the packed loop,
    # measured there (issue 16's GPU table).
    return jax.lax.platform_dependent(
        projected, h0, c0, w,
        cpu=functools.partial(_forward_scan, dtype, step_mask=None, save=False,
                              gate_arrays=True),
        default=functools.partial(_forward_scan, dtype, step_mask=None, save=False))


def _masked_forward(dtype: Any, projected: jax.Array, h0: jax.Array, c0: jax.Array,
                    w: jax.Array, step_mask: jax.Array, save: bool):
    return jax.lax.platform_dependent(
        projected, h0, c0, w, step_mask,
        cpu=functools.partial(_forward_active_steps, dtype, save=save, gate_arrays=save),
        default=functools.partial(_forward_scan, dtype, save=save))


def _masked_backward(dtype: Any, residuals: tuple, cotangents: tuple):
    return jax.lax.platform_dependent(
        residuals, cotangents,
        cpu=functools.partial(_backward_active_steps, dtype),
        default=functools.partial(_backward_scan, dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lstm_scan(
    kernel: Kernel, projected: jax.Array, h0: jax.Array, c0: jax.Array, w: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    outputs, h, c, _ = _unmasked_forward(kernel[0], projected, h0, c0, w, save=False)
    return outputs, h, c


def _lstm_scan_fwd(kernel, projected, h0, c0, w):
    outputs, h, c, (acts, cells) = _unmasked_forward(kernel[0], projected, h0, c0, w,
                                                     save=True)
    return (outputs, h, c), (outputs, acts, cells, h0, c0, w, None)


def _lstm_scan_bwd(kernel, residuals, cotangents):
    with matmul_precision(kernel[1]):
        return _backward_scan(kernel[0], residuals, cotangents)


_lstm_scan.defvjp(_lstm_scan_fwd, _lstm_scan_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lstm_scan_masked(
    kernel: Kernel, projected: jax.Array, h0: jax.Array, c0: jax.Array, w: jax.Array,
    step_mask: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    outputs, h, c, _ = _masked_forward(kernel[0], projected, h0, c0, w, step_mask, save=False)
    return outputs, h, c


def _lstm_scan_masked_fwd(kernel, projected, h0, c0, w, step_mask):
    outputs, h, c, (acts, cells) = _masked_forward(kernel[0], projected, h0, c0, w, step_mask,
                                                   save=True)
    return (outputs, h, c), (outputs, acts, cells, h0, c0, w, step_mask)


def _lstm_scan_masked_bwd(kernel, residuals, cotangents):
    with matmul_precision(kernel[1]):
        return (*_masked_backward(kernel[0], residuals, cotangents), None)


_lstm_scan_masked.defvjp(_lstm_scan_masked_fwd, _lstm_scan_masked_bwd)
