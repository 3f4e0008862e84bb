"""The serving export runs in a fresh process where flax, optax, orbax and torch cannot load."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ulmfit_jax import TextClassifier
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.text import FastaiTokenizer
from ulmfit_jax.text.vocab import Vocab

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["A wonderful, moving film!", "", "Dull. " * 150, "The plot makes no sense at all.",
         "I LOVED it. Loved it, loved it, loved it."]
# A finder that refuses the training stack, then the server; prints JSON probabilities.
SERVE = """
import importlib.abc, json, sys
BLOCKED = ("flax", "optax", "orbax", "torch")
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Refuse())
from ulmfit_jax import serving
clf = serving.load(sys.argv[1])
texts = json.loads(sys.argv[2])
out = {"probs": clf.predict_proba(texts, batch_size=2).tolist(), "labels": clf.predict(texts),
       "model_code": sorted(m for m in sys.modules if m.startswith("ulmfit_jax.model")
                            or m.startswith("ulmfit_jax.api") or m.startswith("flax"))}
print(json.dumps(out))
"""


def test_exported_classifier_serves_without_flax(tmp_path):
    tok = FastaiTokenizer()
    vocab = Vocab.from_tokens(tok.tokenize(TEXTS), min_freq=1)
    config = ClassifierConfig(AWDLSTMConfig(len(vocab), 16, 32, 2), 3, bptt=8, max_len=40)
    clf = TextClassifier.create(config, vocab.itos, seed=3, tokenizer=tok,
                                class_names=["neg", "mixed", "pos"], backward=True)
    clf.export(tmp_path / "served")
    meta = json.loads((tmp_path / "served" / "serving.json").read_text())
    assert meta["platforms"] == ["cpu", "cuda", "tpu"] and meta["backward"] is True
    proc = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "served"),
                           json.dumps(TEXTS)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.splitlines()[-1])
    assert served["model_code"] == []
    np.testing.assert_allclose(served["probs"], clf.predict_proba(TEXTS), atol=1e-5, rtol=0)
    assert served["labels"] == clf.predict(TEXTS)


def test_blocked_import_really_fails():
    code = SERVE.split("from ulmfit_jax import serving")[0] + "import flax\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode != 0 and "flax is blocked in this test" in proc.stderr


def test_text_layer_inference_helpers_do_not_import_jax():
    code = ("import sys, ulmfit_jax.text.prediction_batches, ulmfit_jax.text.tokenizer_spec, "
            "ulmfit_jax.text.detokenize; assert 'jax' not in sys.modules, 'jax imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_model_on_the_cudnn_kernel_exports_for_every_platform(tmp_path):
    """A classifier trained or loaded on a GPU host may carry `lstm_impl='cudnn'`, whose kernel
    lowers for CUDA only: the export runs the same parameters on the portable scan."""
    tok = FastaiTokenizer()
    vocab = Vocab.from_tokens(tok.tokenize(TEXTS), min_freq=1)
    encoder = AWDLSTMConfig(len(vocab), 16, 32, 2, lstm_impl="cudnn")
    config = ClassifierConfig(encoder, 2, bptt=8, max_len=40)
    on_gpu = TextClassifier.create(config, vocab.itos, seed=3, tokenizer=tok,
                                   class_names=["neg", "pos"])
    on_gpu.export(tmp_path / "served")
    meta = json.loads((tmp_path / "served" / "serving.json").read_text())
    assert meta["platforms"] == ["cpu", "cuda", "tpu"]
    assert on_gpu.config.encoder.lstm_impl == "cudnn"  # the model itself is left as it was
    scan = TextClassifier.create(
        dataclasses.replace(config, encoder=dataclasses.replace(encoder, lstm_impl="scan")),
        vocab.itos, seed=3, tokenizer=tok, class_names=["neg", "pos"])
    from ulmfit_jax import serving

    served = serving.load(tmp_path / "served")
    np.testing.assert_allclose(served.predict_proba(TEXTS), scan.predict_proba(TEXTS),
                               atol=1e-5, rtol=0)
