"""The QRNN's forget-mult, `c_t = f_t * z_t + (1 - f_t) * c_{t-1}`, as a parallel scan.

Bradbury et al. (2016), "Quasi-Recurrent Neural Networks", section 2 ("f-pooling"). The
forget-mult is the linear recurrence `c_t = a_t * c_{t-1} + b_t` with `a = 1 - f` and
`b = f * z`. Two steps compose into one of the same form,
`(a2, b2) o (a1, b1) = (a2 * a1, a2 * b1 + b2)`, and that composition is associative, so
`jax.lax.associative_scan` computes every `c_t` in log2(time) dependent steps instead of
`time` (the only sequential part of a QRNN; fastai needed a CUDA extension for it).

The gradient is the same recurrence run backwards (`g_t = dc_t + a_{t+1} * g_{t+1}`), so a
custom VJP runs it as a reversed associative scan and keeps only `a` and `c`, not the scan's
intermediate levels. `forget_mult_sequential` is the plain `lax.scan` reference.
All arrays are time-major: [time, batch, hidden], float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Pair = tuple[jax.Array, jax.Array]


def forget_mult(
    f: jax.Array, z: jax.Array, c0: jax.Array, step_mask: jax.Array | None = None
) -> jax.Array:
    """Every cell state of the forget-mult, as a parallel scan.

    f, z [time, batch, hid] (forget gate, candidate); c0 [batch, hid] the state before the
    first step (zeros give fastai's first step `c = f * z`); step_mask [time, batch] bool or
    None: a False step leaves the state unchanged. Returns c [time, batch, hid].
    """
    a, b = _recurrence_terms(f, z, step_mask)
    return linear_recurrence(a, b, c0)


def forget_mult_sequential(
    f: jax.Array, z: jax.Array, c0: jax.Array, step_mask: jax.Array | None = None
) -> jax.Array:
    """The same forget-mult one step at a time (`lax.scan`): the reference of `forget_mult`."""
    keep = jnp.ones(f.shape[:2], bool) if step_mask is None else step_mask

    def step(c, xs):
        f_t, z_t, keep_t = xs
        c_new = f_t * z_t + (1.0 - f_t) * c
        c_new = jnp.where(keep_t[:, None], c_new, c)
        return c_new, c_new

    _, cells = jax.lax.scan(step, c0, (f, z, keep))
    return cells


def _recurrence_terms(
    f: jax.Array, z: jax.Array, step_mask: jax.Array | None
) -> Pair:
    """(a, b) of `c_t = a_t c_{t-1} + b_t`; a masked step is the identity (a = 1, b = 0)."""
    a, b = 1.0 - f, f * z
    if step_mask is not None:
        keep = step_mask[:, :, None]
        a, b = jnp.where(keep, a, 1.0), jnp.where(keep, b, 0.0)
    return a, b


def _compose(earlier: Pair, later: Pair) -> Pair:
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def _scan(a: jax.Array, b: jax.Array, reverse: bool = False) -> jax.Array:
    """The b half of the associative scan: `c_t = a_t c_{t-1} + b_t` from c = 0 (or, reversed,
    `c_t = a_t c_{t+1} + b_t` from the end)."""
    _, c = jax.lax.associative_scan(_compose, (a, b), reverse=reverse, axis=0)
    return c


@jax.custom_vjp
def linear_recurrence(a: jax.Array, b: jax.Array, c0: jax.Array) -> jax.Array:
    """c_t = a_t * c_{t-1} + b_t for every t, from c_{-1} = c0: a, b [time, ...], c0 [...]."""
    return _scan(a, b.at[0].add(a[0] * c0))


def _recurrence_fwd(a: jax.Array, b: jax.Array, c0: jax.Array):
    c = linear_recurrence(a, b, c0)
    return c, (a, c, c0)


def _recurrence_bwd(residuals, d_c: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    a, c, c0 = residuals
    # g_t, the gradient reaching c_t from every later step: g_t = d_c_t + a_{t+1} g_{t+1}.
    a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])
    g = _scan(a_next, d_c, reverse=True)
    c_prev = jnp.concatenate([c0[None], c[:-1]])
    return g * c_prev, g, a[0] * g[0]


linear_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
