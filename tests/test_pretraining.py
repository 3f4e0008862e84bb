"""Pretraining and tokenizer paths through train.py: configs/wt103_pretrain.py on a small
WikiText folder, configs/quickstart_sp.py (SentencePiece) at tiny size."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import write_wikitext
from ulmfit_jax.api import LanguageModel, TextClassifier
from ulmfit_jax.text.sentencepiece_tokenizer import SentencePieceTokenizer
from ulmfit_jax.text.tokenizer_spec import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def run_train(config: str, workdir: Path, stage: str,
              *overrides: str) -> subprocess.CompletedProcess:
    """train.py with `overrides` (`--config.key=value`) on the CPU."""
    return subprocess.run(
        [sys.executable, "train.py", "--config", config, "--workdir", str(workdir),
         "--stage", stage, *overrides],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=900,
    )


def logged(workdir: Path, stage: str, split: str, name: str) -> list[float]:
    """Values of one metric in metrics.csv, in step order."""
    with (workdir / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f)
                if (r["stage"], r["split"], r["name"]) == (stage, split, name)]
    return [float(r["value"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


@pytest.mark.slow
def test_wt103_pretrain_config_trains_on_wikitext(tmp_path):
    """The WT103 recipe (its optimiser settings; small model, batch, bptt) on WikiText files."""
    write_wikitext(tmp_path / "wikitext-103", n_train=60, n_valid=8, n_test=4)
    workdir = tmp_path / "run"
    proc = run_train(
        "configs/wt103_pretrain.py", workdir, "lm",
        f"--config.data.path={tmp_path / 'wikitext-103'}", "--config.data.workers=0",
        "--config.model.emb_size=16", "--config.model.hidden_size=32",
        "--config.model.n_layers=2", "--config.lm.batch_size=8", "--config.lm.bptt=20",
        "--config.lm.epochs=3", "--config.log_every_steps=5", "--config.progress=False",
        "--config.checkpoint.every_steps=50", "--config.tensorboard=False",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    valid_loss = logged(workdir, "lm_fwd", "valid", "loss")
    assert len(valid_loss) == 3 and valid_loss[-1] < 0.8 * valid_loss[0], valid_loss
    lm = LanguageModel.load(workdir / "models" / "lm_fwd")
    # WikiText read with fastai's rules: <unk> is fastai's xxunk, "@,@" stays one token.
    assert "<unk>" not in lm.vocab and "@,@" in lm.vocab and "w7" in lm.vocab
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["lm_fwd"]["perplexity"] < 20, metrics


@pytest.mark.slow
def test_quickstart_sp_trains_and_its_classifier_reads_raw_text(tmp_path):
    workdir = tmp_path / "run"
    proc = run_train(
        "configs/quickstart_sp.py", workdir, "all",
        "--config.data.max_train_docs=120", "--config.data.max_valid_docs=40",
        "--config.data.lm_source=", "--config.data.workers=0",
        "--config.data.sp_vocab_size=500", "--config.model.emb_size=16",
        "--config.model.hidden_size=32", "--config.lm.batch_size=16", "--config.lm.bptt=32",
        "--config.classifier.batch_size=16", "--config.classifier.eval_batch_size=32",
        "--config.classifier.max_tokens=96", "--config.classifier.max_len=96",
        "--config.classifier.bptt=24", "--config.progress=False", "--config.tensorboard=False",
        "--config.checkpoint.every_steps=50",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stored = load_tokenizer(workdir / "tokenizer")
    assert isinstance(stored, SentencePieceTokenizer) and stored.model_type == "unigram"
    classifier = TextClassifier.load(workdir / "models" / "classifier_fwd")
    lm = LanguageModel.load(workdir / "models" / "lm_fwd")
    for model in (classifier, lm):  # the run's SentencePiece model travels with every model
        assert isinstance(model.tokenizer, SentencePieceTokenizer)
        assert model.tokenizer.fingerprint() == stored.fingerprint()
    # The vocab is made of SentencePiece pieces ("▁" marks a word start).
    assert sum(t.startswith("▁") for t in classifier.vocab) > 100
    texts = ["A wonderful, moving film.", "Dull and far too long."]
    labels = classifier.predict(texts)
    assert len(labels) == 2 and set(labels) <= {"neg", "pos"}
    probs = classifier.predict_proba(texts)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
