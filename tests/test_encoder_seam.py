"""The encoder seam: a second encoder kind, defined and registered here, runs through the LM,
the classifier (BPT3C chunks, carried state, leading padding), the train steps and the
optimizer wiring without touching `model/`; the AWD-LSTM declares its fastai rules itself."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ulmfit_jax.errors import ConfigError, ModelFileError
from ulmfit_jax.model.classifier import AWDLSTMClassifier, sample_classifier_masks
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.model.dropout import dropout_mask, embed_tokens
from ulmfit_jax.model.encoder import (
    ENCODERS,
    encoder_class,
    fastai_step_multiplicity,
    register_encoder,
    zero_state,
)
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel, resize_state, sample_lm_masks
from ulmfit_jax.optim import optimizer as opt
from ulmfit_jax.optim.layer_groups import lm_layer_groups

KIND = "test_elman"


class ElmanLayer(nnx.Module):
    def __init__(self, n_in: int, n_out: int, *, rngs: nnx.Rngs):
        self.w_in = nnx.Param(0.3 * jax.random.normal(rngs.params(), (n_in, n_out)))
        self.w_rec = nnx.Param(0.3 * jax.random.normal(rngs.params(), (n_out, n_out)))
        self.bias = nnx.Param(jnp.zeros((n_out,)))


def elman_encode(weights, config, ids, state=None, masks=None, step_mask=None):
    """h_t = tanh(x_t w_in + h_{t-1} w_rec + bias) per layer; state per layer h [batch, out]."""
    embedding, layers = weights
    if state is None:
        state = elman_zero_state(config, ids.shape[0])
    x = embed_tokens(embedding, ids, config.pad_id, None if masks is None else masks["embed"])
    keep = jnp.ones(ids.shape, bool) if step_mask is None else step_mask
    new_state = []
    for (w_in, w_rec, bias), h0 in zip(layers, state, strict=True):
        def step(h, xs, w_rec=w_rec):
            x_t, keep_t = xs
            h_new = jnp.tanh(x_t + h @ w_rec)
            h_new = jnp.where(keep_t[:, None], h_new, h)
            return h_new, h_new

        projected = jnp.swapaxes(x @ w_in + bias, 0, 1)
        h, outs = jax.lax.scan(step, h0, (projected, keep.T))
        x = jnp.swapaxes(outs, 0, 1)
        new_state.append(h)
    return x, tuple(new_state)


def elman_zero_state(config, batch_size):
    return tuple(jnp.zeros((batch_size, n_out)) for _, n_out in config.layer_sizes())


def elman_masks(key, config, batch_size):
    return {"embed": dropout_mask(key, (config.vocab_size,), config.embed_dropout)}


class ElmanEncoder(nnx.Module):
    """A test-only encoder kind: embedding + tanh RNN layers, parameters under the same paths."""

    fastai_step_multiplicity = ()
    encode = staticmethod(elman_encode)
    zero_state = staticmethod(elman_zero_state)
    sample_masks = staticmethod(elman_masks)

    def __init__(self, config: AWDLSTMConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embedding = nnx.Param(
            jax.random.uniform(rngs.params(), (config.vocab_size, config.emb_size), minval=-0.1,
                               maxval=0.1))
        self.layers = nnx.List([ElmanLayer(i, o, rngs=rngs) for i, o in config.layer_sizes()])

    def weights(self):
        layers = tuple((lay.w_in[...], lay.w_rec[...], lay.bias[...]) for lay in self.layers)
        return self.embedding[...], layers

    def __call__(self, ids, state=None, masks=None, step_mask=None):
        return elman_encode(self.weights(), self.config, ids, state, masks, step_mask)


VOCAB, EMB, HIDDEN = 23, 6, 7


@pytest.fixture(autouse=True)
def elman_registered():
    """The test kind is registered only while this module's tests run: other modules (and
    xdist workers that collect this one) see the built-in kinds alone."""
    register_encoder(KIND, ElmanEncoder)
    yield
    ENCODERS.pop(KIND, None)


def elman_config(**overrides) -> AWDLSTMConfig:
    return AWDLSTMConfig.lm_defaults(VOCAB, emb_size=EMB, hidden_size=HIDDEN, n_layers=2,
                                     encoder_kind=KIND, **overrides)


def test_the_lm_runs_a_registered_encoder_with_its_state_and_masks():
    lm = AWDLSTMLanguageModel(elman_config(), rngs=nnx.Rngs(0))
    assert isinstance(lm.encoder, ElmanEncoder)
    params = nnx.to_pure_dict(nnx.state(lm, nnx.Param))
    assert set(params["encoder"]["layers"][0]) == {"w_in", "w_rec", "bias"}
    ids = jnp.asarray(np.random.default_rng(0).integers(2, VOCAB, (3, 8)), jnp.int32)
    whole = lm(ids)
    assert whole.logits.shape == (3, 8, VOCAB)
    assert [h.shape for h in whole.state] == [(3, HIDDEN), (3, EMB)]
    # The carried state makes two half windows equal one whole window.
    first = lm(ids[:, :4])
    second = lm(ids[:, 4:], first.state)
    np.testing.assert_allclose(second.logits, whole.logits[:, 4:], atol=1e-6)
    assert [h.shape for h in resize_state(whole.state, 5)] == [(5, HIDDEN), (5, EMB)]
    masks = sample_lm_masks(jax.random.key(0), lm.config, 3)
    assert set(masks.encoder) == {"embed"} and masks.output.shape == (3, EMB)
    dropped = lm(ids, masks=masks)
    assert not np.allclose(dropped.logits, whole.logits)


def test_the_classifier_runs_a_registered_encoder_over_bpt3c_chunks():
    encoder = dataclasses.replace(elman_config(), input_p=0.0)
    config = ClassifierConfig(encoder=encoder, n_classes=3, bptt=4, max_len=8)
    clf = AWDLSTMClassifier(config, rngs=nnx.Rngs(1))
    docs = [np.arange(2, 13), np.array([5, 6, 7])]
    # fastai's layout: whole chunks of padding in front, the rest at the end.
    batch = np.full((2, 12), 1)
    batch[0, :11] = docs[0]
    batch[1, 8:11] = docs[1]
    logits = clf(jnp.asarray(batch))
    assert logits.shape == (2, 3)
    # Each document's result is its result alone: the state crosses chunks, padding is skipped.
    alone = np.concatenate([np.asarray(clf(jnp.asarray(d[None]))) for d in docs])
    np.testing.assert_allclose(logits, alone, atol=1e-5)
    masks = sample_classifier_masks(jax.random.key(0), config, 2)
    assert clf(jnp.asarray(batch), masks=masks, train=True).shape == (2, 3)


def test_the_train_steps_and_optimizer_take_the_encoder_kind():
    from ulmfit_jax.trainer import steps

    lm = AWDLSTMLanguageModel(elman_config(), rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(lm, nnx.Param))
    tx = opt.ulmfit_optimizer(params, lm_layer_groups(2),
                              multiplicity=fastai_step_multiplicity(lm.config)).transform()
    graphdef, state = steps.create_lm_state(lm, tx, batch_size=2)
    assert [h.shape for h in state.hidden] == [(2, HIDDEN), (2, EMB)]
    ids = jnp.asarray(np.random.default_rng(1).integers(2, VOCAB, (2, 6)), jnp.int32)
    batch = {"inputs": ids, "targets": jnp.roll(ids, -1, axis=1)}
    new, metrics = steps.lm_train_step(state, batch, jax.random.key(0),
                                       {"lr": jnp.float32(1e-2), "mom": jnp.float32(0.9)},
                                       graphdef=graphdef, model_config=lm.config, optimizer=tx,
                                       alpha=2.0, beta=1.0)
    assert float(metrics["count"]) == 12
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           state.params["encoder"], new.params["encoder"])
    assert all(jax.tree.leaves(changed))


def test_fastai_step_multiplicity_is_the_encoder_kinds_own():
    awd = AWDLSTMConfig(vocab_size=10)
    assert fastai_step_multiplicity(awd) == ((r"encoder/layers/\d+/bias", 2.0),)
    # Another kind's `encoder/layers/N/bias` is stepped once: no global rule doubles it.
    assert fastai_step_multiplicity(elman_config()) == ()
    lm = AWDLSTMLanguageModel(elman_config(), rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(lm, nnx.Param))
    mult = opt.path_values(params, fastai_step_multiplicity(lm.config), default=1.0)
    assert set(jax.tree.leaves(mult)) == {1.0}


def test_unknown_and_clashing_kinds_are_refused_and_fastai_conversion_is_fastais_kinds_only():
    with pytest.raises(ConfigError, match="encoder_kind='gru'.*awd_lstm.*qrnn"):
        zero_state(AWDLSTMConfig(vocab_size=10, encoder_kind="gru"), 2)
    with pytest.raises(ValueError, match="already ElmanEncoder"):
        register_encoder(KIND, AWDLSTMLanguageModel)
    assert register_encoder(KIND, ElmanEncoder) is ElmanEncoder  # the same class again is fine
    assert encoder_class(AWDLSTMConfig(vocab_size=10)) is ENCODERS["awd_lstm"]
    from ulmfit_jax.convert.fastai_weights import lm_params_to_fastai

    lm = AWDLSTMLanguageModel(elman_config(), rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(lm, nnx.Param))
    with pytest.raises(ModelFileError, match="'test_elman' has no fastai file layout"):
        lm_params_to_fastai(params, lm.config)
