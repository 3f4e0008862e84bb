"""What train.py tells the user on stderr: every warning once, as one line `warning: ...`, and
nothing else (orbax's logging stays quiet). One run on data that must warn (few documents,
imbalanced classes), then a rerun after damaging the newest checkpoint and the token cache
(README, "What happens when things go wrong"). Clean runs print nothing on stderr:
tests/test_cli.py and tests/test_predict_cli.py."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from tests.synthetic import imbalanced_documents, write_csvs
from tests.test_cli import run_train
from tests.test_faults import _truncate, run_python
from tests.test_preemption import _garble_meta


@dataclasses.dataclass
class Runs:
    workdir: Path
    train_csv: Path
    damaged_step: int
    first: subprocess.CompletedProcess
    rerun: subprocess.CompletedProcess


def _steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """Both train.py runs (~40 s in all, most of it compiling: the rerun reads the first
    run's compiled steps from jax's persistent cache)."""
    root = tmp_path_factory.mktemp("warnings")
    train_csv, valid_csv = write_csvs(root, imbalanced_documents, n_train=18, n_valid=5)
    workdir = root / "w"
    args = ("--workdir", str(workdir), "--stage", "all", "--config.data.source=csv",
            f"--config.data.path={train_csv}", f"--config.data.valid_path={valid_csv}",
            "--config.data.max_train_docs=0", "--config.data.max_valid_docs=0",
            "--config.lm.epochs=2",  # a checkpoint per epoch: one to fall back to
            "--config.classifier.phases=({'freeze_to': 0, 'epochs': 1, 'lr_max': 1e-2, "
            "'lr_div': 1.0},)", "--config.predict_examples=False", "--config.tensorboard=False")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JAX_COMPILATION_CACHE_DIR", str(root / "jax_cache"))
        env.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        first = run_train(*args)
        checkpoints = workdir / "checkpoints" / "lm_fwd"
        newest = _steps(checkpoints)[-1]
        _garble_meta(checkpoints / str(newest))
        _truncate(next((workdir / "cache").glob("*/raw_ids.bin")))
        (workdir / "models" / "lm_fwd" / "config.json").unlink()  # the LM stage runs again
        return Runs(workdir, train_csv, newest, first, run_train(*args, check=False))


def warnings_of(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr's lines, each checked to be one whole warning and to come once."""
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("warning: ") for line in lines), proc.stderr[-3000:]
    assert len(set(lines)) == len(lines), proc.stderr
    return lines


def one_containing(lines: list[str], *needles: str) -> str:
    found = [line for line in lines if all(n in line for n in needles)]
    assert len(found) == 1, (needles, lines)
    return found[0]


@pytest.mark.slow  # the fixture's two train.py runs
def test_few_documents_and_imbalanced_classes_warn_once_each_in_one_line(runs):
    source = f"data source 'csv' ({runs.train_csv})"
    for proc in (runs.first, runs.rerun):  # the data is checked on every run
        lines = warnings_of(proc)
        one_containing(lines, source, "train split: only 18 documents; results will be noisy")
        one_containing(lines, source, "validation split: only 5 documents")
        line = one_containing(lines, "train split: strongly imbalanced classes (neg: 17, pos: 1)")
        assert line.endswith("watch macro F1")
    assert len(warnings_of(runs.first)) == 3


@pytest.mark.slow
def test_a_damaged_checkpoint_and_token_cache_are_told_and_the_run_recovers(runs):
    assert runs.rerun.returncode == 0, runs.rerun.stderr[-3000:]
    lines = warnings_of(runs.rerun)
    checkpoint = f"{runs.workdir / 'checkpoints' / 'lm_fwd'}/{runs.damaged_step}"
    assert any(checkpoint in line for line in lines), lines
    one_containing(lines, "token cache", "is damaged", "raw_ids.bin", "rebuilding it")
    assert len(list((runs.workdir / "checkpoints" / "lm_fwd.damaged").iterdir())) == 1
    assert (runs.workdir / "models" / "lm_fwd" / "config.json").exists()
    assert "lm_fwd epoch 2:" in runs.rerun.stdout  # resumed after epoch 1, not from scratch
    assert "lm_fwd epoch 1:" not in runs.rerun.stdout


def test_the_command_line_shows_each_warning_in_one_line_and_quiets_absl_and_info():
    code = """
        import logging, warnings
        from absl import logging as absl_logging
        from ulmfit_jax.cli import run_cli
        def main(argv):
            logging.getLogger("ulmfit_jax.x").warning("a %s\\nover two lines", "warning")
            logging.getLogger("ulmfit_jax.x").info("an info line")
            absl_logging.info("orbax wrote a file")
            absl_logging.warning("Requested `tracked_metric`; did not provide metrics.")
            absl_logging.error("orbax failed")
            warnings.warn("a library's warning")
            print("done")
        run_cli(main)
    """
    proc = run_python(code)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    assert proc.stderr.splitlines() == [
        "warning: a warning over two lines", "error: orbax failed",
        "warning: a library's warning (UserWarning, <string>:11)"]
