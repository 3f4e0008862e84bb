"""benchmarks/trainer_throughput.py runs train.py and the bare step and prints both speeds."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run_prints_the_trainer_and_step_speeds_and_their_ratio():
    proc = subprocess.run([sys.executable, "benchmarks/trainer_throughput.py", "--smoke"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "SMOKE RUN" in out
    trainer = re.search(r"train\.py LM epoch 2: ([\d,]+) tokens/s \(([\d,]+) tokens in ([\d.]+) s",
                        out)
    step = re.search(r"bare LM step: ([\d,]+) tokens/s", out)
    ratio = re.search(r"trainer / step: ([\d.]+)x \(goal >= 0\.90x: (met|NOT met)\)", out)
    assert trainer and step and ratio, out
    speed, tokens, seconds = (float(g.replace(",", "")) for g in trainer.groups())
    assert tokens > 0 and seconds > 0 and speed == pytest.approx(tokens / seconds, rel=0.01)
    expected = speed / float(step.group(1).replace(",", ""))
    assert float(ratio.group(1)) == pytest.approx(expected, abs=0.01)


def test_the_trainer_writes_one_throughput_record_per_epoch(tmp_path):
    from ulmfit_jax.trainer.metric_logger import THROUGHPUT_FILE, MetricLogger

    log = MetricLogger(tmp_path, tensorboard=False)
    log.log_throughput("lm_fwd", 1, 1000, 2.0)
    log.log_throughput("lm_fwd", 2, 0, 0.0)  # an epoch with one step has no steady state
    records = [json.loads(line) for line in (tmp_path / THROUGHPUT_FILE).read_text().splitlines()]
    assert records == [{"stage": "lm_fwd", "epoch": 1, "tokens": 1000, "seconds": 2.0,
                        "tokens_per_s": 500.0}]
