"""configs/imdb.py end to end at WT103 size (400/1152/3) from fastai-format fwd and bwd files.

The files are written with random weights through our own fastai export, with a 60k-token
itos as fastai's `itos_wt103.pkl` is (its special tokens first, then English words, some of
them in the corpus, then filler). Only the data, the epoch counts and the batch sizes are
shrunk on the command line; the model is the real one.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from spacy.lang.en.stop_words import STOP_WORDS

from tests.checkpoint_files import read_state
from ulmfit_jax.api import LanguageModel
from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.text.fastai_tokenizer import SPECIAL_TOKENS
from ulmfit_jax.trainer.config import load_config
from ulmfit_jax.trainer.data import prepare_data

ROOT = Path(__file__).resolve().parents[1]
WT103_VOCAB = 60000
# configs/imdb.py's data, epochs and batches cut to a CPU test; the model is untouched.
SMALL_DATA = (
    "--config.data.max_train_docs=16", "--config.data.max_valid_docs=8",
    "--config.data.max_lm_docs=4", "--config.data.workers=0", "--config.classifier.max_tokens=72",
    "--config.lm.epochs=1", "--config.lm.batch_size=8", "--config.classifier.batch_size=8",
    "--config.classifier.eval_batch_size=8",
    # result-free: every epoch's checkpoint is kept, so each phase can be inspected
    "--config.checkpoint.keep=10", "--config.progress=False",
)


def small_imdb_config():
    """configs/imdb.py with SMALL_DATA's data keys (what the run tokenized)."""
    config = load_config(ROOT / "configs" / "imdb.py")
    config.data.update(max_train_docs=16, max_valid_docs=8, max_lm_docs=4, workers=0)
    return config


def wt103_itos() -> list[str]:
    """fastai's special tokens, real English words (partly in the corpus), filler to 60,000."""
    itos = list(SPECIAL_TOKENS) + sorted(STOP_WORDS)
    return itos + [f"wt103word{i}" for i in range(WT103_VOCAB - len(itos))]


def write_pretrained(directory: Path, name: str, itos: list[str], seed: int) -> dict:
    """`<directory>/lstm_<name>.pth` + `itos_wt103.pkl` at WT103 size; returns the parameters.

    The embedding rows and decoder bias are drawn around a non-zero mean (as trained ones
    are), so that a new word's row starting at the mean is told apart from one at zero."""
    rng = np.random.default_rng(seed)
    config = AWDLSTMConfig(vocab_size=len(itos), emb_size=400, hidden_size=1152, n_layers=3)
    params = LanguageModel.create(config, itos, seed=seed).params
    centre = rng.uniform(-0.3, 0.3, size=400)
    params["encoder"]["embedding"] = (centre + rng.normal(0, 0.3, (len(itos), 400))).astype(
        np.float32)
    params["decoder_bias"] = rng.normal(-3.0, 1.0, len(itos)).astype(np.float32)
    directory.mkdir()
    LanguageModel.from_params(config, params, itos).to_fastai(
        directory / f"lstm_{name}.pth", directory / "itos_wt103.pkl")
    return params


def checkpoints(workdir: Path, stage: str) -> list[dict]:
    """The parameters of every checkpoint of `stage`, oldest first."""
    root = workdir / "checkpoints" / stage
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())
    return [read_state(root / str(s) / "state")["params"] for s in steps]


def lstm(params: dict, layer: int, key: str) -> np.ndarray:
    """One LSTM weight (a checkpoint's layer keys are strings, a model's are ints)."""
    layers = params["encoder"]["layers"]
    return np.asarray(layers[layer if layer in layers else str(layer)][key])


