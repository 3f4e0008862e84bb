"""benchmarks/gpu_check.py: on a CPU it refuses in one line without --smoke; the smoke run
runs every part and writes one markdown report naming the device (the accelerator
benchmark's complete smoke table included: `accelerator_table`); the GPU run is planned to
fit 8 minutes with the issue's batch sizes and test files."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.accelerator_table import check_cpu_smoke_report

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("gpu_check")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)


def test_on_a_cpu_it_says_it_needs_a_cuda_gpu(tmp_path):
    out = tmp_path / "report.md"
    proc = _run("--out", str(out))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: gpu_check needs a CUDA GPU; jax sees ")
    assert "(cpu)" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_the_gpu_run_fits_eight_minutes_with_the_issues_parts(gpu_check):
    parts = {p.key: p for p in gpu_check.parts(smoke=False)}
    assert sum(p.limit_s for p in parts.values()) + 20 < 8 * 60  # + the device probe
    accelerator = parts["accelerator"].command
    assert accelerator[accelerator.index("--batch-sizes") + 1:][:2] == ["64", "256"]
    assert "--no-fastai" not in accelerator
    assert parts["tests"].env == {"JAX_PLATFORMS": "cuda"}
    assert [a for a in parts["tests"].command if a.startswith("tests/")] == [
        f"tests/{name}.py" for name in ("test_lstm", "test_cudnn_lstm", "test_language_model",
                                        "test_classifier", "test_train_step",
                                        "test_fastai_weights", "test_optimizer")]
    for path in parts["tests"].command[-7:]:
        assert (ROOT / path).is_file()


def test_verdicts(gpu_check):
    parity = gpu_check.parts(smoke=False)[0]
    outcome = gpu_check.Outcome
    assert gpu_check.verdict(outcome(parity, None, 80.0, "")) == "TIMED OUT after 80 s"
    over = "device H200\n  LM eval logits: 2.0e-05 (OVER 1e-05)\n"
    assert gpu_check.verdict(outcome(parity, 0, 1.0, over)) == "OVER tolerance"
    assert gpu_check.verdict(outcome(parity, 1, 1.0, "Traceback")) == "FAILED (exit 1)"


@pytest.mark.slow
def test_smoke_run_runs_every_part_and_writes_one_report(tmp_path):
    out = tmp_path / "gpu_check.md"
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# GPU check: ") and "(cpu)" in text.splitlines()[0]
    assert "SMOKE RUN" in text
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1]
            for line in text.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["cuDNN parity"] == "n/a: cuDNN needs a CUDA GPU; this device is cpu"
    assert rows["Accelerator benchmark (fastai beside)"] == "ran"
    assert " passed" in rows["GPU test subset"] and "failed" not in rows["GPU test subset"]
    accelerator = text[text.index("### Accelerator benchmark"):]
    check_cpu_smoke_report(accelerator[:accelerator.index("\n## ")])
