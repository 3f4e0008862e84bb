"""AWD-LSTM language model: live parity with fastai 2.8.12 (eval, training masks, gradients)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from tests.fastai_reference import (
    DropoutRecorder,
    fastai_lm,
    lm_masks_from_fastai,
    load_pure_dict,
    no_grad_eval,
    state_dict_numpy,
)
from ulmfit_jax.convert.fastai_weights import lm_params_from_fastai
from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.model.language_model import (
    AWDLSTMLanguageModel,
    LMDropoutMasks,
    resize_state,
    sample_lm_masks,
)

PAD = 1


def _ours_from(model: torch.nn.Module) -> AWDLSTMLanguageModel:
    config, params = lm_params_from_fastai(state_dict_numpy(model))
    ours = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    load_pure_dict(ours, params)
    return ours


def _ids(rng: np.random.Generator, batch: int, time: int, vocab: int) -> np.ndarray:
    ids = rng.integers(0, vocab, size=(batch, time))
    ids[0, 1] = ids[-1, time - 1] = PAD  # pad tokens inside sequences are ordinary inputs
    return ids


def _check_eval_calls(model: torch.nn.Module, batches: list[np.ndarray]) -> None:
    ours = _ours_from(model)
    state = None
    with no_grad_eval(model):
        for ids in batches:
            expected = model(torch.from_numpy(ids))[0].numpy()
            if state is not None:
                state = resize_state(state, ids.shape[0])
            out = ours(jnp.asarray(ids, jnp.int32), state)
            state = out.state
            np.testing.assert_allclose(np.asarray(out.logits), expected, atol=1e-5, rtol=0)


def test_eval_logits_match_fastai_with_carried_state_and_batch_size_changes():
    rng = np.random.default_rng(0)
    model = fastai_lm(vocab=37, emb=8, hidden=12, n_layers=3)
    sizes = [(4, 6), (4, 5), (2, 7), (3, 4)]  # shrink keeps first rows, grow adds zero rows
    _check_eval_calls(model, [_ids(rng, b, t, 37) for b, t in sizes])


@pytest.mark.slow
def test_eval_logits_match_fastai_full_wt103_size():
    rng = np.random.default_rng(1)
    model = fastai_lm(vocab=60_000, emb=400, hidden=1152, n_layers=3)
    _check_eval_calls(model, [_ids(rng, 2, 4, 60_000), _ids(rng, 2, 3, 60_000)])


def test_resize_state_keeps_first_rows_and_adds_zero_rows():
    state = ((jnp.arange(6.0).reshape(3, 2), -jnp.arange(6.0).reshape(3, 2)),)
    (h, c), = resize_state(state, 2)
    np.testing.assert_array_equal(h, [[0, 1], [2, 3]])
    (h, c), = resize_state(state, 5)
    np.testing.assert_array_equal(h[3:], 0)
    np.testing.assert_array_equal(c[:3], state[0][1])


def _fastai_train_loss(model: torch.nn.Module, ids: np.ndarray, targets: np.ndarray):
    logits, raw, dropped = model(torch.from_numpy(ids))
    flat_targets = torch.from_numpy(targets).reshape(-1)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat_targets)
    # fastai's RNNRegularizer: AR on the dropped output, TAR on the raw output.
    loss = ce + 2.0 * dropped.pow(2).mean() + 1.0 * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
    return loss, logits, raw, dropped


def _our_train_loss(params, graphdef, ids, targets, state, masks: LMDropoutMasks):
    model = nnx.merge(graphdef, params)
    out = model(ids, state, masks)
    logp = jax.nn.log_softmax(out.logits, axis=-1)
    ce = -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
    ar = 2.0 * jnp.mean(out.dropped_last**2)
    tar = 1.0 * jnp.mean((out.raw_last[:, 1:] - out.raw_last[:, :-1]) ** 2)
    return ce + ar + tar, out


def _fastai_grads(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """fastai gradients in our parameter layout (pure dict)."""
    enc = model[0]
    layers = {}
    for l, rnn in enumerate(enc.rnns):
        assert torch.equal(rnn.module.bias_ih_l0.grad, rnn.module.bias_hh_l0.grad)
        layers[l] = {
            "w_ih": rnn.module.weight_ih_l0.grad.numpy().T,
            "w_hh": rnn.weight_hh_l0_raw.grad.numpy().T,
            "bias": rnn.module.bias_ih_l0.grad.numpy(),
        }
    return {"encoder": {"embedding": enc.encoder.weight.grad.numpy(), "layers": layers},
            "decoder_bias": model[1].decoder.bias.grad.numpy()}


def test_training_masks_outputs_and_gradients_match_fastai():
    rng = np.random.default_rng(2)
    vocab, batch, time = 29, 3, 6
    model = fastai_lm(vocab=vocab, emb=8, hidden=12, n_layers=3)
    ours = _ours_from(model)
    graphdef, params = nnx.split(ours, nnx.Param)
    windows = [_ids(rng, batch, time + 1, vocab) for _ in range(2)]
    windows[1][1, 2] = PAD  # the pad row's lookup gradient must be blocked
    model.train()
    model.reset()
    state = None
    for window in windows:
        ids, targets = window[:, :-1], window[:, 1:]
        model.zero_grad()
        with DropoutRecorder() as recorder:
            loss, logits, raw, dropped = _fastai_train_loss(model, ids, targets)
        loss.backward()
        masks = lm_masks_from_fastai(model, recorder)
        grad_fn = jax.value_and_grad(_our_train_loss, has_aux=True)
        (our_loss, out), grads = grad_fn(params, graphdef, jnp.asarray(ids), jnp.asarray(targets),
                                         state, masks)
        state = jax.lax.stop_gradient(out.state)
        np.testing.assert_allclose(np.asarray(out.logits), logits.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(out.raw_last), raw.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(out.dropped_last), dropped.detach().numpy(),
                                   atol=1e-5)
        np.testing.assert_allclose(float(our_loss), loss.item(), rtol=1e-6)
        expected = _fastai_grads(model)
        got = grads.to_pure_dict()
        for path, g in jax.tree_util.tree_leaves_with_path(expected):
            ours_g = np.asarray(_at(got, path))
            scale = np.abs(g).max()
            np.testing.assert_allclose(ours_g, g, rtol=1e-5, atol=1e-5 * scale,
                                       err_msg=jax.tree_util.keystr(path))


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_sampled_masks_have_fastai_shapes_and_scaling():
    config = AWDLSTMConfig.lm_defaults(100, emb_size=8, hidden_size=12, n_layers=3)
    masks = sample_lm_masks(jax.random.key(0), config, batch_size=5)
    enc = masks.encoder
    assert enc.embed.shape == (100,)
    assert enc.input.shape == masks.output.shape == (5, 8)
    assert [m.shape for m in enc.hidden] == [(5, 12), (5, 12)]
    assert [m.shape for m in enc.weight] == [(12, 48), (12, 48), (8, 32)]
    for mask, p in [(enc.input, 0.25), (enc.weight[0], 0.2), (masks.output, 0.1)]:
        values = np.unique(np.asarray(mask))
        np.testing.assert_allclose(values, [0.0, 1 / (1 - p)], rtol=1e-6)


def test_eval_without_masks_is_deterministic_and_state_shapes_follow_layers():
    config = AWDLSTMConfig.lm_defaults(50, emb_size=8, hidden_size=12, n_layers=2)
    model = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    ids = jnp.ones((2, 4), jnp.int32)
    out = model(ids)
    assert out.logits.shape == (2, 4, 50)
    assert [h.shape for h, _ in out.state] == [(2, 12), (2, 8)]
    np.testing.assert_array_equal(out.raw_last, out.dropped_last)
