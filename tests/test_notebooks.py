"""Notebooks are kept without outputs and run top to bottom on the tiny config; the Colab TPU
notebook on 8 simulated CPU devices."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ulmfit_jax import TextClassifier
from ulmfit_jax.trainer import EXAMPLE_REVIEWS

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
# Notebooks run over a mesh of this many devices (simulated on the CPU).
DEVICES = {"colab_tpu.ipynb": 8}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_tiny_config(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ULMFIT_REPO", str(path.parents[1]))
    monkeypatch.setenv("ULMFIT_NOTEBOOK_CONFIG", "tiny")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    devices = DEVICES.get(path.name, 1)
    if devices > 1:
        monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count={devices}")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    printed = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.outputs
    )
    if devices > 1:  # the notebook prints the trainer's mesh: make_data_mesh() over all devices
        mesh = re.search(r"^data mesh: (\d+) devices", printed, flags=re.MULTILINE)
        assert mesh and int(mesh.group(1)) == devices, printed[-3000:]
    # A cell prints one "label (probability): text" line per example review: the saved
    # classifier's own answers, read back here from the workdir the notebook printed.
    predictions = re.findall(r"^(neg|pos) \((\d\.\d\d)\): ", printed, flags=re.MULTILINE)
    workdir = Path(re.search(r"^tiny (\S+)$", printed, flags=re.MULTILINE).group(1))
    clf = TextClassifier.load(workdir / "models" / "classifier_fwd")
    probs = clf.predict_proba(list(EXAMPLE_REVIEWS))
    assert predictions == [(clf.class_names[p.argmax()], f"{p.max():.2f}") for p in probs]
    if path.name == "quickstart.ipynb":  # it shows where the classifier fails, and why
        check_explanations(notebook, printed, clf)


def check_explanations(notebook, printed: str, clf: TextClassifier) -> None:
    """The confusion matrix train.py drew is shown, and each example review's top words are
    the saved classifier's own."""
    from ulmfit_jax import explain

    shown = [output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.outputs]
    assert any("image/png" in data for data in shown)
    assert any("<span" in data.get("text/html", "") for data in shown)
    top = re.findall(r"^top words: (.*)$", printed, flags=re.MULTILINE)
    expected = explain.word_importance(clf, list(EXAMPLE_REVIEWS[:2]))
    assert top == [", ".join(f"{w} {s:.2f}" for w, s in r.top(5)) for r in expected]
