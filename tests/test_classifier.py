"""AWD-LSTM classifier: live parity with fastai 2.8.12 and batch consistency."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from fastai.text.data import pad_input_chunk
from flax import nnx

from tests.fastai_reference import (
    DropoutRecorder,
    classifier_masks_to_fastai,
    fastai_classifier,
    install_head_dropouts,
    load_pure_dict,
    state_dict_numpy,
    text_learner_step,
)
from ulmfit_jax.convert.fastai_weights import classifier_params_from_fastai
from ulmfit_jax.model.batch_norm import BatchNorm
from ulmfit_jax.model.classifier import AWDLSTMClassifier, sample_classifier_masks
from ulmfit_jax.model.encoder import fastai_step_multiplicity
from ulmfit_jax.optim import optimizer as opt
from ulmfit_jax.optim.layer_groups import classifier_layer_groups
from ulmfit_jax.text.classifier_batches import repad
from ulmfit_jax.trainer import sharding, steps
from ulmfit_jax.trainer.loop import Phase, start_phase

PAD, VOCAB, BPTT, MAX_LEN = 1, 31, 5, 10


def _docs(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, VOCAB, size=n) for n in lengths]


def _fastai_batch(docs: list[np.ndarray]) -> np.ndarray:
    """fastai's classifier collation: whole chunks of padding first, the remainder last."""
    samples = [(torch.from_numpy(d),) for d in docs]
    return torch.stack([s[0] for s in pad_input_chunk(samples, pad_idx=PAD, seq_len=BPTT)]).numpy()


@pytest.fixture(scope="module")
def models():
    model = fastai_classifier(VOCAB, emb=8, hidden=12, n_layers=3, n_classes=3, bptt=BPTT,
                              max_len=MAX_LEN, weight_p=1e-6)
    config, state = classifier_params_from_fastai(state_dict_numpy(model), bptt=BPTT,
                                                  max_len=MAX_LEN)
    ours = AWDLSTMClassifier(config, rngs=nnx.Rngs(0))
    load_pure_dict(ours, state)
    return model, ours


def _fastai_eval(model, ids: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids))[0].numpy()


def _fastai_alone(model, docs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([_fastai_eval(model, d[None]) for d in docs])


def test_eval_logits_match_fastai_batch_and_single(models):
    model, ours = models
    # Sorted longest first, padded length a multiple of bptt: fastai is batch-consistent here;
    # max_len=10 drops the first chunks of the long documents.
    docs = _docs([25, 17, 9, 4, 13])
    docs.sort(key=len, reverse=True)
    docs[0][7] = PAD  # an interior pad token
    ids = _fastai_batch(docs)
    got = np.asarray(ours(jnp.asarray(ids)))
    np.testing.assert_allclose(got, _fastai_eval(model, ids), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, _fastai_alone(model, docs), atol=1e-5, rtol=0)


def test_fastai_inconsistent_batch_gives_single_document_result(models):
    model, ours = models
    # Padded length 23: at chunk 20 the 4-token document is trailing padding, so fastai's
    # real_bs stops before the 3-token document and skips it.
    docs = _docs([23, 4, 3], seed=1)
    ids = _fastai_batch(docs)
    alone = _fastai_alone(model, docs)
    fastai_batch = _fastai_eval(model, ids)
    assert np.abs(fastai_batch[2] - alone[2]).max() > 1e-4, "fixture no longer shows the quirk"
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids))), alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lengths", [[3, 23, 8, 11, 15], [30, 2, 7, 19]])
def test_prediction_does_not_depend_on_batch(models, lengths):
    _, ours = models
    docs = _docs(lengths, seed=2)
    docs[1][1] = PAD
    batch = np.asarray(ours(jnp.asarray(_fastai_batch(docs))))
    alone = np.concatenate([np.asarray(ours(jnp.asarray(d[None]))) for d in docs])
    np.testing.assert_allclose(batch, alone, atol=1e-5, rtol=0)


