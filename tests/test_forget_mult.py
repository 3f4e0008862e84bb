"""The QRNN's forget-mult as a parallel scan equals the step-by-step recurrence: outputs,
carried state and gradients (fp32, within 1e-6), with and without masked steps."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ulmfit_jax.model.forget_mult import forget_mult, forget_mult_sequential, linear_recurrence

TIME, BATCH, HID = 37, 3, 5  # an odd length exercises the scan's uneven levels


def _inputs(seed: int = 0):
    k = jax.random.split(jax.random.key(seed), 5)
    f = jax.nn.sigmoid(2 * jax.random.normal(k[0], (TIME, BATCH, HID)))
    z = jnp.tanh(jax.random.normal(k[1], (TIME, BATCH, HID)))
    c0 = jax.random.normal(k[2], (BATCH, HID))
    step_mask = jax.random.bernoulli(k[3], 0.7, (TIME, BATCH))
    weights = jax.random.normal(k[4], (TIME, BATCH, HID))
    return f, z, c0, step_mask, weights


@pytest.mark.parametrize("masked", [False, True])
def test_parallel_scan_equals_sequential_outputs_state_and_gradients(masked):
    f, z, c0, step_mask, weights = _inputs()
    mask = step_mask if masked else None

    def loss(fn, f, z, c0):
        cells = fn(f, z, c0, mask)
        # every output, and the carried state (last cell) on its own path
        return jnp.sum(cells * weights) + jnp.sum(jnp.sin(cells[-1]))

    got = forget_mult(f, z, c0, mask)
    expected = forget_mult_sequential(f, z, c0, mask)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[-1], expected[-1], rtol=0, atol=1e-6)
    grads = jax.grad(lambda *a: loss(forget_mult, *a), argnums=(0, 1, 2))(f, z, c0)
    ref = jax.grad(lambda *a: loss(forget_mult_sequential, *a), argnums=(0, 1, 2))(f, z, c0)
    for name, g, r in zip(("f", "z", "c0"), grads, ref, strict=True):
        assert np.abs(r).max() > 0.1, name  # the gradient is not trivially zero
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-6 * max(1.0, np.abs(r).max()),
                                   err_msg=name)


def test_first_step_from_zeros_is_f_times_z_and_masked_steps_keep_the_state():
    f, z, _, step_mask, _ = _inputs(1)
    cells = forget_mult(f, z, jnp.zeros((BATCH, HID)))
    np.testing.assert_array_equal(cells[0], f[0] * z[0])  # fastai's first step without state
    masked = np.asarray(forget_mult(f, z, jnp.zeros((BATCH, HID)), step_mask))
    kept = 0
    for t in range(1, TIME):
        for b in np.flatnonzero(~np.asarray(step_mask[t])):
            # the scan composes the steps in another order than the loop: rounding only
            np.testing.assert_allclose(masked[t, b], masked[t - 1, b], rtol=0, atol=1e-6)
            kept += 1
    assert kept > 5


def test_linear_recurrence_gradient_matches_autodiff_of_its_own_scan():
    """The custom VJP against jax's autodiff through the same associative scan."""
    k = jax.random.split(jax.random.key(2), 4)
    a = jax.random.uniform(k[0], (9, 2, 3))
    b, w = jax.random.normal(k[1], (9, 2, 3)), jax.random.normal(k[3], (9, 2, 3))
    c0 = jax.random.normal(k[2], (2, 3))

    def plain(a, b, c0):
        pairs = (a, b.at[0].add(a[0] * c0))
        return jax.lax.associative_scan(lambda e, l: (l[0] * e[0], l[0] * e[1] + l[1]),
                                        pairs, axis=0)[1]

    got = jax.grad(lambda *x: jnp.sum(linear_recurrence(*x) * w), argnums=(0, 1, 2))(a, b, c0)
    ref = jax.grad(lambda *x: jnp.sum(plain(*x) * w), argnums=(0, 1, 2))(a, b, c0)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-6 * max(1.0, np.abs(r).max()))
