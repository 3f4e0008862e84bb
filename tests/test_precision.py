"""`model.matmul_precision` reaches every matmul the model traces, forward and backward."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from tests.jaxprs import equations
from ulmfit_jax.errors import ConfigError
from ulmfit_jax.model.classifier import AWDLSTMClassifier, sample_classifier_masks
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel, sample_lm_masks
from ulmfit_jax.trainer.config import base_config, check_config

HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
DEFAULT = (jax.lax.Precision.DEFAULT, jax.lax.Precision.DEFAULT)


def _matmul_precisions(fn, *args) -> list:
    """The precision of every matmul in fn's jaxpr, scans and custom VJPs included."""
    return [eqn.params["precision"] for eqn in equations(fn, *args, primitive="dot_general")]


def _lm_loss_grad(config):
    model = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % config.vocab_size
    masks = sample_lm_masks(jax.random.key(1), config, batch_size=2)

    def loss(params):
        out = nnx.merge(graphdef, params)(ids, masks=masks)
        return jnp.sum(out.logits ** 2)

    return jax.grad(loss), params


@pytest.mark.parametrize("impl", ["scan", "wavefront"])
def test_highest_reaches_every_lm_matmul_forward_and_backward(impl):
    config = AWDLSTMConfig(vocab_size=20, emb_size=6, hidden_size=8, n_layers=3, lstm_impl=impl,
                           matmul_precision="highest")
    grad, params = _lm_loss_grad(config)
    with jax.default_matmul_precision("default"):  # what a GPU user gets without the setting
        found = _matmul_precisions(grad, params)
        plain = _matmul_precisions(*_lm_loss_grad(dataclasses.replace(
            config, matmul_precision="default")))
    # Forward and backward of 3 layers' input projections and recurrences, and the decoder.
    assert len(found) >= 3 * 2 * 2 + 2
    assert set(found) == {HIGHEST}
    assert set(plain) == {DEFAULT}  # "default" leaves jax's own setting alone


def test_highest_reaches_every_classifier_matmul():
    encoder = AWDLSTMConfig.classifier_defaults(20, emb_size=6, hidden_size=8, n_layers=2,
                                                matmul_precision="highest")
    config = ClassifierConfig(encoder=encoder, n_classes=3, bptt=4, max_len=8)
    graphdef, params, stats = nnx.split(AWDLSTMClassifier(config, rngs=nnx.Rngs(0)),
                                        nnx.Param, nnx.BatchStat)
    ids = jnp.arange(2, 26, dtype=jnp.int32).reshape(2, 12) % 20
    masks = sample_classifier_masks(jax.random.key(2), config, batch_size=2)

    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params, stats)(ids, masks=masks) ** 2)

    with jax.default_matmul_precision("default"):
        found = _matmul_precisions(jax.grad(loss), params)
    assert len(found) >= 2 * 2 * 2 + 2 * 2  # LSTMs forward + backward, the head's two linears
    assert set(found) == {HIGHEST}


def test_a_bad_precision_is_one_clear_error():
    with pytest.raises(ConfigError, match="matmul_precision='tf32'"):
        AWDLSTMConfig(vocab_size=10, matmul_precision="tf32")
    config = base_config()
    config.model.matmul_precision = "fast"
    with pytest.raises(ConfigError, match="model.matmul_precision"):
        check_config(config)
