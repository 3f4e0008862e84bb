"""AWD-LSTM classifier: live parity with fastai 2.8.12 and batch consistency."""
from __future__ import annotations

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
)
from ulmfit_jax.convert.fastai_weights import classifier_params_from_fastai
from ulmfit_jax.model.batch_norm import BatchNorm
from ulmfit_jax.model.classifier import AWDLSTMClassifier, sample_classifier_masks

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
