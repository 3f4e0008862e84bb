"""Public API: LanguageModel / TextClassifier against fastai itself, save/load, export.

fastai models and files are built live at tiny sizes (helpers in test_fastai_files).
"""

from __future__ import annotations

import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from fastai.text.all import pad_chunk

from tests.test_fastai_files import (
    SPECIALS,
    VOCAB,
    fastai_classifier_learner,
    fastai_classifier_logits,
    fastai_lm_learner,
    fastai_lm_logits,
    numpy_state,
    old_specials,
    to_2018_layout,
)
from ulmfit_jax import api
from ulmfit_jax.api import LanguageModel, TextClassifier, language_model, saved_model
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.text.vocab import Vocab

TOL = dict(rtol=1e-4, atol=1e-5)
BPTT = 8  # the fastai classifier fixture reads documents in chunks of 8


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    lm = fastai_lm_learner(VOCAB, root)
    clf = fastai_classifier_learner(VOCAB, root, seq_len=BPTT)
    f = {"root": root, "lm": lm, "clf": clf}
    f["lm_file"] = lm.save("lm")
    lm.save_encoder("enc")
    f["enc_file"] = root / "models" / "enc.pth"
    f["clf_file"] = clf.save("clf")
    f["itos"] = root / "itos.pkl"
    f["itos"].write_bytes(pickle.dumps(VOCAB, protocol=2))
    return f


def _ids(seed, batch, time, low=0):
    return np.random.default_rng(seed).integers(low, len(VOCAB), (batch, time))


# ------------------------------------------------------------------ LanguageModel


def test_lm_from_fastai_matches_fastai_logits_and_carried_state(fx):
    lm = LanguageModel.from_fastai(fx["lm_file"], fx["itos"])
    assert lm.vocab == VOCAB and lm.config.vocab_size == 32 and lm.config.hidden_size == 24
    model = fx["lm"].model
    model.eval()
    model.reset()
    state = None
    # Batch sizes 3 -> 3 -> 2 -> 4: fastai keeps the first rows, then adds zero rows.
    for step, batch in enumerate([3, 3, 2, 4]):
        ids = _ids(step, batch, 7)
        with torch.no_grad():
            expected = model(torch.as_tensor(ids))[0].numpy()
        logits, state = lm(ids, state)
        assert logits.shape == (batch, 7, 32)
        np.testing.assert_allclose(np.asarray(logits), expected, **TOL, err_msg=f"step {step}")


def test_lm_reads_2018_layout(fx, tmp_path):
    sd = fx["lm"].model.state_dict()
    torch.save(to_2018_layout(sd), tmp_path / "fwd_wt103.h5")
    (tmp_path / "itos_wt103.pkl").write_bytes(pickle.dumps(old_specials(VOCAB)))
    lm = LanguageModel.from_fastai(tmp_path / "fwd_wt103.h5", tmp_path / "itos_wt103.pkl")
    assert lm.vocab == VOCAB
    ids = _ids(1, 2, 6)
    bias = sd["1.decoder.bias"].numpy()
    np.testing.assert_allclose(np.asarray(lm(ids)[0]) + bias,
                               fastai_lm_logits(fx["lm"].model, ids), **TOL)


def test_lm_new_vocab_matches_fastai_load_pretrained(fx, tmp_path):
    new_vocab = SPECIALS + ["w7", "novel", "w2", "w19", "other", "w0", "xxfake"]
    lm = LanguageModel.from_fastai(fx["lm_file"], fx["itos"], new_vocab=Vocab(new_vocab))
    assert lm.vocab == new_vocab
    theirs = fastai_lm_learner(new_vocab, tmp_path, seed=5)
    theirs.load_pretrained(fx["lm_file"], fx["itos"])
    ids = np.random.default_rng(3).integers(0, len(new_vocab), (2, 9))
    np.testing.assert_allclose(np.asarray(lm(ids)[0]), fastai_lm_logits(theirs.model, ids), **TOL)


