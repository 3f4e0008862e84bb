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
from ulmfit_jax.inference.text_files import InputError, format_predictions
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.text import FastaiTokenizer
from ulmfit_jax.text.fastai_tokenizer import RULES_VERSION
from ulmfit_jax.text.vocab import Vocab

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["A wonderful film, I loved it.", "Boring and far too long.", "", "Not bad at all!"]


def predict(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "predict.py", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def tiny_classifiers(class_names: list[str]) -> list[TextClassifier]:
    """A forward and a backward classifier at configs/tiny.py's sizes."""
    tok = FastaiTokenizer()
    vocab = Vocab.from_tokens(tok.tokenize(TEXTS), min_freq=1)
    config = ClassifierConfig(AWDLSTMConfig(len(vocab), 16, 32, 2), len(class_names), bptt=24,
                              max_len=96)
    return [TextClassifier.create(config, vocab.itos, seed=s, tokenizer=tok,
                                  class_names=class_names, backward=s == 1) for s in (0, 1)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """fwd and bwd classifiers at configs/tiny.py's sizes."""
    root = tmp_path_factory.mktemp("cli")
    clfs = tiny_classifiers(["neg", "pos"])
    for name, clf in zip(("fwd", "bwd"), clfs, strict=True):
        clf.save(root / name)
    return root, clfs


@pytest.fixture(scope="module")
def multi_label_models(tmp_path_factory):
    """fwd and bwd multi-label classifiers whose threshold (the median of the ensemble's
    probabilities on TEXTS) gives texts label sets of different sizes."""
    root = tmp_path_factory.mktemp("multi")
    clfs = tiny_classifiers(["alpha", "beta", "gamma"])
    threshold = float(np.median(Ensemble(clfs).predict_proba(TEXTS)))
    clfs = [clf.with_multi_label(threshold) for clf in clfs]
    for name, clf in zip(("fwd", "bwd"), clfs, strict=True):
        clf.save(root / name)
    return root, clfs


def _rows(csv_text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(csv_text)))


def test_texts_as_arguments_give_label_and_every_probability(models):
    root, (fwd, _) = models
    proc = predict("--model", str(root / "fwd"), *TEXTS)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # nothing to warn about
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


def test_multi_label_csv_gives_each_text_its_label_set(multi_label_models):
    root, (fwd, _) = multi_label_models
    proc = predict("--model", str(root / "fwd"), *TEXTS)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    expected = fwd.predict(TEXTS)
    assert {len(labels) for labels in expected} != {1}  # not what an argmax would give
    assert [r["labels"].split("|") if r["labels"] else [] for r in rows] == expected
    got = [[float(r[name]) for name in fwd.class_names] for r in rows]
    np.testing.assert_allclose(got, fwd.predict_proba(TEXTS), atol=1e-6)


def test_multi_label_ensemble_jsonl_gives_each_text_its_label_set(multi_label_models, tmp_path):
    root, clfs = multi_label_models
    out = tmp_path / "out.jsonl"
    proc = predict("--model", str(root / "fwd"), "--model", str(root / "bwd"), "--output",
                   str(out), *TEXTS)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = Ensemble(clfs).predict(TEXTS)
    assert {len(labels) for labels in expected} != {1}
    assert [r["labels"] for r in rows] == expected


def test_a_class_name_holding_the_csv_label_separator_asks_for_jsonl():
    probs = np.array([[0.9, 0.8]])
    with pytest.raises(InputError, match=r"class 'a\|b' contains '\|'.*--output_format jsonl"):
        format_predictions(probs, [["a|b", "c"]], ["a|b", "c"], "csv", multi_label=True)
    line = json.loads(format_predictions(probs, [["a|b", "c"]], ["a|b", "c"], "jsonl", True))
    assert line["labels"] == ["a|b", "c"]


def test_a_tokenizer_rules_mismatch_is_one_warning_line_on_stderr(models, tmp_path):
    root, (fwd, _) = models
    fwd.save(tmp_path / "old")
    spec_path = tmp_path / "old" / "tokenizer.json"
    spec = json.loads(spec_path.read_text())
    spec["rules"] = "fastai-2.7.0-rules/1"
    spec_path.write_text(json.dumps(spec))
    proc = predict("--model", str(tmp_path / "old"), *TEXTS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"warning: {spec_path}: trained with tokenizer rules "
                                        f"fastai-2.7.0-rules/1, running {RULES_VERSION}"]
    assert [r["label"] for r in _rows(proc.stdout)] == fwd.predict(TEXTS)


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
