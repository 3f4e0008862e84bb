"""predict.py end to end on a small freshly created classifier saved to a temporary directory."""

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

from ulmfit_jax import Ensemble, TextClassifier
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.text import FastaiTokenizer
from ulmfit_jax.text.vocab import Vocab

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["A wonderful film, I loved it.", "Boring and far too long.", "", "Not bad at all!"]


def predict(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "predict.py", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """fwd and bwd classifiers at configs/tiny.py's sizes."""
    root = tmp_path_factory.mktemp("cli")
    tok = FastaiTokenizer()
    vocab = Vocab.from_tokens(tok.tokenize(TEXTS), min_freq=1)
    config = ClassifierConfig(AWDLSTMConfig(len(vocab), 16, 32, 2), 2, bptt=24, max_len=96)
    clfs = [TextClassifier.create(config, vocab.itos, seed=s, tokenizer=tok,
                                  class_names=["neg", "pos"], backward=s == 1) for s in (0, 1)]
    for name, clf in zip(("fwd", "bwd"), clfs, strict=True):
        clf.save(root / name)
    return root, clfs


def _rows(csv_text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(csv_text)))


def test_texts_as_arguments_give_label_and_every_probability(models):
    root, (fwd, _) = models
    proc = predict("--model", str(root / "fwd"), *TEXTS)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    expected = fwd.predict_proba(TEXTS)
    assert [r["label"] for r in rows] == fwd.predict(TEXTS)
    got = [[float(r["neg"]), float(r["pos"])] for r in rows]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_csv_in_jsonl_out_with_an_ensemble(models, tmp_path):
    root, clfs = models
    with open(tmp_path / "in.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "review"], *[[i, t] for i, t in enumerate(TEXTS)]])
    proc = predict("--model", str(root / "fwd"), "--model", str(root / "bwd"), "--input",
                   str(tmp_path / "in.csv"), "--text_column", "review", "--output",
                   str(tmp_path / "out.jsonl"))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = Ensemble(clfs).predict_proba(TEXTS)
    got = [[r["probabilities"]["neg"], r["probabilities"]["pos"]] for r in rows]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [r["label"] for r in rows] == Ensemble(clfs).predict(TEXTS)


def test_stdin_lines(models):
    root, (fwd, _) = models
    proc = predict("--model", str(root / "fwd"), "--input", "-", "--output_format", "jsonl",
                   stdin="A wonderful film, I loved it.\nBoring and far too long.\n")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["label"] for x in proc.stdout.splitlines()] == fwd.predict(TEXTS[:2])


@pytest.mark.parametrize("case", ["bad_jsonl_row", "unknown_column", "missing_model",
                                  "missing_input", "no_tokenizer"])
def test_user_mistakes_are_one_line_and_exit_2(models, tmp_path, case):
    root, (fwd, _) = models
    model = str(root / "fwd")
    if case == "bad_jsonl_row":
        (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
        args, expected = ["--input", str(tmp_path / "in.jsonl")], "in.jsonl:2: 'text' is int"
    elif case == "unknown_column":
        (tmp_path / "in.csv").write_text("review\nfine\n")
        args, expected = ["--input", str(tmp_path / "in.csv")], "no column 'text' (columns: review)"
    elif case == "missing_model":
        model, args, expected = str(tmp_path / "nothing"), ["x"], "nothing: no such model"
    elif case == "missing_input":
        args, expected = ["--input", str(tmp_path / "no.txt")], "no.txt: no such file"
    else:
        fwd.save(tmp_path / "old")
        (tmp_path / "old" / "tokenizer.json").unlink()
        model, args, expected = str(tmp_path / "old"), ["x"], "with_tokenizer(FastaiTokenizer()"
    proc = predict("--model", model, *args)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
