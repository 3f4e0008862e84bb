"""An AWD-QRNN through fastai files and the public API: fastai state dicts both ways (v2 and
v1 layouts, LM, encoder and classifier), `.pth` files loaded back into fastai's model, orbax
save/load, generation, classifier prediction and the serving export."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fastai_reference import no_grad_eval, state_dict_numpy
from tests.qrnn_reference import qrnn_classifier, qrnn_lm, v1_state_dict
from ulmfit_jax import LanguageModel, TextClassifier, serving
from ulmfit_jax.convert import fastai_files
from ulmfit_jax.convert.fastai_weights import (
    classifier_params_from_fastai,
    classifier_params_to_fastai,
    encoder_params_from_fastai,
    encoder_params_to_fastai,
    lm_params_from_fastai,
    lm_params_to_fastai,
)
from ulmfit_jax.convert.safe_pickle import save_itos
from ulmfit_jax.text import FastaiTokenizer
from ulmfit_jax.text.vocab import Vocab

TEXTS = ["A wonderful, moving film!", "Dull and far too long. Dull.", "The plot makes no sense."]


@pytest.fixture(scope="module")
def vocab() -> list[str]:
    return Vocab.from_tokens(FastaiTokenizer().tokenize(TEXTS * 2), min_freq=1).itos


def _same_dicts(got, expected) -> None:
    assert list(got) == list(expected)  # fastai's load_pretrained copies by position
    for key in expected:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expected[key]),
                                      err_msg=key)


@pytest.mark.parametrize("first_window", [2, 1])
def test_lm_state_dict_round_trips_both_ways_and_v1_files_read_alike(first_window):
    model = qrnn_lm(vocab=23, emb=6, hidden=10, n_layers=3, first_window=first_window)
    sd = state_dict_numpy(model)
    config, params = lm_params_from_fastai(sd)
    assert (config.encoder_kind, config.qrnn_window) == ("qrnn", first_window)
    assert params["encoder"]["layers"][0]["kernel"].shape == (first_window * 6, 30)
    _same_dicts(lm_params_to_fastai(params, config), sd)
    v1 = fastai_files.normalise_state_dict(v1_state_dict(sd))
    assert v1.layout == "v1" and v1.sizes.encoder_kind == "qrnn"
    _same_dicts(v1.state_dict, sd)
    encoder_sd = {k[2:]: v for k, v in sd.items() if k.startswith("0.")}
    enc_config, encoder = encoder_params_from_fastai(encoder_sd)
    assert enc_config.encoder_kind == "qrnn"
    _same_dicts(encoder_params_to_fastai(encoder, enc_config), encoder_sd)


def test_classifier_state_dict_round_trips_both_ways():
    model = qrnn_classifier(vocab=23, emb=6, hidden=10, n_layers=2, n_classes=3, bptt=4,
                            max_len=8)
    sd = state_dict_numpy(model)
    config, state = classifier_params_from_fastai(sd, bptt=4, max_len=8)
    assert config.encoder.encoder_kind == "qrnn" and config.encoder.input_p == 0.4
    written = classifier_params_to_fastai(state, config)
    sd["1.layers.0.0.num_batches_tracked"] = sd["1.layers.1.0.num_batches_tracked"] = np.array(0)
    _same_dicts(written, sd)


def test_a_mis_shaped_qrnn_weight_is_named():
    sd = state_dict_numpy(qrnn_lm(vocab=23, emb=6, hidden=10, n_layers=2))
    sd["0.rnns.1.layers.0.linear.weight_raw"] = np.zeros((30, 20), np.float32)  # window 2
    with pytest.raises(ValueError, match=r"'0\.rnns\.1\.layers\.0\.linear\.weight_raw' has shape "
                                         r"\(30, 20\), expected \(18, 10\)"):
        lm_params_from_fastai(sd)


def test_lm_files_load_back_into_fastai_and_orbax_save_load_keeps_outputs(vocab, tmp_path):
    model = qrnn_lm(vocab=len(vocab), emb=6, hidden=10, n_layers=2)
    torch.save(model.state_dict(), tmp_path / "lm.pth")
    save_itos(vocab, tmp_path / "itos.pkl")
    lm = LanguageModel.from_fastai(tmp_path / "lm.pth", tmp_path / "itos.pkl")
    assert lm.config.encoder_kind == "qrnn"
    ids = np.random.default_rng(0).integers(0, len(vocab), size=(2, 7))
    logits, state = lm(ids)
    lm.save(tmp_path / "saved")
    loaded = LanguageModel.load(tmp_path / "saved")
    assert loaded.config == lm.config
    again, again_state = loaded(ids[:, :3])
    np.testing.assert_array_equal(np.asarray(again), np.asarray(lm(ids[:, :3])[0]))
    loaded.to_fastai(tmp_path / "back.pth", tmp_path / "back.pkl")
    reloaded = qrnn_lm(vocab=len(vocab), emb=6, hidden=10, n_layers=2, seed=1)
    reloaded.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True))
    with no_grad_eval(reloaded):
        expected = reloaded(torch.from_numpy(ids))[0].numpy()
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=0)
    text = lm.generate("a wonderful", n_words=4, seed=0)
    assert text.startswith("a wonderful") and len(text.split()) > 2
    ((_, p), *_), = lm.predict_next(["the plot"], k=3)
    assert 0 < p <= 1


def test_classifier_files_save_load_predict_and_serve(vocab, tmp_path):
    model = qrnn_classifier(vocab=len(vocab), emb=6, hidden=10, n_layers=2, n_classes=2,
                            bptt=4, max_len=8)
    torch.save(model.state_dict(), tmp_path / "clf.pth")
    save_itos(vocab, tmp_path / "itos.pkl")
    clf = TextClassifier.from_fastai(tmp_path / "clf.pth", tmp_path / "itos.pkl",
                                     class_names=["neg", "pos"], bptt=4, max_len=8)
    assert clf.config.encoder.encoder_kind == "qrnn"
    probs = clf.predict_proba(TEXTS)
    clf.save(tmp_path / "saved")
    np.testing.assert_array_equal(TextClassifier.load(tmp_path / "saved").predict_proba(TEXTS),
                                  probs)
    clf.export(tmp_path / "served")
    np.testing.assert_allclose(serving.load(tmp_path / "served").predict_proba(TEXTS), probs,
                               atol=1e-5, rtol=0)
    clf.to_fastai(tmp_path / "back.pth")
    back = qrnn_classifier(vocab=len(vocab), emb=6, hidden=10, n_layers=2, n_classes=2,
                           bptt=4, max_len=8, seed=1)
    back.load_state_dict(torch.load(tmp_path / "back.pth", weights_only=True))
    ids = np.arange(2, 8)[None]  # no padding: fastai's layout needs none
    back.eval()
    with torch.no_grad():
        expected = back(torch.from_numpy(ids))[0].numpy()
    np.testing.assert_allclose(np.asarray(clf(ids)), expected, atol=1e-5, rtol=0)