def test_lm_round_trip_through_fastai_loaders(fx, tmp_path):
    lm = LanguageModel.from_fastai(fx["lm_file"], fx["itos"])
    lm.to_fastai(tmp_path / "out.pth", tmp_path / "out.pkl")
    ids = _ids(4, 3, 10)
    expected = fastai_lm_logits(fx["lm"].model, ids)
    fresh = fastai_lm_learner(VOCAB, tmp_path, seed=9)
    fresh.load_pretrained(tmp_path / "out.pth", tmp_path / "out.pkl")
    np.testing.assert_allclose(fastai_lm_logits(fresh.model, ids), expected, **TOL)
    fresh = fastai_lm_learner(VOCAB, tmp_path, seed=10)
    fresh.load(tmp_path / "out")
    np.testing.assert_allclose(fastai_lm_logits(fresh.model, ids), expected, **TOL)
    # and back into ours: same parameters
    again = LanguageModel.from_fastai(tmp_path / "out.pth", tmp_path / "out.pkl")
    jax.tree.map(np.testing.assert_array_equal, again.params, lm.params)


def test_lm_eval_is_jitted_once_per_shape(fx):
    lm = LanguageModel.from_fastai(fx["lm_file"], fx["itos"])
    lm(_ids(0, 2, 5))
    before = language_model._lm_forward._cache_size()
    _, state = lm(_ids(1, 2, 5))
    lm(_ids(2, 2, 5), state)
    assert language_model._lm_forward._cache_size() == before
    lm(_ids(3, 2, 13))  # a shape no other test uses
    assert language_model._lm_forward._cache_size() == before + 1


def test_lm_rejects_bad_ids(fx):
    lm = LanguageModel.from_fastai(fx["lm_file"], fx["itos"])
    with pytest.raises(ValueError, match=r"in \[0, 32\), got range \[0, 32\]"):
        lm(np.array([[0, 32]]))
    with pytest.raises(ValueError, match=r"integer \[batch, time\]"):
        lm(np.array([1, 2]))


def test_lm_save_load_round_trip(fx, tmp_path):
    lm = LanguageModel.from_fastai(fx["lm_file"], fx["itos"], drop_mult=0.3)
    lm.save(tmp_path / "saved")
    assert sorted(os.listdir(tmp_path)) == _linked(tmp_path / "saved")  # no temporary left
    loaded = LanguageModel.load(tmp_path / "saved")
    assert loaded.config == lm.config and loaded.vocab == lm.vocab
    assert Vocab.load(tmp_path / "saved" / "vocab.json").itos == VOCAB
    jax.tree.map(np.testing.assert_array_equal, loaded.params, lm.params)
    ids = _ids(5, 2, 4)
    np.testing.assert_array_equal(np.asarray(loaded(ids)[0]), np.asarray(lm(ids)[0]))
    with pytest.raises(FileExistsError, match="saved already exists"):
        lm.save(tmp_path / "saved")


def test_configs_round_trip_through_json():
    enc = AWDLSTMConfig(vocab_size=40, compute_dtype=jnp.bfloat16, lstm_impl="scan",
                        drop_mult=0.3)
    clf = ClassifierConfig(enc, 3, bptt=16, head_sizes=(50, 20), head_ps=(0.1, 0.2))
    assert enc.to_dict()["compute_dtype"] == "bfloat16"
    assert clf.to_dict()["encoder"] == enc.to_dict()
    for config in (enc, clf, ClassifierConfig(enc, 2)):
        assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_from_params_checks_every_path_and_shape():
    itos = [f"w{i}" for i in range(16)]
    config = AWDLSTMConfig(vocab_size=16, emb_size=8, hidden_size=8, n_layers=1)
    params = LanguageModel.create(config, itos, seed=1).params
    # list indices as strings (how JSON and orbax may give them back) are the same paths
    as_str = {**params, "encoder": {**params["encoder"],
                                    "layers": {"0": params["encoder"]["layers"][0]}}}
    loaded = LanguageModel.from_params(config, as_str, itos)
    jax.tree.map(np.testing.assert_array_equal, loaded.params, params)
    missing = {k: v for k, v in params.items() if k != "decoder_bias"}
    with pytest.raises(ValueError, match=r"missing \['decoder_bias'\], unexpected \[\]"):
        LanguageModel.from_params(config, missing, itos)
    wrong = {**params, "decoder_bias": np.zeros(15, np.float32)}
    with pytest.raises(ValueError, match=r"decoder_bias has shape \(15,\), expected \(16,\)"):
        LanguageModel.from_params(config, wrong, itos)


