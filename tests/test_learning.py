"""The whole pipeline learns: a separable synthetic task through `train.py`."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import write_separable_csvs
from ulmfit_jax.trainer import train_and_evaluate
from ulmfit_jax.trainer.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def config_file(directory: Path, train: Path, valid: Path) -> Path:
    """configs/tiny.py on all the synthetic documents, a little wider, more classifier epochs."""
    path = directory / "separable.py"
    path.write_text(
        "from ulmfit_jax.trainer.config import load_config\n\n\n"
        "def get_config():\n"
        f"    c = load_config({str(ROOT / 'configs/tiny.py')!r})\n"
        f"    c.data.update(source='csv', path={str(train)!r}, valid_path={str(valid)!r},\n"
        "                  max_train_docs=0, max_valid_docs=0)\n"
        "    c.model.update(emb_size=32, hidden_size=64)\n"
        "    c.lm.epochs = 2\n"
        "    c.classifier.phases = (\n"
        "        dict(freeze_to=-1, epochs=1, lr_max=2e-2, lr_div=1.0),\n"
        "        dict(freeze_to=0, epochs=4, lr_max=1e-2, lr_div=2.6),\n"
        "    )\n"
        "    c.predict_examples = False\n"
        "    return c\n"
    )
    return path


@pytest.mark.slow
def test_separable_task_is_learned(tmp_path):
    train, valid = write_separable_csvs(tmp_path)
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", str(config_file(tmp_path, train, valid)),
         "--workdir", str(workdir), "--stage", "all"],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["classifier_fwd"]["accuracy"] >= 0.95, metrics
    # The saved validation probabilities are the ones the reported accuracy was computed from.
    probs = np.load(workdir / "models" / "classifier_fwd" / "valid_probs.npy")
    labels = [row[0] for row in csv.reader(valid.open())]
    names = sorted(set(labels))
    predicted = [names[i] for i in probs.argmax(-1)]
    accuracy = np.mean([p == t for p, t in zip(predicted, labels, strict=True)])
    assert accuracy == pytest.approx(metrics["classifier_fwd"]["accuracy"])


@pytest.mark.slow
def test_bfloat16_matmuls_train_like_float32(tmp_path):
    """The tiny LM in bfloat16 compute: finite, its validation loss within 2% of float32's."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = load_config(ROOT / "configs" / "tiny.py")
        config.model.compute_dtype = dtype
        config.data.cache_dir = str(tmp_path / "cache")  # tokenize once for both runs
        summary = train_and_evaluate(config, tmp_path / dtype, stage="lm")
        losses[dtype] = summary["lm_fwd"]["loss"]
    assert np.isfinite(losses["bfloat16"])
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.02)
    assert losses["bfloat16"] != losses["float32"]  # the bfloat16 run did compute in bfloat16
