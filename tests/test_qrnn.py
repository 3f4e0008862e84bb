"""The AWD-QRNN encoder (`model.encoder = "qrnn"`): live parity with fastai's QRNN and AWD_QRNN
as published (`tests/qrnn_reference.py`, on the installed fastai's AWD-LSTM parts): LM logits
with carried state and batch-size changes, training outputs and gradients with injected
dropout and zoneout masks, the classifier over BPT3C chunks with leading padding; masked steps;
mask shapes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastai.text.data import pad_input_chunk
from flax import nnx

from tests.fastai_reference import (
    DropoutRecorder,
    install_head_dropouts,
    load_pure_dict,
    no_grad_eval,
    state_dict_numpy,
)
from tests.qrnn_reference import (
    QRNNLayer,
    encoder_replay,
    lm_replay,
    qrnn_classifier,
    qrnn_grads,
    qrnn_lm,
)
from ulmfit_jax.convert.fastai_weights import classifier_params_from_fastai, lm_params_from_fastai
from ulmfit_jax.model.classifier import (
    AWDLSTMClassifier,
    ClassifierDropoutMasks,
    sample_classifier_masks,
)
from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.model.encoder import encoder_class
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel, resize_state, sample_lm_masks
from ulmfit_jax.model.qrnn import QRNNEncoder, encode, qrnn_layer, zero_state, zoneout_masks

PAD = 1


def _ours_from(model: torch.nn.Module, **overrides) -> AWDLSTMLanguageModel:
    config, params = lm_params_from_fastai(state_dict_numpy(model))
    config = AWDLSTMConfig(**{**config.__dict__, **overrides})
    ours = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    load_pure_dict(ours, params)
    return ours


def _ids(rng: np.random.Generator, batch: int, time: int, vocab: int) -> np.ndarray:
    ids = rng.integers(0, vocab, size=(batch, time))
    ids[0, time // 2] = PAD  # a pad token inside a sequence is an ordinary input
    return ids


def test_qrnn_is_a_registered_encoder_kind():
    assert encoder_class(AWDLSTMConfig(vocab_size=5, encoder_kind="qrnn")) is QRNNEncoder


@pytest.mark.parametrize("first_window", [2, 1])
def test_eval_logits_match_fastai_with_carried_state_and_batch_size_changes(first_window):
    rng = np.random.default_rng(0)
    model = qrnn_lm(vocab=37, emb=8, hidden=12, n_layers=3, first_window=first_window)
    ours = _ours_from(model)
    assert ours.config.encoder_kind == "qrnn" and ours.config.qrnn_window == first_window
    state = None
    with no_grad_eval(model):
        # shrinking keeps the first rows of the cells and of the saved input, growing adds zeros
        for batch, time in [(4, 6), (4, 5), (2, 7), (3, 4), (3, 1)]:
            ids = _ids(rng, batch, time, 37)
            expected = model(torch.from_numpy(ids))[0].numpy()
            if state is not None:
                state = resize_state(state, batch)
            out = ours(jnp.asarray(ids, jnp.int32), state)
            state = out.state
            np.testing.assert_allclose(np.asarray(out.logits), expected, atol=1e-5, rtol=0)


def _fastai_train_loss(model: torch.nn.Module, ids: np.ndarray, targets: np.ndarray):
    logits, raw, dropped = model(torch.from_numpy(ids))
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                         torch.from_numpy(targets).reshape(-1))
    loss = ce + 2.0 * dropped.pow(2).mean() + 1.0 * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
    return loss, logits, raw


def _our_train_loss(params, graphdef, ids, targets, state, masks):
    out = nnx.merge(graphdef, params)(ids, state, masks)
    logp = jax.nn.log_softmax(out.logits, axis=-1)
    ce = -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
    tar = jnp.mean((out.raw_last[:, 1:] - out.raw_last[:, :-1]) ** 2)
    return ce + 2.0 * jnp.mean(out.dropped_last**2) + tar, out


@pytest.mark.parametrize("first_window,zoneout", [(2, 0.0), (1, 0.3)])
def test_training_outputs_and_gradients_match_fastai_with_injected_masks(first_window, zoneout):
    rng = np.random.default_rng(2)
    vocab, batch, time = 29, 3, 6
    model = qrnn_lm(vocab=vocab, emb=8, hidden=12, n_layers=3, first_window=first_window,
                    zoneout=zoneout)
    ours = _ours_from(model, qrnn_zoneout=zoneout)
    graphdef, params = nnx.split(ours, nnx.Param)
    model.train()
    model.reset()
    state = None
    for window, key in zip([_ids(rng, batch, time + 1, vocab) for _ in range(2)],
                           jax.random.split(jax.random.key(0), 2), strict=True):
        ids, targets = window[:, :-1], window[:, 1:]
        masks = sample_lm_masks(key, ours.config, batch)
        zoneouts = zoneout_masks(masks.encoder, ours.config, time)
        assert (zoneouts is None) == (zoneout == 0)
        model.zero_grad()
        with DropoutRecorder(lm_replay(model, masks, zoneouts)):
            loss, logits, raw = _fastai_train_loss(model, ids, targets)
        loss.backward()
        (our_loss, out), grads = jax.value_and_grad(_our_train_loss, has_aux=True)(
            params, graphdef, jnp.asarray(ids), jnp.asarray(targets), state, masks)
        state = jax.lax.stop_gradient(out.state)  # carried: cells and layer 0's last input
        np.testing.assert_allclose(np.asarray(out.logits), logits.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(out.raw_last), raw.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(float(our_loss), loss.item(), rtol=1e-6)
        expected = {"encoder": qrnn_grads(model[0]),
                    "decoder_bias": model[1].decoder.bias.grad.numpy()}
        got = grads.to_pure_dict()
        for path, g in jax.tree_util.tree_leaves_with_path(expected):
            ours_g = np.asarray(_at(got, path))
            np.testing.assert_allclose(ours_g, g, rtol=1e-5, atol=1e-5 * np.abs(g).max(),
                                       err_msg=jax.tree_util.keystr(path))


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


@pytest.mark.parametrize("window", [1, 2])
def test_one_layer_with_zoneout_matches_fastais_qrnn_layer(window):
    """`qrnn_layer` against fastai's QRNNLayer: hidden state given, zoneout mask injected."""
    torch.manual_seed(0)
    reference = QRNNLayer(5, 7, save_prev_x=True, zoneout=0.4, window=window).train()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 5)).astype(np.float32)
    hidden = rng.normal(size=(2, 7)).astype(np.float32)
    mask = (rng.random((2, 6, 7)) > 0.4).astype(np.float32) / 0.6
    with DropoutRecorder({reference: torch.from_numpy(mask)}):
        out_ref, c_ref = reference(torch.from_numpy(x), torch.from_numpy(hidden))
    kernel = reference.linear.weight.detach().numpy().T
    bias = reference.linear.bias.detach().numpy()
    state = (jnp.asarray(hidden), jnp.zeros((2, 5))) if window == 2 else (jnp.asarray(hidden),)
    out, new_state = qrnn_layer(jnp.swapaxes(jnp.asarray(x), 0, 1), state, kernel, bias, window,
                                zoneout=jnp.swapaxes(jnp.asarray(mask), 0, 1))
    np.testing.assert_allclose(np.swapaxes(np.asarray(out), 0, 1), out_ref.detach().numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(new_state[0], c_ref.detach().numpy(), atol=1e-6)
    if window == 2:
        np.testing.assert_array_equal(new_state[1], reference.prev_x[:, 0].numpy())


# ----------------------------------------------------------------------------- classifier

VOCAB, BPTT, MAX_LEN = 31, 5, 10


def _docs(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, VOCAB, size=n) for n in lengths]