def test_training_mode_with_injected_masks_matches_fastai():
    model = fastai_classifier(VOCAB, emb=8, hidden=12, n_layers=2, n_classes=3, bptt=BPTT,
                              max_len=MAX_LEN, seed=3)
    config, state = classifier_params_from_fastai(state_dict_numpy(model), bptt=BPTT,
                                                  max_len=MAX_LEN)
    ours = AWDLSTMClassifier(config, rngs=nnx.Rngs(0))
    load_pure_dict(ours, state)
    docs = _docs([19, 14, 12, 6], seed=4)  # consistent layout, padded length 20
    ids = _fastai_batch(docs)
    masks = sample_classifier_masks(jax.random.key(0), config, batch_size=len(docs))
    head_dropouts = install_head_dropouts(model)
    model.train()
    with DropoutRecorder(classifier_masks_to_fastai(model, masks, head_dropouts)):
        expected = model(torch.from_numpy(ids))[0]
    expected.sum().backward()

    def loss(clf):
        return jnp.sum(clf(jnp.asarray(ids), masks=masks, train=True))

    total, grads = nnx.value_and_grad(loss)(ours)  # also updates ours' running stats
    np.testing.assert_allclose(float(total), expected.sum().item(), rtol=1e-5)
    for k, block in enumerate(model[1].layers):
        bn = ours.head.blocks[k].batch_norm
        np.testing.assert_allclose(bn.mean[...], block[0].running_mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(bn.var[...], block[0].running_var.numpy(), atol=1e-6)
    g = grads.to_pure_dict()
    enc = model[0].module
    pairs = [(g["encoder"]["embedding"], enc.encoder.weight.grad.numpy()),
             (g["encoder"]["layers"][0]["w_hh"], enc.rnns[0].weight_hh_l0_raw.grad.numpy().T),
             (g["head"]["blocks"][0]["linear"]["kernel"],
              model[1].layers[0][2].weight.grad.numpy().T)]
    for ours_g, ref in pairs:
        np.testing.assert_allclose(ours_g, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_sentence_outputs_are_fastais_at_its_width_and_at_our_bucketed_one(models):
    model, ours = models
    # fastai runs each chunk on the rows whose token there is real (consistent here); max_len
    # keeps its chunks 15 and 20 of 23; the 9-token document ends with chunk 15 (zeros after
    # it), the 17- and 12-token ones with a trailing pad each.
    docs = _docs([23, 17, 12, 9], seed=6)
    ids = _fastai_batch(docs)
    model.eval()
    with torch.no_grad():
        expected = model[0](torch.from_numpy(ids))[0].numpy()
    bucketed = repad({"ids": ids, "lengths": np.array([len(d) for d in docs])}, BPTT, PAD)
    assert bucketed.shape[1] > ids.shape[1] and expected.shape[1] < ids.shape[1]
    assert not expected[3, -3:].any() and expected[1, -1].any()  # the layout tested
    graphdef, state = nnx.split(ours)
    forward = jax.jit(lambda ids: nnx.merge(graphdef, state).forward(ids))
    alone = _fastai_alone(model, docs)  # max_len cuts the 9-token document in fastai's batch
    for batch in (ids, bucketed):
        out = forward(batch)
        length = int(out.sentence_length)
        assert length == expected.shape[1]
        np.testing.assert_allclose(out.sentence_outputs[:, :length], expected, atol=1e-6, rtol=0)
        assert not np.asarray(out.sentence_outputs[:, length:]).any()
        np.testing.assert_allclose(out.logits, alone, atol=1e-5, rtol=0)


def test_a_bucket_with_chunks_in_front_gives_each_document_fastais_answer(models):
    """`pad_bucketed` puts fastai's layout at the batch width (21) inside the bucket (6 chunks,
    30): a whole chunk of padding in front of every row and 4 pads after, so the 17-token
    document ends 8 > bptt positions before the end. With max_len 10 it still needs its chunk
    at 15 (fastai: 17 - 10 <= 10), which only the first-kept-chunk slack of 2 * bptt keeps."""
    model, ours = models
    docs = _docs([21, 17, 9, 3], seed=11)
    ids = _fastai_batch(docs)
    bucketed = repad({"ids": ids, "lengths": np.array([len(d) for d in docs])}, BPTT, PAD)
    assert ids.shape[1] == 21 and bucketed.shape[1] == 30
    real = bucketed != PAD
    assert not real[:, :BPTT].any() and not real[:, 26:].any() and real[1, 21]
    np.testing.assert_array_equal(bucketed[:, BPTT:26], ids)
    alone = _fastai_alone(model, docs)
    for batch in (ids, bucketed):
        np.testing.assert_allclose(np.asarray(ours(jnp.asarray(batch))), alone, atol=1e-5,
                                   rtol=0)


@pytest.mark.parametrize("lengths", [[23, 17, 12, 9], [12, 3, 7, 0], [11, 6], [4]])
def test_activation_sums_are_fastais_ar_tar_sums_over_its_outputs(models, lengths):
    """The training step's AR/TAR sums, read from our outputs in place, equal the sums over
    fastai's `SentenceEncoder` outputs rebuilt by `fastai_sentence_outputs`, at fastai's width
    and at our bucketed one: rows cut by max_len, rows whose text starts or ends next to
    fastai's zeros (the 3-token row), a filler row (0 tokens) and a batch of one."""
    _, ours = models
    docs = _docs(lengths, seed=len(lengths))
    ids = _fastai_batch(docs)
    bucketed = repad({"ids": ids, "lengths": np.array(lengths)}, BPTT, PAD)
    graphdef, state = nnx.split(ours)
    masks = sample_classifier_masks(jax.random.key(3), ours.config, len(docs))
    forward = jax.jit(lambda ids: nnx.merge(graphdef, state).forward(ids, masks=masks))
    for batch in (ids, bucketed):
        out = forward(batch)
        length = int(out.sentence_length)
        h = np.asarray(out.sentence_outputs, np.float64)[:, :length]
        sums = out.activation_sums
        assert int(sums.length) == length
        np.testing.assert_allclose(float(sums.squares), np.sum(h**2), rtol=1e-5)
        np.testing.assert_allclose(float(sums.step_differences),
                                   np.sum((h[:, 1:] - h[:, :-1])**2), rtol=1e-5)
        emb = h.shape[-1]
        expected = steps.activation_regularization(out.sentence_outputs, out.sentence_outputs,
                                                   2.0, 1.0, out.sentence_length)
        got = steps.regularization_from_sums(sums, len(docs), emb, 2.0, 1.0)
        np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)


def _fastai_grads_as_ours(model, grads: dict[str, np.ndarray], max_len: int) -> dict:
    """fastai gradients by torch name -> our parameter tree (zeros where fastai has none);
    its two LSTM biases have the same gradient, which our fused bias gets once."""
    state = state_dict_numpy(model)
    for name in dict(model.named_parameters()):
        state[name] = grads.get(name, np.zeros_like(state[name]))
        if "bias_hh" in name:
            state[name] = np.zeros_like(state[name])
    state["0.module.encoder_dp.emb.weight"] = state["0.module.encoder.weight"]  # tied
    _, tree = classifier_params_from_fastai(state, bptt=BPTT, max_len=max_len)
    for block in tree["head"]["blocks"].values():
        del block["batch_norm"]["mean"], block["batch_norm"]["var"]
    return tree


def _assert_trees_close(ours, theirs, **tolerance):
    """Every leaf of `ours` against the leaf at its path in `theirs` (which may hold more)."""
    flat = dict(jax.tree_util.tree_leaves_with_path(theirs))
    for path, leaf in jax.tree_util.tree_leaves_with_path(ours):
        ref = flat[path]
        atol = tolerance.get("atol", 1e-5 * np.abs(ref).max())
        np.testing.assert_allclose(np.asarray(leaf), ref, rtol=tolerance.get("rtol", 1e-5),
                                   atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("freeze_to, lr, lr_div", [(-1, 2e-3, 1.0), (0, 1e-3, 2.6**4)])
def test_a_training_step_with_ar_tar_matches_fastais_text_learner(freeze_to, lr, lr_div):
    """Our trainer's step against fastai's own `TextLearner` (its RNNRegularizer with alpha 2,
    beta 1, Adam, freeze_to / train_bn), on converted weights with the step's masks injected:
    the loss it differentiates, the gradients, the parameters and BatchNorm statistics after."""
    max_len, wd = 15, 0.01
    model = fastai_classifier(VOCAB, emb=8, hidden=12, n_layers=2, n_classes=3, bptt=BPTT,
                              max_len=max_len, seed=3)
    config, state = classifier_params_from_fastai(state_dict_numpy(model), bptt=BPTT,
                                                  max_len=max_len)
    ours = AWDLSTMClassifier(config, rngs=nnx.Rngs(0))
    load_pure_dict(ours, state)
    # A batch fastai runs consistently: max_len keeps its chunks 10 to 20 of 22, the 5-token
    # document has zeros before (chunk 10) and after (chunk 20) its text, the 21-token one a
    # trailing pad.
    ids = _fastai_batch(_docs([22, 21, 17, 5], seed=7))
    labels = np.array([0, 2, 1, 2], np.int32)
    params = nnx.to_pure_dict(nnx.state(ours, nnx.Param))
    optimizer = opt.ulmfit_optimizer(params, classifier_layer_groups(2), wd=wd,
                                     multiplicity=fastai_step_multiplicity(config.encoder))
    graphdef, train_state = steps.create_classifier_state(ours, optimizer.transform())
    train_state = start_phase(train_state, Phase(1, lr, lr_div, freeze_to))
    frozen = optimizer.frozen_mask(freeze_to) if freeze_to else None
    rng = jax.random.key(0)
    masks = sample_classifier_masks(jax.random.fold_in(rng, 0), config, len(ids))  # step 0's
    objective = functools.partial(steps.classifier_objective, graphdef=graphdef, alpha=2.0,
                                  beta=1.0, frozen=frozen)
    (loss, _), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(
        train_state.params, train_state.batch_stats, ids, labels, masks)
    step = steps.make_train_step(steps.classifier_train_step, sharding.make_data_mesh(),
                                 train_state, graphdef=graphdef, model_config=config,
                                 optimizer=optimizer.transform(freeze_to), frozen=frozen,
                                 alpha=2.0, beta=1.0)
    hparams = {"lr": jnp.float32(lr), "mom": jnp.float32(0.9)}  # fastai's Adam mom in `fit`
    new_state, metrics = step(train_state, {"inputs": ids, "labels": labels}, rng, hparams)

    replay = classifier_masks_to_fastai(model, masks, install_head_dropouts(model))
    fastai = text_learner_step(model, ids, labels, freeze_to=freeze_to, lr=lr, lr_div=lr_div,
                               replay=replay, wd=wd, alpha=2.0, beta=1.0)
    assert fastai.loss_grad - fastai.loss > 1e-2  # AR/TAR are in what fastai differentiates
    np.testing.assert_allclose(float(loss), fastai.loss_grad, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss_sum"]) / len(ids), fastai.loss, rtol=1e-5)
    assert any("0.module" in name for name in fastai.grads) == (freeze_to == 0)
    _assert_trees_close(grads, _fastai_grads_as_ours(model, fastai.grads, max_len))
    _, after = classifier_params_from_fastai(state_dict_numpy(model), bptt=BPTT, max_len=max_len)
    _assert_trees_close(new_state.params, after, rtol=0, atol=1e-5)
    _assert_trees_close(new_state.batch_stats, after, rtol=0, atol=1e-6)


def test_batch_norm_matches_torch_in_training_and_eval():
    x = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    ref = torch.nn.BatchNorm1d(4)
    ours = BatchNorm(4)
    ours.bias[...] = jnp.zeros(4)  # torch's init; fastai uses 1e-3
    ref.train()
    y_ref = ref(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x), train=True)), y_ref, atol=1e-6)
    np.testing.assert_allclose(ours.mean[...], ref.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.var[...], ref.running_var.numpy(), atol=1e-6)
    ref.eval()
    y_ref = ref(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), y_ref, atol=1e-6)
