"""inference/cached_split.py: a module is split once between calls, and again whenever one of
its variables holds a new array (a load, an update, training), so predictions always follow the
module."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from ulmfit_jax import TextClassifier
from ulmfit_jax.api.module_state import set_state
from ulmfit_jax.inference import cached_split
from ulmfit_jax.inference.cached_split import CachedSplit
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.text import FastaiTokenizer
from ulmfit_jax.text.vocab import Vocab

TEXTS = ["a fine film , truly fine", "dull dull plot and a dull actor"]


def _classifier(seed: int) -> TextClassifier:
    tok = FastaiTokenizer()
    vocab = Vocab.from_tokens(tok.tokenize(TEXTS), min_freq=1)
    config = ClassifierConfig(AWDLSTMConfig(len(vocab), 8, 16, 2), 3, bptt=4, max_len=16)
    return TextClassifier.create(config, vocab.itos, seed=seed, tokenizer=tok)


def _counting_splits(monkeypatch) -> list[int]:
    calls = [0]
    real = nnx.split

    def counted(*args):
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(cached_split.nnx, "split", counted)
    return calls


def test_a_module_is_split_once_while_it_is_unchanged(monkeypatch):
    clf = _classifier(0)
    calls = _counting_splits(monkeypatch)
    first = clf.predict_proba(TEXTS)
    for _ in range(3):
        np.testing.assert_array_equal(clf.predict_proba(TEXTS), first)
    assert calls[0] == 1


def test_predictions_follow_new_weights_and_a_new_module(monkeypatch):
    clf, other = _classifier(0), _classifier(1)
    calls = _counting_splits(monkeypatch)
    before = clf.predict_proba(TEXTS)
    set_state(clf.module, other.state, "test")  # in place: the same variables, new arrays
    np.testing.assert_array_equal(clf.predict_proba(TEXTS), other.predict_proba(TEXTS))
    assert not np.allclose(clf.predict_proba(TEXTS), before)
    clf.module = _classifier(0).module  # another module with the first weights
    np.testing.assert_array_equal(clf.predict_proba(TEXTS), before)
    assert calls[0] == 4  # clf: first, after the update, the new module; other: once


def test_the_split_is_nnx_split():
    module = _classifier(0).module
    graphdef, state = CachedSplit()(module)
    want_graphdef, want_state = nnx.split(module)
    assert graphdef == want_graphdef
    assert all(a is b for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want_state),
                                      strict=True))