def _fastai_batch(docs: list[np.ndarray]) -> np.ndarray:
    """fastai's classifier collation: whole chunks of padding first, the remainder last."""
    samples = [(torch.from_numpy(d),) for d in docs]
    return torch.stack([s[0] for s in pad_input_chunk(samples, pad_idx=PAD, seq_len=BPTT)]).numpy()


def _classifier_pair(n_layers: int, seed: int = 0, **dropouts: float):
    model = qrnn_classifier(VOCAB, emb=8, hidden=12, n_layers=n_layers, n_classes=3, bptt=BPTT,
                            max_len=MAX_LEN, seed=seed, **dropouts)
    config, state = classifier_params_from_fastai(state_dict_numpy(model), bptt=BPTT,
                                                  max_len=MAX_LEN)
    assert config.encoder.encoder_kind == "qrnn"
    ours = AWDLSTMClassifier(config, rngs=nnx.Rngs(0))
    load_pure_dict(ours, state)
    return model, ours


def _fastai_eval(model, ids: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids))[0].numpy()


def test_classifier_eval_logits_match_fastai_over_bpt3c_chunks_with_leading_padding():
    model, ours = _classifier_pair(n_layers=3, weight_p=1e-6)
    # Sorted longest first, padded length a multiple of bptt (fastai is batch-consistent
    # there); max_len=10 drops the first chunks of the long documents, whose state and saved
    # input still carry over.
    docs = _docs([25, 17, 9, 4, 13])
    docs.sort(key=len, reverse=True)
    docs[0][7] = PAD
    ids = _fastai_batch(docs)
    got = np.asarray(ours(jnp.asarray(ids)))
    np.testing.assert_allclose(got, _fastai_eval(model, ids), atol=1e-5, rtol=0)
    alone = np.concatenate([_fastai_eval(model, d[None]) for d in docs])
    np.testing.assert_allclose(got, alone, atol=1e-5, rtol=0)


