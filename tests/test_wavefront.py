"""The layer wavefront is the per-layer scan, reordered: same outputs, state and gradients."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.jaxprs import equations
from ulmfit_jax.model.classifier import AWDLSTMClassifier, sample_classifier_masks
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel, sample_lm_masks
from ulmfit_jax.model.lstm import input_projection_time_major, recurrence_time_major
from ulmfit_jax.model.wavefront import wavefront_lstm

SIZES = ((5, 6), (6, 6), (6, 5))  # (in, hid) per layer: the AWD-LSTM's shape, tiny
TIME, BATCH = 7, 3


def per_layer_scan(x, states, layers, hidden_masks, step_mask):
    new_states = []
    for l, (w_ih, w_hh, bias) in enumerate(layers):
        projected = input_projection_time_major(x, w_ih, bias)
        x, state = recurrence_time_major(projected, states[l], w_hh, step_mask)
        new_states.append(state)
        if hidden_masks is not None and l < len(layers) - 1:
            x = x * hidden_masks[l]
    return x, tuple(new_states)


def _inputs(seed=0):
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 32))
    x = jax.random.normal(next(keys), (TIME, BATCH, SIZES[0][0]))
    layers = tuple(
        tuple(jax.random.normal(next(keys), shape) * 0.3
              for shape in ((n_in, 4 * hid), (hid, 4 * hid), (4 * hid,)))
        for n_in, hid in SIZES
    )
    states = tuple((jax.random.normal(next(keys), (BATCH, hid)),
                    jax.random.normal(next(keys), (BATCH, hid))) for _, hid in SIZES)
    hidden_masks = tuple(jax.random.bernoulli(next(keys), 0.7, (BATCH, hid)) / 0.7
                         for _, hid in SIZES[:-1])
    # Leading padding as the classifier has it: rows start at times 0, 2 and 4.
    step_mask = jnp.arange(TIME)[:, None] >= jnp.array([0, 2, 4])[None, :]
    return x, states, layers, hidden_masks, step_mask


def _assert_close(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dropout", [False, True], ids=["eval", "hidden-dropout"])
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "leading-padding"])
def test_wavefront_equals_per_layer_scan(dropout, padded):
    x, states, layers, hidden_masks, step_mask = _inputs()
    args = (hidden_masks if dropout else None, step_mask if padded else None)
    with jax.default_matmul_precision("highest"):
        _assert_close(wavefront_lstm(x, states, layers, *args),
                      per_layer_scan(x, states, layers, *args))

        def loss(fn):
            def value(x, states, layers):
                out, new_states = fn(x, states, layers, *args)
                return jnp.sum(jnp.sin(out)) + sum(jnp.sum(jnp.cos(s)) for s in
                                                   jax.tree.leaves(new_states))
            return value

        grads = [jax.grad(loss(fn), argnums=(0, 1, 2))(x, states, layers)
                 for fn in (wavefront_lstm, per_layer_scan)]
    _assert_close(*grads)


def _scan_lengths(fn, *args) -> list[int]:
    """Lengths of every scan in fn's jaxpr (forward and, for a gradient, backward)."""
    return [eqn.params["length"] for eqn in equations(fn, *args, primitive="scan")]


def test_wavefront_has_t_plus_l_minus_1_dependent_steps_per_direction():
    x, states, layers, hidden_masks, step_mask = _inputs()

    def grad_of(fn):
        return jax.grad(lambda x: jnp.sum(fn(x, states, layers, hidden_masks, step_mask)[0]))

    n_layers = len(layers)
    assert sorted(_scan_lengths(grad_of(per_layer_scan), x)) == [TIME] * (2 * n_layers)
    assert sorted(_scan_lengths(grad_of(wavefront_lstm), x)) == [TIME + n_layers - 1] * 2


def _with_impl(config, impl):
    return dataclasses.replace(config, lstm_impl=impl)


def test_language_model_on_the_wavefront_equals_the_scan():
    """Every AWD dropout, a carried state and the gradients of all parameters."""
    config = AWDLSTMConfig(vocab_size=30, emb_size=8, hidden_size=12, n_layers=3,
                           lstm_impl="scan")
    models = [AWDLSTMLanguageModel(_with_impl(config, impl), rngs=nnx.Rngs(0))
              for impl in ("scan", "wavefront")]
    ids = jax.random.randint(jax.random.key(1), (3, 10), 0, 30)
    masks = sample_lm_masks(jax.random.key(2), config, batch_size=3)
    carried = models[0](ids, masks=None).state  # a non-zero state carried in

    def loss(model):
        out = model(ids, state=carried, masks=masks)
        return jnp.sum(out.logits ** 2) + jnp.sum(out.raw_last) + sum(
            jnp.sum(s) for s in jax.tree.leaves(out.state))

    with jax.default_matmul_precision("highest"):
        outs = [m(ids, state=carried, masks=masks) for m in models]
        grads = [nnx.grad(loss)(m) for m in models]
    _assert_close(outs[1], outs[0])
    _assert_close(nnx.state(grads[1], nnx.Param), nnx.state(grads[0], nnx.Param))


def test_classifier_on_the_wavefront_equals_the_scan():
    """BPT3C chunks with fastai's front padding, training masks, and eval."""
    encoder = AWDLSTMConfig.classifier_defaults(30, emb_size=8, hidden_size=12, n_layers=3,
                                                lstm_impl="scan")
    config = ClassifierConfig(encoder=encoder, n_classes=3, bptt=4, max_len=8)
    models = [AWDLSTMClassifier(dataclasses.replace(config, encoder=_with_impl(encoder, impl)),
                                rngs=nnx.Rngs(0)) for impl in ("scan", "wavefront")]
    ids = jnp.array([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
                     [1, 1, 1, 1, 1, 1, 1, 1, 5, 6, 7, 1],
                     [1, 1, 1, 1, 5, 6, 7, 8, 9, 1, 1, 1]])
    masks = sample_classifier_masks(jax.random.key(3), config, batch_size=3)
    with jax.default_matmul_precision("highest"):
        _assert_close(models[1](ids), models[0](ids))
        _assert_close(models[1](ids, masks=masks), models[0](ids, masks=masks))
        grads = [nnx.grad(lambda m: jnp.sum(m(ids, masks=masks) ** 2))(m) for m in models]
    _assert_close(nnx.state(grads[1], nnx.Param), nnx.state(grads[0], nnx.Param))
