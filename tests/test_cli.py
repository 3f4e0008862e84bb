"""train.py end to end on configs/tiny.py, and the config typo error. A clean run prints
nothing on stderr (warnings that must reach it: tests/test_warnings.py)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ulmfit_jax.trainer.config import load_config
from ulmfit_jax.trainer.data import prepare_data

ROOT = Path(__file__).resolve().parents[1]


def run_train(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", "--config", "configs/tiny.py", *args], cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        check=False, timeout=900,
    ) if not check else _checked(args)


def _checked(args) -> subprocess.CompletedProcess:
    proc = run_train(*args, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_all_stages_forward_and_backward_end_to_end(tmp_path):
    proc = run_train("--workdir", str(tmp_path), "--stage", "all", "--config.lm.backward=True")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"lm_fwd", "lm_bwd", "classifier_fwd", "classifier_bwd", "ensemble"}
    vocab_size = len(json.loads((tmp_path / "vocab.json").read_text())["itos"])
    for name in ("lm_fwd", "lm_bwd"):
        losses = logged(tmp_path, name, "train", "loss")
        assert len(losses) >= 5 and losses[-1] < 0.8 * losses[0], losses  # the LM learns
        # far better than guessing uniformly over the vocab (perplexity = vocab size)
        assert metrics[name]["perplexity"] < vocab_size / 4
        assert metrics[name]["perplexity"] == pytest.approx(np.exp(metrics[name]["loss"]))
    labels = np.asarray(prepare_data(tiny_config(), tmp_path).clf_valid.labels)
    probs = {name: np.load(tmp_path / "models" / name / "valid_probs.npy")
             for name in ("classifier_fwd", "classifier_bwd")}
    probs["ensemble"] = (probs["classifier_fwd"] + probs["classifier_bwd"]) / 2
    for name, p in probs.items():  # reported figures are those of the saved probabilities
        assert metrics[name]["accuracy"] == pytest.approx(np.mean(p.argmax(-1) == labels))
    check_validation_files(tmp_path, labels, probs)
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert list((tmp_path / "tensorboard" / "lm_fwd").glob("events.out.tfevents.*"))
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "stage,step,split,name,value"
    predictions = [line for line in proc.stdout.splitlines() if line.startswith(("neg", "pos"))]
    assert len(predictions) == 3, proc.stdout
    assert "classifier_fwd: validation accuracy" in proc.stdout
    assert proc.stderr == ""  # a clean run: no warning, no orbax or absl logging

    from ulmfit_jax.api import LanguageModel, TextClassifier

    clf = TextClassifier.load(tmp_path / "models" / "classifier_fwd")
    logits = np.asarray(clf(np.array([[2, 10, 11, 12]], np.int32)))
    assert logits.shape == (1, 2) and np.all(np.isfinite(logits))
    # The saved directories are complete: raw text in, class names out, direction kept.
    assert clf.class_names == ["neg", "pos"] and not clf.backward
    probs = clf.predict_proba(["A fine film.", ""])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1.0)
    assert TextClassifier.load(tmp_path / "models" / "classifier_bwd").backward
    lm = LanguageModel.load(tmp_path / "models" / "lm_bwd")
    assert lm.backward and lm.generate("A fine film.", n_words=3)


def check_validation_files(workdir: Path, labels: np.ndarray, probs: dict) -> None:
    """The classifier stage's files on the validation split, against its saved probabilities:
    the report against scikit-learn's, the top losses against a sort of -log p(true)."""
    from sklearn.metrics import classification_report

    report = json.loads((workdir / "classification_report.json").read_text())
    assert set(report) == set(probs)
    for name, p in probs.items():
        expected = classification_report(labels, p.argmax(-1), labels=[0, 1], output_dict=True,
                                          target_names=["neg", "pos"], zero_division=0)
        for row in ("neg", "pos", "macro avg"):
            assert report[name][row] == pytest.approx(expected[row]), (name, row)
    assert (workdir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    with (workdir / "top_losses.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    ensemble = probs["ensemble"]
    losses = -np.log(ensemble[np.arange(len(labels)), labels])
    assert [int(r["index"]) for r in rows] == np.argsort(-losses, kind="stable")[:50].tolist()
    assert [float(r["loss"]) for r in rows] == pytest.approx(np.sort(losses)[::-1][:50],
                                                              rel=1e-5)
    assert all(r["text"] and r["actual"] == ["neg", "pos"][labels[int(r["index"])]]
               for r in rows)


def logged(workdir: Path, stage: str, split: str, name: str) -> list[float]:
    """Values of one metric in metrics.csv, in step order."""
    with (workdir / "metrics.csv").open() as f:
        return [float(r["value"]) for r in csv.DictReader(f)
                if (r["stage"], r["split"], r["name"]) == (stage, split, name)]


def tiny_config():
    return load_config(ROOT / "configs" / "tiny.py")


def test_unknown_config_key_is_an_error_naming_it(tmp_path):
    proc = run_train("--workdir", str(tmp_path), "--config.lm.lrr=0.1", check=False)
    assert proc.returncode != 0
    assert "lrr" in proc.stderr and 'Did you mean "lr"' in proc.stderr
    assert not (tmp_path / "metrics.csv").exists()


def test_missing_language_model_for_classifier_stage_is_explained(tmp_path):
    proc = run_train("--workdir", str(tmp_path), "--stage", "classifier", check=False)
    assert proc.returncode != 0
    assert "run `--stage lm`" in proc.stderr


def test_lr_find_stage_writes_plot_and_suggestions_and_trains_nothing(tmp_path):
    proc = run_train("--workdir", str(tmp_path), "--stage", "lr_find",
                     "--config.lr_find.num_it=30", "--config.lr_find.end_lr=100.0")
    report = json.loads((tmp_path / "lr_find_lm_fwd.json").read_text())
    assert 6 <= report["steps"] <= 30
    suggestions = report["suggestions"]
    assert suggestions and all(1e-7 <= lr <= 100.0 for lr in suggestions.values())
    assert (tmp_path / "lr_find_lm_fwd.png").stat().st_size > 1000
    assert "LR finder (forward LM)" in proc.stdout
    assert proc.stderr == ""  # nothing to warn about
    assert not (tmp_path / "models").exists() and not (tmp_path / "checkpoints").exists()
