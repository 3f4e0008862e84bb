"""LMStream and ClassifierBatches share one resumable-iterator protocol."""

import json

import numpy as np
import pytest

from ulmfit_jax.text.classifier_batches import ClassifierBatches
from ulmfit_jax.text.lm_stream import LMStream
from ulmfit_jax.text.resumable import ResumableBatches
from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus


def make_corpus() -> TokenizedCorpus:
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 50, rng.integers(3, 30)).tolist() for _ in range(40)]
    return TokenizedCorpus.from_lists(docs, labels=[i % 2 for i in range(40)])


def make_iterators(corpus: TokenizedCorpus, seed: int = 0) -> list[ResumableBatches]:
    return [LMStream(corpus, batch_size=4, bptt=5, seed=seed, variable_length=True,
                     length_step=1),
            ClassifierBatches(corpus, batch_size=6, bptt=5, seed=seed)]


@pytest.mark.parametrize("kind", [0, 1], ids=["lm_stream", "classifier_batches"])
def test_protocol_epoch_lengths_resume_and_refusal(kind):
    corpus = make_corpus()
    it = make_iterators(corpus)[kind]
    assert isinstance(it, ResumableBatches)
    lengths = [it.num_batches(epoch) for epoch in range(3)]
    assert len(list(it)) == lengths[0] and it.get_state()["epoch"] == 1
    for _ in range(2):
        next(iter(it))
    saved = json.loads(json.dumps(it.get_state()))
    expected = [it.batch(1, s) for s in range(2, lengths[1])]
    resumed = make_iterators(corpus)[kind]
    resumed.set_state(saved)
    rest = list(resumed)
    assert len(rest) == len(expected) and resumed.get_state()["epoch"] == 2
    for got, want in zip(rest, expected, strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(ValueError, match=f"seed=0 does not match this {type(it).__name__}"):
        make_iterators(corpus, seed=1)[kind].set_state(saved)