def flat(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """`{"encoder/layers/0/w_hh": array, ...}` (checkpoint layer keys are strings, ours ints)."""
    out = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        out.update(flat(value, name + "/") if isinstance(value, dict) else
                   {name: np.asarray(value)})
    return out


def remapped_start(pretrained: dict, itos: list[str], vocab: list[str]) -> dict[str, np.ndarray]:
    """The pretrained parameters on the run's vocab: a word in the itos keeps its row (and
    decoder bias), a corpus word missing from it gets the mean row (and the mean bias)."""
    start = flat(pretrained)
    index = {t: i for i, t in enumerate(itos)}
    rows = np.array([index.get(t, -1) for t in vocab])
    missing = rows < 0
    assert 0 < missing.sum() < len(vocab) - len(SPECIAL_TOKENS)  # the itos partly overlaps
    for name in ("encoder/embedding", "decoder_bias"):
        old = start[name]
        start[name] = np.where(missing.reshape(-1, *[1] * (old.ndim - 1)), old.mean(0), old[rows])
    return start


@pytest.mark.slow
def test_imdb_config_fine_tunes_wt103_sized_fastai_weights_end_to_end(tmp_path):
    itos = wt103_itos()
    pretrained = {direction: write_pretrained(tmp_path / f"wt103-{direction}", direction, itos,
                                              seed)
                  for direction, seed in (("fwd", 1), ("bwd", 2))}
    # Run where configs/imdb.py expects wt103-fwd/ and wt103-bwd/: its paths are not overridden.
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           # the backward stages compile what the forward ones did: reuse it
           "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "imdb.py"),
         "--workdir", "run", "--stage", "all", *SMALL_DATA],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workdir = tmp_path / "run"
    vocab = json.loads((workdir / "vocab.json").read_text())["itos"]

    for direction in ("fwd", "bwd"):
        lm = LanguageModel.load(workdir / "models" / f"lm_{direction}")
        assert (lm.config.emb_size, lm.config.hidden_size, lm.config.n_layers) == (400, 1152, 3)
        assert lm.backward == (direction == "bwd")
        frozen_end, last = checkpoints(workdir, f"lm_{direction}")  # 1 frozen + 1 unfrozen epoch
        start = remapped_start(pretrained[direction], itos, vocab)
        frozen_end, last = flat(frozen_end), flat(last)
        assert set(frozen_end) == set(start)
        # The frozen epoch trained the embedding and the decoder bias, nothing else ...
        changed = {k for k, v in start.items() if not np.array_equal(frozen_end[k], v)}
        assert changed == {"encoder/embedding", "decoder_bias"}
        # ... and only a few Adam steps (measured: at most 0.015 per element), so each row is
        # still at its remapped start; the unfrozen epoch then trained every LSTM weight.
        for name in changed:
            np.testing.assert_allclose(frozen_end[name], start[name], atol=0.05)
        assert all(not np.array_equal(last[k], start[k]) for k in start if "layers" in k)
        np.testing.assert_array_equal(flat(lm.params)["encoder/layers/2/w_hh"],
                                      last["encoder/layers/2/w_hh"])

    # Gradual unfreezing (fastai's phases: head; + lstm2; + lstm1; everything for 2 epochs):
    # after each epoch, exactly the groups its phase unfroze differ from the fine-tuned LM.
    lm = LanguageModel.load(workdir / "models" / "lm_fwd").params
    epochs = checkpoints(workdir, "classifier_fwd")
    assert len(epochs) == 5
    trained_after = {0: (), 1: (2,), 2: (1, 2), 4: (0, 1, 2)}
    for epoch, trained in trained_after.items():
        for layer in range(3):
            same = np.array_equal(lstm(epochs[epoch], layer, "w_hh"), lstm(lm, layer, "w_hh"))
            assert same == (layer not in trained), (epoch, layer)
        same = np.array_equal(np.asarray(epochs[epoch]["encoder"]["embedding"]),
                              np.asarray(lm["encoder"]["embedding"]))
        assert same == (epoch < 4), epoch

    metrics = json.loads((workdir / "metrics.json").read_text())
    assert set(metrics) == {"lm_fwd", "lm_bwd", "classifier_fwd", "classifier_bwd", "ensemble"}
    for name in ("lm_fwd", "lm_bwd"):
        assert metrics[name]["perplexity"] == pytest.approx(np.exp(metrics[name]["loss"]))
    labels = np.asarray(prepare_data(small_imdb_config(), workdir).clf_valid.labels)
    probs = {name: np.load(workdir / "models" / name / "valid_probs.npy")
             for name in ("classifier_fwd", "classifier_bwd")}
    assert not np.array_equal(probs["classifier_fwd"], probs["classifier_bwd"])
    probs["ensemble"] = (probs["classifier_fwd"] + probs["classifier_bwd"]) / 2
    for name, p in probs.items():  # the reported figures are those of the saved probabilities
        assert p.shape == (8, 2)
        assert metrics[name]["accuracy"] == pytest.approx(np.mean(p.argmax(-1) == labels))
    assert "ensemble: validation accuracy" in proc.stdout
    shutil.rmtree(workdir / "checkpoints")  # 3 GB: pytest keeps the last runs' tmp_path


def test_pretrained_weights_of_another_size_than_config_model_are_refused(tmp_path):
    itos = list(SPECIAL_TOKENS) + sorted(STOP_WORDS)[:47]
    config = AWDLSTMConfig(vocab_size=len(itos), emb_size=16, hidden_size=24, n_layers=2)
    LanguageModel.create(config, itos).to_fastai(tmp_path / "lm.pth", tmp_path / "itos.pkl")
    proc = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir",
         str(tmp_path / "run"), "--stage", "lm", f"--config.lm.init_from={tmp_path / 'lm.pth'}",
         f"--config.lm.init_itos={tmp_path / 'itos.pkl'}"],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'lm.pth'} holds an AWD-LSTM with (emb_size, hidden_size, n_layers) "
        "= (16, 24, 2), but config.model has (16, 32, 2); set config.model to the file's sizes "
        "(and rerun with --fresh)"]
