"""The whole pipeline learns: a separable synthetic task through `train.py`."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import write_separable_csvs
from ulmfit_jax.trainer import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


def config_file(directory: Path, train: Path, valid: Path) -> Path:
    """configs/tiny.py on all the synthetic documents, a little wider, more classifier epochs."""
    path = directory / "separable.py"
    path.write_text(
        "import importlib.util\n"
        "spec = importlib.util.spec_from_file_location(\n"
        f"    'tiny', {str(ROOT / 'configs/tiny.py')!r})\n"
        "tiny = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(tiny)\n\n\n"
        "def get_config():\n"
        "    c = tiny.get_config()\n"
        f"    c.data.update(source='csv', path={str(train)!r}, valid_path={str(valid)!r},\n"
        "                  max_train_docs=0, max_valid_docs=0)\n"
        "    c.model.update(emb_size=32, hidden_size=64)\n"
        "    c.lm.epochs = 2\n"
        "    c.classifier.phases = ((-1, 1, 2e-2, 1.0), (0, 4, 1e-2, 2.6))\n"
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
    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs" / "tiny.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny.get_config()
        config.model.compute_dtype = dtype
        config.data.cache_dir = str(tmp_path / "cache")  # tokenize once for both runs
        summary = train_and_evaluate(config, tmp_path / dtype, stage="lm")
        losses[dtype] = summary["lm_fwd"]["loss"]
    assert np.isfinite(losses["bfloat16"])
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.02)
    assert losses["bfloat16"] != losses["float32"]  # the bfloat16 run did compute in bfloat16
