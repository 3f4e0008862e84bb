"""Pretraining paths through train.py: configs/wt103_pretrain.py on a small WikiText folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.synthetic import write_wikitext
from ulmfit_jax.api import LanguageModel

ROOT = Path(__file__).resolve().parents[1]


def run_train(config: str, workdir: Path, stage: str, *overrides: str) -> subprocess.CompletedProcess:
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
    """The WT103 recipe (its optimiser settings; a small model, batch and bptt) on WikiText files."""
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