def test_save_is_atomic_when_interrupted(fx, tmp_path, monkeypatch):
    lm = LanguageModel.from_fastai(fx["lm_file"], fx["itos"])
    lm.save(tmp_path / "m")
    other = LanguageModel.create(lm.config, lm.vocab, seed=3)

    def crash(path, obj):
        raise KeyboardInterrupt("killed while writing " + path)

    monkeypatch.setattr(saved_model, "_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        other.save(tmp_path / "m", overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        other.save(tmp_path / "fresh")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == _linked(tmp_path / "m")
    kept = LanguageModel.load(tmp_path / "m")
    jax.tree.map(np.testing.assert_array_equal, kept.params, lm.params)
    other.save(tmp_path / "m", overwrite=True)
    jax.tree.map(np.testing.assert_array_equal, LanguageModel.load(tmp_path / "m").params,
                 other.params)
    assert sorted(os.listdir(tmp_path)) == _linked(tmp_path / "m")


def _linked(directory) -> list[str]:
    """A saved directory and the one version its link names (`atomic_io.atomic_directory`)."""
    return sorted([directory.name, os.readlink(directory)])


def test_load_names_the_missing_file(fx, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing: no such model directory"):
        LanguageModel.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"missing .*empty/config\.json"):
        LanguageModel.load(tmp_path / "empty")
    lm = LanguageModel.from_fastai(fx["lm_file"], fx["itos"])
    lm.save(tmp_path / "lm")
    os.remove(tmp_path / "lm" / "vocab.json")
    with pytest.raises(FileNotFoundError, match=r"missing .*lm/vocab\.json"):
        LanguageModel.load(tmp_path / "lm")
    TextClassifier.from_language_model(lm, 2).save(tmp_path / "clf")
    with pytest.raises(ValueError, match="holds a 'classifier', expected 'language_model'"):
        LanguageModel.load(tmp_path / "clf")


def test_lm_from_fastai_refuses_a_classifier_file(fx):
    with pytest.raises(ValueError, match="clf.pth: file kind 'classifier', not a language"):
        LanguageModel.from_fastai(fx["clf_file"], fx["itos"])


# ------------------------------------------------------------------ TextClassifier


def _padded_batch(docs):
    """fastai's classifier layout: whole chunks of padding first, the remainder at the end."""
    n = max(len(d) for d in docs)
    return np.stack([pad_chunk(torch.as_tensor(d), pad_idx=1, pad_first=True, seq_len=BPTT,
                               pad_len=n).numpy() for d in docs])


def test_classifier_from_fastai_matches_fastai_per_document(fx):
    clf = TextClassifier.from_fastai(fx["clf_file"], fx["itos"], bptt=BPTT)
    assert clf.config.n_classes == 3 and clf.config.head_sizes == (10,)
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, len(VOCAB), n) for n in (21, 16, 5, 11)]
    logits = np.asarray(clf(_padded_batch(docs)))
    assert logits.shape == (4, 3)
    for doc, got in zip(docs, logits, strict=True):
        expected = fastai_classifier_logits(fx["clf"].model, doc[None])
        np.testing.assert_allclose(got, expected[0], **TOL)


def test_classifier_round_trip_through_fastai_learner_load(fx, tmp_path):
    clf = TextClassifier.from_fastai(fx["clf_file"], fx["itos"], bptt=BPTT)
    clf.to_fastai(tmp_path / "models" / "ours.pth", tmp_path / "ours.pkl")
    fresh = fastai_classifier_learner(VOCAB, tmp_path, seed=11, seq_len=BPTT)
    fresh.load("ours")
    ids = _ids(6, 3, 16, low=2)
    np.testing.assert_allclose(fastai_classifier_logits(fresh.model, ids),
                               fastai_classifier_logits(fx["clf"].model, ids), **TOL)
    assert pickle.loads((tmp_path / "ours.pkl").read_bytes()) == VOCAB


def test_classifier_save_load_keeps_batchnorm_stats(fx, tmp_path):
    clf = TextClassifier.from_fastai(fx["clf_file"], fx["itos"], bptt=BPTT)
    clf.save(tmp_path / "c")
    loaded = TextClassifier.load(tmp_path / "c")
    assert loaded.config == clf.config and loaded.vocab == VOCAB
    jax.tree.map(np.testing.assert_array_equal, loaded.state, clf.state)
    mean = fx["clf"].model[1].layers[0][0].running_mean.numpy()
    np.testing.assert_array_equal(loaded.state["head"]["blocks"][0]["batch_norm"]["mean"], mean)
    ids = _ids(7, 2, 9, low=2)
    np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(clf(ids)))


