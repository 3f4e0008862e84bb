"""Every benchmark script still imports and parses its flags (they share `common.py`, and a
benchmark that breaks silently is only found when someone needs its figures); scripts share
code through `common.py` only, never by importing each other."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in FOLDER.glob("*.py") if p.name != "common.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_starts(script):
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                          text=True, timeout=300, cwd=script.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    return names | {node.module for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_import_common_not_each_other(script):
    siblings = {p.stem for p in SCRIPTS}
    imported = {name.split(".")[0] for name in _imported_modules(script)}
    assert not imported & siblings
    assert "sys.path" not in script.read_text()  # no path games: `common` is a sibling


def test_classifier_throughput_smoke_run_times_every_phase_and_counts_padding():
    """Both sides' steps run in every unfreezing phase and in evaluation; 40-token reviews
    padded to 3 chunks of 16 cost ours 1.2 positions per token, but no extra recurrent step."""
    proc = subprocess.run([sys.executable, "classifier_throughput.py", "--smoke"],
                          capture_output=True, text=True, timeout=600, cwd=FOLDER)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = re.findall(r"^(train [a-zA-Z +]+?|eval)\s+fastai\s+([\d.]+)\s+ours\s+([\d.]+) docs/s",
                      proc.stdout, re.MULTILINE)
    assert [name for name, _, _ in rows] == ["train head only", "train last LSTM + head",
                                               "train all layers", "eval"]
    assert all(float(fastai) > 0 and float(ours) > 0 for _, fastai, ours in rows)
    padding = re.search(r"training: .* ours ([\d.]+) \(.*on a CPU: ([\d.]+)", proc.stdout)
    assert padding is not None, proc.stdout
    assert float(padding[1]) == pytest.approx(1.2, abs=0.05) and float(padding[2]) == 1.0


def test_qrnn_beside_an_awd_lstm_has_its_recurrent_weight_count(monkeypatch):
    """`common.qrnn_sizes("equal")` counts what the models really hold."""
    import jax
    import numpy as np
    from flax import nnx

    from ulmfit_jax.model.config import AWDLSTMConfig
    from ulmfit_jax.model.language_model import AWDLSTMLanguageModel

    monkeypatch.syspath_prepend(str(FOLDER))
    common = __import__("common")

    def held(sizes: dict, kind: str) -> int:
        lm = AWDLSTMLanguageModel(AWDLSTMConfig(**sizes, encoder_kind=kind), rngs=nnx.Rngs(0))
        layers = nnx.to_pure_dict(nnx.state(lm, nnx.Param))["encoder"]["layers"]
        return sum(np.size(a) for a in jax.tree.leaves(layers))

    sizes = common.SIZES["tiny"]
    qrnn = common.qrnn_sizes(sizes, "equal")
    assert {k: v for k, v in qrnn.items() if k != "hidden_size"} == {
        k: v for k, v in sizes.items() if k != "hidden_size"}
    lstm_weights, qrnn_weights = held(sizes, "awd_lstm"), held(qrnn, "qrnn")
    assert lstm_weights == common.recurrent_weights(sizes, "awd_lstm")
    assert qrnn_weights == common.recurrent_weights(qrnn, "qrnn")
    assert abs(qrnn_weights - lstm_weights) < 0.02 * lstm_weights
    assert common.qrnn_sizes(sizes, "fastai") == common.AWD_QRNN_SIZES
