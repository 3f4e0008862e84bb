"""benchmarks/accelerator.py: the smoke run on CPU (fastai included) prints a complete table,
and the variants that cannot run here say why instead of disappearing."""

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["ours scan fp32", "ours scan bf16", "ours wavefront fp32", "ours wavefront bf16",
            "ours cuDNN fp32", "ours cuDNN bf16", "fastai fp32", "fastai AMP fp16"]
RUNNABLE_ON_CPU = ["ours scan fp32", "ours scan bf16", "ours wavefront fp32",
                   "ours wavefront bf16", "fastai fp32"]
COLUMNS = ["batch", "variant", "LM train tok/s", "vs fastai fp32", "LM eval tok/s",
           "vs fastai fp32", "clf train docs/s", "vs fastai fp32",
           "first call s (LM train / LM eval / clf)", "step memory MiB"]
RATES, RATIOS, FIRST_CALLS, MEMORY = (2, 4, 6), (3, 5, 7), 8, 9


@pytest.fixture
def accelerator(monkeypatch):
    """The benchmark script as a module (it imports its sibling `lm_throughput`)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("accelerator")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(stdout: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header and rows (cells, by variant) of the printed markdown table."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    rows = [_cells(line) for line in lines[1:]]
    assert all(len(row) == len(COLUMNS) for row in rows)
    return _cells(lines[0]), {row[1]: row for row in rows}


def _positive(text: str) -> float:
    value = float(text.replace(",", "").removesuffix("x"))
    assert math.isfinite(value) and value > 0, text
    return value


@pytest.mark.slow
def test_smoke_run_prints_every_variant_with_finite_figures():
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--smoke"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SMOKE RUN" in proc.stdout
    header, rows = _table(proc.stdout)
    assert header == COLUMNS
    assert list(rows) == VARIANTS
    for name in RUNNABLE_ON_CPU:
        row = rows[name]
        assert row[0] == "4"
        for column in (*RATES, *RATIOS):
            _positive(row[column])
        assert len([_positive(s) for s in row[FIRST_CALLS].split("/")]) == 3
    assert [rows["fastai fp32"][column] for column in RATIOS] == ["1.00x"] * 3
    for name in RUNNABLE_ON_CPU[:4]:
        _positive(rows[name][MEMORY])
    assert rows["fastai fp32"][MEMORY] == "n/a"  # no CUDA peak on a CPU
    reasons = {"ours cuDNN fp32": "CUDA", "ours cuDNN bf16": "float32 only",
               "fastai AMP fp16": "CUDA"}
    for name, reason in reasons.items():
        assert rows[name][2].startswith("n/a (") and reason in rows[name][2]
        assert rows[name][3:] == ["n/a"] * 7
    assert "the goals do NOT apply here" in proc.stdout
    assert "WT103 epoch (103M tokens)" in proc.stdout


def test_variants_that_cannot_run_on_cpu_say_why(accelerator):
    variants = {v.name: v for v in accelerator.our_variants()}
    assert [n for n, v in variants.items() if v.unavailable is None] == RUNNABLE_ON_CPU[:4]
    assert "CUDA" in variants["ours cuDNN fp32"].unavailable
    assert "float32 only" in variants["ours cuDNN bf16"].unavailable  # on any backend
    amp = accelerator.fastai_variants(no_fastai=False)[1]
    assert amp.unavailable == "AMP float16 needs CUDA; device: cpu"


def test_without_fastai_only_ours_is_measured(accelerator, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastai.text.all", None)  # import raises ImportError
    fp32, amp = accelerator.fastai_variants(no_fastai=False)
    assert fp32.unavailable.startswith("fastai/torch not importable")
    assert amp.unavailable == fp32.unavailable
    results = {"ours scan fp32": accelerator.Measured({"lm_train": [0.5, 0.5]}, {}, None)}
    goals = "\n".join(accelerator.goal_lines({256: results}, bptt=70, device="NVIDIA H200"))
    assert "not measured (fastai did not run)" in goals
    assert "35,840 (ours scan fp32) -> NOT met" in goals  # 256 * 70 tokens / 0.5 s


@pytest.mark.parametrize("builder", ["language_model", "classifier"])
def test_fastai_hidden_state_lives_on_its_models_device(accelerator, builder):
    """fastai makes its hidden state when the model is built, and `.to(device)` moves only the
    parameters: on CUDA the first step then fails ("Input and hidden tensors are not at the
    same device"). The meta device shows the same thing on a CPU."""
    common = importlib.import_module("common")
    model = (common.fastai_language_model("tiny", device="meta") if builder == "language_model"
             else common.fastai_classifier_model("tiny", bptt=8, device="meta"))
    encoder = model[0] if builder == "language_model" else model[0].module
    hidden = [tensor for layer in encoder.hidden for tensor in layer]
    assert len(hidden) == 2 * 3  # (h, c) of each of the tiny size's three layers
    assert {str(p.device) for p in model.parameters()} == {"meta"}
    assert {str(h.device) for h in hidden} == {"meta"}
