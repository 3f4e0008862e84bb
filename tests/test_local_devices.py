"""Prediction batches split over the local devices (inference/local_devices.py): what is split
and where, the state copied once, and the same probabilities as on one device.

The device count is fixed when jax starts, so the several-device side runs in a subprocess
(3 CPU devices: a count that the power-of-two batches do not divide).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ulmfit_jax import TextClassifier
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.text import FastaiTokenizer
from ulmfit_jax.text.prediction_batches import batch_rows
from ulmfit_jax.text.vocab import Vocab

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["the", "a", "film", "movie", "good", "bad", "plot", "actor", "scene", "long", "dull",
         "great", "fine", "awful"]
# Lengths over several bptt chunks and buckets, a lone short one, and an empty text.
TEXTS = [" ".join(np.random.default_rng(i).choice(WORDS, n))
         for i, n in enumerate([70, 3, 41, 12, 90, 25, 7, 55, 33])] + [""]

SPLIT_SIDE = """
import json, sys
import jax, numpy as np
import ulmfit_jax
ulmfit_jax.use_cpu_cores(3)
from ulmfit_jax import TextClassifier
from ulmfit_jax.api.module_state import set_state
from ulmfit_jax.inference.local_devices import LocalDevices
from ulmfit_jax.model.config import AWDLSTMConfig

clf = TextClassifier.load(sys.argv[1])
texts = json.loads(sys.argv[2])
probs = clf.predict_proba(texts, batch_size=4)

devices = LocalDevices()
seen = {}
def where(ids, state):
    ids = jax.numpy.asarray(ids)  # as jit takes it: a host array lands on the default device
    seen["ids"] = sorted(d.id for d in ids.sharding.device_set)
    seen["rows_per_device"] = sorted({s.data.shape[0] for s in ids.addressable_shards})
    return state
ids = np.zeros((6, 16), np.int32)
first = devices.run(where, ids, clf.state)
split = dict(seen)
second = devices.run(where, ids, clf.state)
devices.run(where, ids[:4], clf.state)
whole = dict(seen)
set_state(clf.module, jax.tree.map(lambda x: x * 1, clf.state), "test")  # new arrays
third = devices.run(where, ids, clf.state)
counts = {f"lstm {h}": LocalDevices.for_model(AWDLSTMConfig(50, 16, h, 2)).count
          for h in (32, 256, 257, 1152)}
counts["qrnn 32"] = LocalDevices.for_model(AWDLSTMConfig(50, 16, 32, 2,
                                                         encoder_kind="qrnn")).count
print(json.dumps({"for_model": counts,
    "devices": jax.local_device_count(), "probs": probs.tolist(), "split": split,
    "whole": whole, "copied_once": first is second, "copied_again": third is not first,
    "replicated": sorted(d.id for d in jax.tree.leaves(first)[0].sharding.device_set)}))
"""


@pytest.mark.parametrize("n_docs, batch_size, devices, rows", [
    (1, 64, 3, 1), (2, 64, 3, 2), (3, 64, 3, 3), (4, 64, 3, 6), (64, 64, 3, 66), (5, 64, 2, 8),
    (64, 64, 2, 64), (1, 64, 1, 1), (3, 64, 1, 4)])
def test_a_batch_gets_a_row_for_each_device_unless_it_has_fewer_documents(n_docs, batch_size,
                                                                          devices, rows):
    assert batch_rows(n_docs, batch_size, devices) == rows


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    tok = FastaiTokenizer()
    vocab = Vocab.from_tokens(tok.tokenize(TEXTS), min_freq=1)
    config = ClassifierConfig(AWDLSTMConfig(len(vocab), 16, 32, 2), 2, bptt=8, max_len=32)
    clf = TextClassifier.create(config, vocab.itos, seed=0, tokenizer=tok)
    directory = tmp_path_factory.mktemp("split") / "clf"
    clf.save(directory)
    return clf, directory


@pytest.fixture(scope="module")
def split_run(saved_classifier) -> dict:
    _, directory = saved_classifier
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run([sys.executable, "-c", SPLIT_SIDE, str(directory), json.dumps(TEXTS)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_use_cpu_cores_gives_jax_the_devices_asked_for(split_run):
    assert split_run["devices"] == 3


def test_a_batch_is_split_over_every_device_when_its_rows_divide(split_run):
    assert split_run["split"] == {"ids": [0, 1, 2], "rows_per_device": [2]}
    assert split_run["whole"] == {"ids": [0], "rows_per_device": [4]}  # 4 rows, 3 devices


def test_cpu_devices_share_a_batch_only_for_a_small_lstm(split_run):
    assert split_run["for_model"] == {"lstm 32": 3, "lstm 256": 3, "lstm 257": 1,
                                      "lstm 1152": 1, "qrnn 32": 1}


def test_the_state_is_copied_to_every_device_once_and_again_when_it_changes(split_run):
    assert split_run["replicated"] == [0, 1, 2]
    assert split_run["copied_once"] and split_run["copied_again"]


def test_split_batches_give_the_probabilities_of_one_device(saved_classifier, split_run):
    clf, _ = saved_classifier
    np.testing.assert_allclose(split_run["probs"], clf.predict_proba(TEXTS, batch_size=4),
                               atol=1e-6, rtol=0)
