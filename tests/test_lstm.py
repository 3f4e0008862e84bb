"""The LSTM's hand-written VJP against JAX autodiff of a plain scan (with and without skips)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ulmfit_jax.model import lstm
from ulmfit_jax.model.lstm import recurrence_time_major


def _reference_recurrence(projected, state, w_hh, step_mask):
    """The textbook LSTM loop, differentiated by JAX itself."""

    def step(carry, xs):
        h, c = carry
        x_t, m_t = xs
        i, f, g, o = jnp.split(x_t + h @ w_hh, 4, axis=-1)
        c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
        keep = m_t[:, None]
        h_new, c_new = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
        return (h_new, c_new), h_new

    (h, c), outputs = jax.lax.scan(step, state, (projected, step_mask.T))
    return jnp.swapaxes(outputs, 0, 1), (h, c)


def recurrence(projected, state, w_hh, step_mask):
    """Ours, batch-major outputs like the reference: [batch, time, hid]."""
    masks_tm = None if step_mask is None else step_mask.T
    outputs, final = recurrence_time_major(projected, state, w_hh, masks_tm)
    return jnp.swapaxes(outputs, 0, 1), final


def _padding_around(batch: int, time: int) -> jax.Array:
    """[batch, time]: rows that take one run of steps inside [2, time - 2) (a classifier
    batch's layout: steps no row takes before and after), one row taking none."""
    steps = jnp.arange(time)[None, :]
    first = jnp.array([2, 3, time][:batch])[:, None]
    return (steps >= first) & (steps < time - 2)


@pytest.mark.parametrize("with_skips", [False, True, "padding_around"])
def test_gradients_match_autodiff_of_a_plain_scan(with_skips):
    time, batch, hid = 7, 3, 5
    keys = jax.random.split(jax.random.key(0), 6)
    projected = jax.random.normal(keys[0], (time, batch, 4 * hid))
    h0, c0 = jax.random.normal(keys[1], (batch, hid)), jax.random.normal(keys[2], (batch, hid))
    w_hh = 0.5 * jax.random.normal(keys[3], (hid, 4 * hid))
    skips = jax.random.bernoulli(keys[4], 0.6, (batch, time))
    if with_skips == "padding_around":
        skips = _padding_around(batch, time)
    step_mask = skips if with_skips else jnp.ones((batch, time), bool)
    weights = jax.random.normal(keys[5], (batch, time, hid))

    def loss(fn, mask, projected, h0, c0, w_hh):
        outputs, (h, c) = fn(projected, (h0, c0), w_hh, mask)
        return jnp.sum(outputs * weights) + jnp.sum(h**2) + jnp.sum(jnp.sin(c))

    argnums = (2, 3, 4, 5)
    ours_mask = step_mask if with_skips else None  # also covers the LM path without a mask
    expected = jax.grad(loss, argnums)(_reference_recurrence, step_mask, projected, h0, c0, w_hh)
    got = jax.jit(jax.grad(loss, argnums), static_argnums=0)(
        recurrence, ours_mask, projected, h0, c0, w_hh
    )
    for name, e, g in zip(("projected", "h0", "c0", "w_hh"), expected, got, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5, err_msg=name)
    ref_out = _reference_recurrence(projected, (h0, c0), w_hh, step_mask)
    our_out = recurrence(projected, (h0, c0), w_hh, ours_mask)
    for e, g in zip(jax.tree.leaves(ref_out), jax.tree.leaves(our_out), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mask", ["padding_around", "none_taken", "holes"])
def test_the_cpu_loop_over_taken_steps_equals_the_fixed_length_scan(mask):
    """On a CPU the masked recurrence loops over the steps some row takes only
    (`lax.platform_dependent`); other platforms run the fixed-length scan. Both, forward
    (outputs, final state, cells) and backward, give the same results."""
    time, batch, hid = 9, 3, 4
    keys = jax.random.split(jax.random.key(1), 7)
    projected = jax.random.normal(keys[0], (time, batch, 4 * hid))
    h0, c0 = jax.random.normal(keys[1], (batch, hid)), jax.random.normal(keys[2], (batch, hid))
    w_hh = 0.5 * jax.random.normal(keys[3], (hid, 4 * hid))
    step_mask = {"padding_around": _padding_around(batch, time).T,
                 "none_taken": jnp.zeros((time, batch), bool),
                 "holes": jax.random.bernoulli(keys[4], 0.5, (time, batch))}[mask]
    args = (jnp.float32, projected, h0, c0, w_hh, step_mask)
    scan, loop = lstm._forward_scan(*args, save=True), lstm._forward_active_steps(*args, save=True)
    # The gates of a step no row takes are never read (the scan computes them, the loop not).
    for want, got in zip((*scan[:3], scan[3][1]), (*loop[:3], loop[3][1]), strict=True):
        np.testing.assert_array_equal(got, want)
    residuals = (scan[0], *scan[3], h0, c0, w_hh, step_mask)
    cotangents = tuple(jax.random.normal(k, a.shape) for k, a in zip(keys[4:], scan[:3],
                                                                        strict=True))
    want = lstm._backward_scan(jnp.float32, residuals, cotangents)
    got = lstm._backward_active_steps(jnp.float32, residuals, cotangents)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    jaxpr = str(jax.make_jaxpr(recurrence_time_major)(projected, (h0, c0), w_hh, step_mask))
    assert "platform_index" in jaxpr  # the choice is made per platform when compiled


@pytest.mark.parametrize("masked", [False, True])
def test_the_per_gate_loop_equals_the_packed_loop(masked):
    """A forward loop reading and writing one array per gate gives the packed loop's outputs,
    state and residuals, bit for bit."""
    time, batch, hid = 6, 3, 4
    keys = jax.random.split(jax.random.key(5), 5)
    projected = jax.random.normal(keys[0], (time, batch, 4 * hid))
    h0, c0 = jax.random.normal(keys[1], (batch, hid)), jax.random.normal(keys[2], (batch, hid))
    w_hh = 0.5 * jax.random.normal(keys[3], (hid, 4 * hid))
    if masked:
        step_mask = jax.random.bernoulli(keys[4], 0.7, (time, batch))
        forward = lstm._forward_active_steps
    else:
        step_mask, forward = None, lstm._forward_scan
    for save in (False, True):
        args = (jnp.float32, projected, h0, c0, w_hh, step_mask)
        packed = forward(*args, save=save)
        per_gate = forward(*args, save=save, gate_arrays=True)
        for want, got in zip(jax.tree.leaves(packed), jax.tree.leaves(per_gate), strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("loop", ["inference", "taken_steps_training"])
def test_the_cpu_loops_chosen_per_gate_read_each_gate_as_its_own_array(loop):
    """The CPU loops that read one array per gate (the unmasked forward pass without residuals;
    the classifier's loop over taken steps, forward with residuals and backward) read no
    [time, batch, 4*hid] array: XLA:CPU compiles several reads of one dynamically indexed slice
    to slow code. The backward loop still writes its gate gradients into one. The choice is
    made per platform when compiled."""
    from tests.jaxprs import equations

    time, batch, hid = 7, 3, 5
    keys = jax.random.split(jax.random.key(3), 4)
    projected = jax.random.normal(keys[0], (time, batch, 4 * hid))
    h0, c0 = jax.random.normal(keys[1], (batch, hid)), jnp.zeros((batch, hid))
    w_hh = jax.random.normal(keys[2], (hid, 4 * hid))
    step_mask = jnp.ones((time, batch), bool)
    f32 = jnp.float32

    def inference(projected, w_hh):
        return lstm._unmasked_forward(f32, projected, h0, c0, w_hh, save=False)

    def taken_steps_training(projected, w_hh):
        outputs, h, c, saved = lstm._masked_forward(f32, projected, h0, c0, w_hh, step_mask,
                                                    save=True)
        residuals = (outputs, *saved, h0, c0, w_hh, step_mask)
        return lstm._masked_backward(f32, residuals, (outputs, h, c))

    run = {"inference": inference, "taken_steps_training": taken_steps_training}[loop]
    loops = (equations(run, projected, w_hh, primitive="scan")
             + equations(run, projected, w_hh, primitive="while"))
    cpu_loops = [eqn for eqn in loops if _reads(eqn).count((time, batch, hid)) >= 4]
    # One loop per platform branch and direction: the CPU's read gates, the others' do not.
    assert len(cpu_loops) == (1 if loop == "inference" else 2)
    for eqn in cpu_loops:
        assert (time, batch, 4 * hid) not in _reads(eqn)
    jaxpr = str(jax.make_jaxpr(run)(projected, w_hh))
    assert "platform_index" in jaxpr


def _reads(eqn) -> list[tuple[int, ...]]:
    """Shapes of what a scan (its consts and xs) or a while loop (its consts) reads."""
    if eqn.primitive.name == "scan":
        n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
        read = eqn.invars[:n_consts] + eqn.invars[n_consts + n_carry:]
    else:  # fori_loop's carry: counters, state, and the arrays it writes
        read = eqn.invars[: eqn.params["body_nconsts"] + eqn.params["cond_nconsts"]]
    return [tuple(v.aval.shape) for v in read if hasattr(v, "aval")]
