"""Classifier batches: fastai parity (padding, sortish, sorted) live, invariants, resume."""

import json

import numpy as np
import pytest
import torch
from fastai.text.all import SortedDL, pad_input_chunk

from ulmfit_jax.text.classifier_batches import (
    ClassifierBatches,
    pad_chunks,
    repad,
    restore_order,
    sorted_order,
    sortish_order,
)
from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus


def make_corpus(n_docs=53, seed=0, max_len=200, n_classes=3):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(2, 100, size=rng.integers(1, max_len)) for _ in range(n_docs)]
    return TokenizedCorpus.from_lists(docs, labels=rng.integers(0, n_classes, size=n_docs))


@pytest.mark.parametrize("pad_first", [True, False])
@pytest.mark.parametrize("seq_len", [7, 72])
def test_padding_matches_fastai_pad_input_chunk(pad_first, seq_len):
    rng = np.random.default_rng(seq_len)
    docs = [rng.integers(2, 50, size=n) for n in (150, 3, 72, 71, 0, 144, 10)]
    samples = [(torch.tensor(d, dtype=torch.long), i) for i, d in enumerate(docs)]
    theirs = pad_input_chunk(samples, pad_idx=1, pad_first=pad_first, seq_len=seq_len)
    expected = np.stack([t[0].numpy() for t in theirs])
    ours = pad_chunks(docs, pad_id=1, bptt=seq_len, pad_first=pad_first)
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("bs,n", [(2, 11), (4, 500), (3, 7), (5, 5), (2, 4)])
def test_sortish_order_matches_fastai_sorted_dl(bs, n):
    lengths = np.random.default_rng(n).integers(1, 40, size=n)  # many ties on purpose
    dataset = [(torch.zeros(int(k)), 0) for k in lengths]
    train_dl = SortedDL(dataset, res=list(lengths), bs=bs, shuffle=True)
    for seed in (0, 1, 2):
        np.random.seed(seed)
        theirs = np.array(list(train_dl.shuffle_fn(None)))
        ours = sortish_order(lengths, bs, np.random.RandomState(seed))
        np.testing.assert_array_equal(ours, theirs)
    valid_dl = SortedDL(dataset, res=list(lengths), bs=bs, shuffle=False)
    np.testing.assert_array_equal(sorted_order(lengths), list(valid_dl.get_idxs()))


def test_sortish_epochs_are_permutations_deterministic_and_sortish():
    corpus = make_corpus(n_docs=400)
    make = lambda seed: ClassifierBatches(corpus, 4, seed=seed, drop_last=False)  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    orders = []
    for epoch in range(3):
        batches = list(a)
        idx = np.concatenate([x["indices"] for x in batches])
        assert sorted(idx) == list(range(400))
        orders.append(idx)
        np.testing.assert_array_equal(idx, np.concatenate([x["indices"] for x in b]))
        assert not np.array_equal(idx, c.order(epoch))
        # the longest document comes first; inside a batch lengths never increase
        assert batches[0]["lengths"][0] == corpus.lengths.max()
        assert all(np.all(np.diff(x["lengths"]) <= 0) for x in batches)
    assert not np.array_equal(orders[0], orders[1])


def test_batch_contents_labels_and_fastai_layout():
    corpus = make_corpus()
    loader = ClassifierBatches(corpus, 8, bptt=16, shuffle=True, seed=3)
    assert loader.drop_last and len(loader) == 53 // 8
    for batch in loader:
        ids, lengths, idx = batch["ids"], batch["lengths"], batch["indices"]
        assert ids.dtype == np.int32 and batch["labels"].dtype == np.int32
        assert ids.shape == (8, lengths.max())
        np.testing.assert_array_equal(batch["labels"], corpus.labels[idx])
        docs = [corpus.doc(i) for i in idx]
        np.testing.assert_array_equal(ids, pad_chunks(docs, 1, 16, True))
        np.testing.assert_array_equal(lengths, [len(d) for d in docs])


def test_validation_sorted_and_predictions_restored():
    corpus = make_corpus(n_docs=21)
    loader = ClassifierBatches(corpus, 4, shuffle=False)
    assert not loader.drop_last
    batches = list(loader)
    lengths = np.concatenate([b["lengths"] for b in batches])
    assert np.all(np.diff(lengths) <= 0) and len(lengths) == 21
    # a fake "prediction" per row: the document's first token; restore gives corpus order
    preds = np.concatenate([b["ids"][np.arange(len(b["ids"])), _first_real(b)]
                            for b in batches])
    restored = restore_order(preds, np.concatenate([b["indices"] for b in batches]))
    np.testing.assert_array_equal(restored, [corpus.doc(i)[0] for i in range(21)])


