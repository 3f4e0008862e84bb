"""Multi-label classification as fastai does it: sigmoid + binary cross-entropy, accuracy_multi
at a threshold, micro / macro F1; learned end to end through train.py."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from fastai.losses import BCEWithLogitsLossFlat
from fastai.metrics import accuracy_multi
from sklearn.metrics import f1_score

from tests.synthetic import TOPICS, write_multi_label_csvs
from tests.test_pretraining import run_train
from ulmfit_jax.api import TextClassifier
from ulmfit_jax.trainer.metrics import multi_label_report
from ulmfit_jax.trainer.steps import multi_label_loss_and_correct


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_loss_and_accuracy_multi_match_fastai(threshold):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (16, 5)).astype(np.float32)
    targets = (rng.random((16, 5)) < 0.4).astype(np.float32)
    loss, correct = multi_label_loss_and_correct(jnp.asarray(logits), jnp.asarray(targets),
                                                 threshold)
    t_logits, t_targets = torch.tensor(logits), torch.tensor(targets)
    expected_loss = BCEWithLogitsLossFlat()(t_logits, t_targets).item()
    expected_acc = accuracy_multi(t_logits, t_targets, thresh=threshold).item()
    assert float(loss.mean()) == pytest.approx(expected_loss, rel=1e-5)
    assert float(correct.mean()) == pytest.approx(expected_acc, rel=1e-6)
    probs = 1 / (1 + np.exp(-logits))
    report = multi_label_report(targets, probs, threshold)
    assert report["accuracy_multi"] == pytest.approx(expected_acc, rel=1e-6)
    predicted = probs > threshold
    for average in ("micro", "macro"):
        assert report[f"{average}_f1"] == pytest.approx(
            f1_score(targets, predicted, average=average, zero_division=0))


def test_saved_classifier_remembers_it_is_multi_label(tmp_path):
    from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
    from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer

    vocab = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj",
             "a", "b", "c"]
    encoder = AWDLSTMConfig(vocab_size=len(vocab), emb_size=8, hidden_size=8, n_layers=1)
    config = ClassifierConfig(encoder=encoder, n_classes=3, bptt=8, max_len=32)
    single = TextClassifier.create(config, vocab, seed=0, tokenizer=FastaiTokenizer(),
                                   class_names=["x", "y", "z"])
    clf = single.with_multi_label(0.4)
    assert (single.multi_label, single.threshold) == (False, 0.5)  # a copy, not a mutation
    clf.save(tmp_path / "clf")
    loaded = TextClassifier.load(tmp_path / "clf")
    assert (loaded.multi_label, loaded.threshold) == (True, 0.4)
    probs = loaded.predict_proba(["a b c", "c"])
    assert not np.allclose(probs.sum(-1), 1.0)  # independent sigmoids, not a softmax
    expected = [[n for n, p in zip("xyz", row, strict=True) if p > 0.4] for row in probs]
    assert loaded.predict(["a b c", "c"]) == expected
    with pytest.raises(ValueError, match="multi-label"):
        loaded.export(tmp_path / "served")


@pytest.mark.slow
def test_synthetic_multi_label_task_is_learned(tmp_path):
    train, valid = write_multi_label_csvs(tmp_path, n_train=600)
    workdir = tmp_path / "run"
    proc = run_train(
        "configs/tiny.py", workdir, "all", "--config.data.source=csv",
        f"--config.data.path={train}", f"--config.data.valid_path={valid}",
        "--config.data.csv_label_delim=|", "--config.data.max_train_docs=0",
        "--config.data.max_valid_docs=0", "--config.model.emb_size=32",
        "--config.model.hidden_size=64", "--config.lm.epochs=2",
        "--config.classifier.phases=({'freeze_to': -1, 'epochs': 2, 'lr_max': 5e-2, "
        "'lr_div': 1.0}, {'freeze_to': 0, 'epochs': 8, 'lr_max': 2e-2, 'lr_div': 2.6})",
        "--config.predict_examples=False", "--config.tensorboard=False",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())["classifier_fwd"]
    # Each topic is in ~57% of documents, so predicting no label (or every label) gets
    # ~0.43 (~0.57) of the (document, topic) cells right; 0.9 needs the keywords learned.
    assert metrics["accuracy_multi"] >= 0.9, metrics
    assert metrics["micro_f1"] >= 0.85 and metrics["macro_f1"] >= 0.85, metrics
    clf = TextClassifier.load(workdir / "models" / "classifier_fwd")
    assert clf.multi_label and clf.class_names == sorted(TOPICS)
    filler = " ".join(f"word{i}" for i in range(20))
    texts = [f"{filler} guitar chorus recipe oven.", f"{filler} referee goal."]
    assert [sorted(p) for p in clf.predict(texts)] == [["food", "music"], ["sports"]]


def test_an_ensemble_of_multi_label_classifiers_predicts_label_sets(tmp_path):
    from ulmfit_jax import Ensemble
    from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
    from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer

    vocab = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj",
             "a", "b", "c"]
    encoder = AWDLSTMConfig(vocab_size=len(vocab), emb_size=8, hidden_size=8, n_layers=1)
    config = ClassifierConfig(encoder=encoder, n_classes=3, bptt=8, max_len=32)

    def member(seed, threshold=0.45):
        return TextClassifier.create(config, vocab, seed=seed, tokenizer=FastaiTokenizer(),
                                     class_names=["x", "y", "z"]).with_multi_label(threshold)

    ensemble = Ensemble([member(0), member(1)])
    texts = ["a b c", "c", "b a"]
    probs = ensemble.predict_proba(texts)
    expected = [[n for n, p in zip("xyz", row, strict=True) if p > 0.45] for row in probs]
    assert ensemble.predict(texts) == expected and any(len(s) != 1 for s in expected)
    with pytest.raises(ValueError, match="classifier #1 has threshold 0.6, classifier #0 has 0.45"):
        Ensemble([member(0), member(1, threshold=0.6)])