def test_classifier_from_encoder_file_and_from_language_model(fx):
    lm = LanguageModel.from_fastai(fx["lm_file"], fx["itos"])
    from_enc = TextClassifier.from_fastai(fx["enc_file"], fx["itos"], n_classes=5, bptt=BPTT)
    from_lm = TextClassifier.from_language_model(lm, n_classes=5, bptt=BPTT)
    for clf in (from_enc, from_lm):
        assert clf.config.n_classes == 5
        assert clf.config.encoder.drop_mult == api.CLASSIFIER_DROP_MULT
        assert clf.config.encoder.input_p == 0.4  # fastai's awd_lstm_clas_config
        jax.tree.map(np.testing.assert_array_equal, clf.params["encoder"], lm.params["encoder"])
        assert clf(_ids(8, 2, 12, low=2)).shape == (2, 5)
    with pytest.raises(ValueError, match="enc.pth: file kind 'encoder', not a classifier; pass"):
        TextClassifier.from_fastai(fx["enc_file"], fx["itos"])
    with pytest.raises(ValueError, match="the head has 3 classes, n_classes=2"):
        TextClassifier.from_fastai(fx["clf_file"], fx["itos"], n_classes=2)


def test_classifier_encoder_round_trips_through_fastai_load_encoder(fx, tmp_path):
    clf = TextClassifier.from_fastai(fx["clf_file"], fx["itos"], bptt=BPTT)
    expected = numpy_state(fx["clf"].model[0].module)
    from ulmfit_jax.convert import fastai_files, fastai_weights

    sd = fastai_weights.encoder_params_to_fastai(clf.params["encoder"])
    fastai_files.save_encoder(sd, tmp_path / "models" / "e.pth")
    fresh = fastai_classifier_learner(VOCAB, tmp_path, seed=12, seq_len=BPTT)
    fresh.load_encoder("e")
    got = numpy_state(fresh.model[0].module)
    for k, v in expected.items():
        if "bias" in k:  # we store b_ih + b_hh; only their sum is defined
            continue
        np.testing.assert_array_equal(got[k], v, err_msg=k)


# Loads the LM at argv[1] until argv[2] exists, appending each load's vocab size to argv[3];
# any failure ends it with a traceback.
LOADING_LOOP = """
import sys
from pathlib import Path
from ulmfit_jax import LanguageModel
final, stop, progress = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
while not stop.exists():
    lm = LanguageModel.load(final)
    assert len(lm.vocab) == lm.params["decoder_bias"].shape[0] == lm.config.vocab_size
    with progress.open("a") as f:
        f.write(f"{len(lm.vocab)}\\n")
"""


def test_a_process_loading_in_a_loop_never_fails_while_another_saves(tmp_path):
    """Saves alternate two LMs of different vocab sizes over one directory, while another
    process loads it again and again: every load is one whole model (a mix of the two would
    not restore)."""
    import subprocess
    import sys
    import time

    models = [LanguageModel.create(AWDLSTMConfig(vocab_size=n, emb_size=8, hidden_size=8,
                                                 n_layers=1), [f"w{i}" for i in range(n)],
                                   seed=n) for n in (16, 24)]
    final, stop, progress = tmp_path / "lm", tmp_path / "stop", tmp_path / "progress"
    models[0].save(final)
    reader = subprocess.Popen(
        [sys.executable, "-c", LOADING_LOOP, str(final), str(stop), str(progress)],
        env={**os.environ, "JAX_PLATFORMS": "cpu",
             "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))},
        stderr=subprocess.PIPE, text=True)

    def loads() -> list[str]:
        return progress.read_text().split() if progress.exists() else []

    try:
        saves, deadline = 0, time.time() + 240
        while (len(set(loads())) < 2 or len(loads()) < 8) and reader.poll() is None \
                and time.time() < deadline:
            models[saves % 2].save(final, overwrite=True)
            saves += 1
    finally:
        stop.touch()
        stderr = reader.communicate(timeout=120)[1]
    assert reader.returncode == 0, stderr
    assert set(loads()) == {"16", "24"} and len(loads()) >= 8, (saves, loads())