def _first_real(batch):
    """Column of each row's first real token in the pad-first layout."""
    width = batch["ids"].shape[1]
    return (width - batch["lengths"]) // 72 * 72


def test_pad_last_batch_fills_rows_and_restore_ignores_them():
    corpus = make_corpus(n_docs=10)
    loader = ClassifierBatches(corpus, 4, shuffle=False, pad_last_batch=True)
    batches = list(loader)
    last = batches[-1]
    assert last["ids"].shape[0] == 4
    np.testing.assert_array_equal(last["lengths"][2:], [0, 0])
    np.testing.assert_array_equal(last["indices"][2:], [-1, -1])
    np.testing.assert_array_equal(last["labels"][2:], [-1, -1])
    assert np.all(last["ids"][2:] == 1)
    idx = np.concatenate([b["indices"] for b in batches])
    restored = restore_order(idx * 10, idx)
    np.testing.assert_array_equal(restored, np.arange(10) * 10)


def test_max_tokens_keeps_last_or_first():
    corpus = TokenizedCorpus.from_lists([list(range(10, 30)), [5, 6]], labels=[0, 1])
    last = next(iter(ClassifierBatches(corpus, 2, shuffle=False, max_tokens=5, bptt=2)))
    np.testing.assert_array_equal(last["lengths"], [5, 2])
    np.testing.assert_array_equal(last["ids"][0], [25, 26, 27, 28, 29])
    np.testing.assert_array_equal(last["ids"][1], [1, 1, 5, 6, 1])
    first = next(iter(ClassifierBatches(corpus, 2, shuffle=False, max_tokens=5, keep="first")))
    np.testing.assert_array_equal(first["ids"][0], [10, 11, 12, 13, 14])


def test_resume_continues_exactly():
    corpus = make_corpus(n_docs=60)
    ref = ClassifierBatches(corpus, 4, seed=5)
    reference = list(ref) + list(ref)
    run = ClassifierBatches(corpus, 4, seed=5)
    it = iter(run)
    for _ in range(5):
        next(it)
    resumed = ClassifierBatches(corpus, 4, seed=5)
    resumed.set_state(json.loads(json.dumps(run.get_state())))
    rest = list(resumed) + list(resumed)
    assert len(rest) == len(reference) - 5
    for x, y in zip(rest, reference[5:], strict=True):
        for key in ("ids", "labels", "lengths", "indices"):
            np.testing.assert_array_equal(x[key], y[key])
    with pytest.raises(ValueError, match="num_docs"):
        ClassifierBatches(make_corpus(n_docs=61), 4, seed=5).set_state(run.get_state())


def test_hosts_split_rows_with_common_width():
    corpus = make_corpus(n_docs=40)
    whole = list(ClassifierBatches(corpus, 8, seed=2, bptt=16))
    parts = [list(ClassifierBatches(corpus, 8, seed=2, bptt=16, process_index=i,
                                    process_count=2)) for i in range(2)]
    for full, h0, h1 in zip(whole, *parts, strict=True):
        for key in ("ids", "labels", "lengths", "indices"):
            np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]), full[key])
    with pytest.raises(ValueError, match="pad_last_batch"):
        ClassifierBatches(make_corpus(n_docs=41), 8, shuffle=False, process_count=2)


def test_unlabelled_corpus_has_no_labels_key():
    corpus = TokenizedCorpus.from_lists([[1, 2], [3]])
    batch = next(iter(ClassifierBatches(corpus, 2, shuffle=False)))
    assert "labels" not in batch and batch["ids"].shape == (2, 2)


def test_every_host_pads_its_rows_to_the_whole_batchs_shape():
    """With two hosts each re-pads its own rows (the trainer's `repad`); both must get the
    whole batch's bucket and layout, or their programs' collectives disagree. Host 1's rows
    (7 and 3 tokens) alone would fit one chunk; the batch's longest has 30."""
    corpus = TokenizedCorpus.from_lists([[5] * n for n in (30, 7, 12, 3)], labels=[0, 1, 0, 1])
    whole = repad(ClassifierBatches(corpus, 4, bptt=8, shuffle=False).batch(0, 0), 8, 1)
    hosts = [repad(ClassifierBatches(corpus, 4, bptt=8, shuffle=False, process_index=i,
                                     process_count=2).batch(0, 0), 8, 1) for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(hosts), whole)
    assert whole.shape == (4, 32)
