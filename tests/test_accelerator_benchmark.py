"""benchmarks/accelerator.py: the variants that cannot run here say why instead of
disappearing, and fastai's side builds its hidden state on its model's device. Its smoke run
(a complete table on CPU, fastai included) is checked inside `benchmarks/gpu_check.py`'s smoke
run, which runs it as one of its parts (tests/test_gpu_check.py, `accelerator_table`)."""

import importlib
import sys
from pathlib import Path

import pytest

from tests.accelerator_table import RUNNABLE_ON_CPU

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def accelerator(monkeypatch):
    """The benchmark script as a module (it imports its sibling `lm_throughput`)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("accelerator")


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
