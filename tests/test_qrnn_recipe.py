"""The whole ULMFiT recipe on a QRNN (`model.encoder = "qrnn"`) through train.py and
predict.py: configs/multifit_quickstart.py at tiny size (SentencePiece, LM, classifier with
gradual unfreezing, forward and backward), the separable task learned, fine-tuning from a
fastai AWD-QRNN file, and the config's refusals."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.checkpoint_files import read_state
from tests.synthetic import write_separable_csvs
from tests.test_learning import config_file
from ulmfit_jax.api import LanguageModel, TextClassifier
from ulmfit_jax.errors import ConfigError
from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.text.sentencepiece_tokenizer import SentencePieceTokenizer
from ulmfit_jax.trainer.config import lm_model_config, load_config
from ulmfit_jax.trainer.workdir import flat_config

ROOT = Path(__file__).resolve().parents[1]
# configs/multifit_quickstart.py cut to a CPU test (its 4 QRNN layers kept, narrower).
TINY = ("--config.data.max_train_docs=120", "--config.data.max_valid_docs=40",
        "--config.data.lm_source=", "--config.data.max_lm_docs=0", "--config.data.workers=0",
        "--config.data.sp_vocab_size=500", "--config.model.emb_size=16",
        "--config.model.hidden_size=32", "--config.lm.batch_size=16", "--config.lm.bptt=32",
        "--config.classifier.batch_size=16", "--config.classifier.eval_batch_size=32",
        "--config.classifier.max_tokens=96", "--config.classifier.max_len=96",
        "--config.classifier.bptt=24", "--config.progress=False", "--config.tensorboard=False",
        "--config.checkpoint.every_steps=50", "--config.predict_examples=False")


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.slow
def test_multifit_quickstart_runs_every_stage_forward_and_backward(tmp_path):
    workdir = tmp_path / "run"
    proc = _run("train.py", "--config", "configs/multifit_quickstart.py", "--workdir",
                str(workdir), "--stage", "all", "--config.lm.backward=True", *TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert set(metrics) == {"lm_fwd", "lm_bwd", "classifier_fwd", "classifier_bwd", "ensemble"}
    assert all(np.isfinite(metrics[n]["perplexity"]) for n in ("lm_fwd", "lm_bwd"))
    models = workdir / "models"
    lm = LanguageModel.load(models / "lm_fwd")
    assert (lm.config.encoder_kind, lm.config.n_layers) == ("qrnn", 4)
    assert isinstance(lm.tokenizer, SentencePieceTokenizer)
    assert lm.generate("This movie", n_words=5, seed=0).startswith("This movie")
    clf = TextClassifier.load(models / "classifier_bwd")
    assert clf.config.encoder.encoder_kind == "qrnn" and clf.backward
    texts = ["A wonderful, moving film.", "Dull and far too long."]
    predicted = _run("predict.py", "--model", str(models / "classifier_fwd"), "--model",
                     str(models / "classifier_bwd"), *texts)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    assert len(rows) == 2 and {r["label"] for r in rows} <= {"neg", "pos"}
    np.testing.assert_allclose([float(r["neg"]) + float(r["pos"]) for r in rows], 1, atol=1e-5)


@pytest.mark.slow
def test_separable_task_is_learned_by_a_qrnn(tmp_path):
    train, valid = write_separable_csvs(tmp_path)
    workdir = tmp_path / "run"
    proc = _run("train.py", "--config", str(config_file(tmp_path, train, valid)), "--workdir",
                str(workdir), "--stage", "all", "--config.model.encoder=qrnn")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["classifier_fwd"]["accuracy"] >= 0.95, metrics


def _fastai_qrnn_file(directory: Path, hidden_size: int) -> None:
    itos = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj",
            "the", "a", "movie", "film", "good", "bad", ".", ","] + ["xxfake"] * 7
    config = AWDLSTMConfig(vocab_size=len(itos), emb_size=16, hidden_size=hidden_size,
                           n_layers=2, encoder_kind="qrnn")
    LanguageModel.create(config, itos, seed=5).to_fastai(directory / "lm.pth",
                                                         directory / "itos.pkl")


@pytest.mark.slow
def test_fine_tuning_from_a_fastai_qrnn_file_freezes_the_qrnn_layers_first(tmp_path):
    _fastai_qrnn_file(tmp_path, hidden_size=32)
    workdir = tmp_path / "run"
    proc = _run("train.py", "--config", "configs/tiny.py", "--workdir", str(workdir),
                "--stage", "lm", "--config.model.encoder=qrnn",
                f"--config.lm.init_from={tmp_path / 'lm.pth'}",
                f"--config.lm.init_itos={tmp_path / 'itos.pkl'}", "--config.lm.frozen_epochs=1",
                "--config.lm.epochs=1", "--config.checkpoint.every_steps=100000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = workdir / "checkpoints" / "lm_fwd"
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert len(steps) == 2  # end of the frozen epoch, end of the unfrozen one
    after_frozen = read_state(ckpts / str(steps[0]) / "state")["params"]
    start = LanguageModel.from_fastai(tmp_path / "lm.pth", tmp_path / "itos.pkl").params
    final = LanguageModel.load(workdir / "models" / "lm_fwd").params
    for layer in (0, 1):
        for name in ("kernel", "bias"):
            frozen = np.asarray(after_frozen["encoder"]["layers"][str(layer)][name])
            np.testing.assert_array_equal(frozen, start["encoder"]["layers"][layer][name])
            assert not np.array_equal(frozen, final["encoder"]["layers"][layer][name])


def test_fastai_weights_of_another_encoder_kind_are_refused(tmp_path):
    _fastai_qrnn_file(tmp_path, hidden_size=32)
    proc = _run("train.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path / "run"),
                "--stage", "lm", f"--config.lm.init_from={tmp_path / 'lm.pth'}",
                f"--config.lm.init_itos={tmp_path / 'itos.pkl'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'lm.pth'} holds an encoder of kind 'qrnn', but "
        "config.model.encoder is 'awd_lstm'; set it to the file's (and rerun with --fresh)"]


def test_run_config_selects_the_qrnn_and_refuses_bad_values():
    config = load_config(ROOT / "configs" / "multifit_quickstart.py")
    model = lm_model_config(config, vocab_size=100)
    assert (model.encoder_kind, model.qrnn_window, model.qrnn_zoneout,
            model.qrnn_save_prev_x) == ("qrnn", 2, 0.0, True)  # fastai's AWD_QRNN
    assert load_config(ROOT / "configs" / "tiny.py").model.encoder == "awd_lstm"
    # (the list can hold kinds other tests register in this process)
    bad = {"model.encoder=gru": r"config.model.encoder='gru' is not allowed: one of "
                                r"\('awd_lstm', 'qrnn'",
           "model.qrnn_window=3": r"config.model.qrnn_window=3 is not allowed: 1 or 2",
           "model.qrnn_zoneout=1.0": r"config.model.qrnn_zoneout=1.0 is not allowed"}
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(ROOT / "configs" / "tiny.py", [override])


def test_qrnn_quickstart_is_the_quickstart_with_a_qrnn_encoder():
    """configs/qrnn_quickstart.py changes the encoder only, so its frontier is a fair race."""
    quickstart = load_config(ROOT / "configs" / "quickstart.py").to_dict()
    qrnn = load_config(ROOT / "configs" / "qrnn_quickstart.py").to_dict()
    model, quickstart_model = qrnn.pop("model"), quickstart.pop("model")
    assert qrnn == quickstart
    changed = {key for key in model if model[key] != quickstart_model[key]}
    assert changed <= {"encoder", "hidden_size", "n_layers"} and model["encoder"] == "qrnn"
    encoder = lm_model_config(load_config(ROOT / "configs" / "qrnn_quickstart.py"), 8000)
    assert encoder.encoder_kind == "qrnn" and encoder.layer_sizes()[-1][1] == 128  # tied


def test_qrnn_quickstart_240_changes_the_review_length_and_first_phase_only():
    """configs/qrnn_quickstart_240.py is the QRNN quickstart on 240-token reviews (all of
    them back-propagated), unfrozen from the last group: no other key moves."""
    base = load_config(ROOT / "configs" / "qrnn_quickstart.py")
    long = load_config(ROOT / "configs" / "qrnn_quickstart_240.py")
    base_keys, long_keys = flat_config(base), flat_config(long)
    changed = {key for key in base_keys if base_keys[key] != long_keys[key]}
    assert changed == {"classifier.max_len", "classifier.max_tokens", "classifier.phases"}
    assert long.classifier.max_len == long.classifier.max_tokens == 240
    assert [p["freeze_to"] for p in long.classifier.phases] == [-2, 0]
    assert long.classifier.phases[1:] == base.classifier.phases[2:]  # the unfrozen epochs