def test_classifier_training_outputs_and_gradients_match_fastai_with_injected_masks():
    model, ours = _classifier_pair(n_layers=2, seed=3)
    ids = _fastai_batch(_docs([19, 14, 12, 6], seed=4))  # consistent layout, padded length 20
    masks = sample_classifier_masks(jax.random.key(0), ours.config, batch_size=ids.shape[0])
    head_dropouts = install_head_dropouts(model)
    replay = encoder_replay(model[0].module, masks.encoder, None)
    replay.update({dp: torch.from_numpy(np.asarray(m).copy())
                   for dp, m in zip(head_dropouts, masks.head, strict=True)})
    model.train()
    with DropoutRecorder(replay):
        expected = model(torch.from_numpy(ids))[0]
    expected.sum().backward()

    def loss(clf: AWDLSTMClassifier, masks: ClassifierDropoutMasks):
        logits = clf(jnp.asarray(ids), masks=masks, train=True)
        return jnp.sum(logits), logits

    (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(ours, masks)
    np.testing.assert_allclose(np.asarray(logits), expected.detach().numpy(), atol=1e-5, rtol=0)
    ref = qrnn_grads(model[0].module)
    got = grads.to_pure_dict()["encoder"]
    for path, g in jax.tree_util.tree_leaves_with_path(ref):
        np.testing.assert_allclose(np.asarray(_at(got, path)), g, rtol=1e-5,
                                   atol=1e-5 * np.abs(g).max(), err_msg=jax.tree_util.keystr(path))


# ----------------------------------------------------------------------------- masked steps


def test_masked_steps_leave_cells_and_saved_input_untouched():
    """Leading padding (classifier) and right padding (generator): a row's output and final
    state equal those of its real tokens run alone."""
    config = AWDLSTMConfig(vocab_size=23, emb_size=6, hidden_size=10, n_layers=2,
                           encoder_kind="qrnn")
    weights = QRNNEncoder(config, rngs=nnx.Rngs(1)).weights()
    run = jax.jit(lambda ids, state, step_mask=None: encode(weights, config, ids, state,
                                                            step_mask=step_mask))
    rng = np.random.default_rng(5)
    ids = rng.integers(2, 23, size=(3, 9))
    step_mask = np.ones((3, 9), bool)
    step_mask[1, :4] = False  # leading padding
    step_mask[2, 6:] = False  # right padding
    start = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32),
                         zero_state(config, 3))
    out, state = run(jnp.asarray(ids), start, jnp.asarray(step_mask))
    for row in range(3):
        real = ids[row][step_mask[row]]
        row_start = jax.tree.map(lambda a, r=row: a[r:r + 1], start)
        alone, alone_state = run(jnp.asarray(real[None]), row_start)
        np.testing.assert_allclose(np.asarray(out[row])[step_mask[row]], alone[0], atol=1e-6)
        for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(alone_state), strict=True):
            np.testing.assert_allclose(got[row], want[0], atol=1e-6)
    assert len(state[0]) == 2 and len(state[1]) == 1  # layer 0 saves its input (window 2)


def test_sampled_masks_and_state_have_fastai_shapes_and_scaling():
    config = AWDLSTMConfig(vocab_size=100, emb_size=8, hidden_size=12, n_layers=3,
                           encoder_kind="qrnn", qrnn_zoneout=0.25)
    masks = sample_lm_masks(jax.random.key(0), config, batch_size=5).encoder
    assert masks.embed.shape == (100,) and masks.input.shape == (5, 8)
    assert [m.shape for m in masks.hidden] == [(5, 12), (5, 12)]
    # DropConnect on each layer's whole linear weight: window * in by z, f, o
    assert [m.shape for m in masks.weight] == [(16, 36), (12, 36), (12, 24)]
    zoneouts = zoneout_masks(masks, config, time=7)
    assert [m.shape for m in zoneouts] == [(5, 7, 12), (5, 7, 12), (5, 7, 8)]
    for mask, p in [(masks.weight[0], 0.2), (zoneouts[0], 0.25)]:
        np.testing.assert_allclose(np.unique(np.asarray(mask)), [0.0, 1 / (1 - p)], rtol=1e-6)
    assert zoneout_masks(masks.replace(zoneout_keys=None), config, 7) is None
    state = zero_state(config, 5)
    assert [[a.shape for a in layer] for layer in state] == [[(5, 12), (5, 8)], [(5, 12)],
                                                             [(5, 8)]]
    no_save = AWDLSTMConfig(vocab_size=100, encoder_kind="qrnn", qrnn_save_prev_x=False)
    assert all(len(layer) == 1 for layer in zero_state(no_save, 2))
