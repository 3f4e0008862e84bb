"""LM stream invariants: coverage, contiguity, shift, determinism, resume, backward, hosts."""

import json

import numpy as np
import pytest

from ulmfit_jax.text.lm_stream import LMStream, bucket_lengths
from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus


def make_corpus(n_docs=40, seed=0, max_len=30):
    """Documents whose token ids are globally unique, so positions can be traced back."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len, size=n_docs)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    docs = [list(range(10 + s, 10 + s + n)) for s, n in zip(starts, lengths, strict=False)]
    return TokenizedCorpus.from_lists(docs)


def epoch_batches(stream):
    return list(iter(stream))


def row_streams(batches):
    """Concatenate each row's inputs over the epoch: `[rows, row_len]`."""
    return np.concatenate([b["inputs"] for b in batches], axis=1)


def expected_stream(corpus, order, backward=False):
    docs = [corpus.doc(i)[::-1] if backward else corpus.doc(i) for i in order]
    return np.concatenate(docs)


@pytest.mark.parametrize("variable", [False, True])
def test_every_token_once_rows_contiguous_targets_shifted(variable):
    corpus = make_corpus()
    stream = LMStream(corpus, batch_size=4, bptt=9, seed=3, variable_length=variable,
                      length_step=4)
    batches = epoch_batches(stream)
    rows = row_streams(batches)
    # the stream of this epoch, in the order the plan chose
    full = expected_stream(corpus, stream.plan(0).order)
    row_len = (len(full) - 1) // 4
    assert rows.shape == (4, row_len)
    # rows are consecutive slices of the stream, so windows continue each row exactly
    np.testing.assert_array_equal(rows, full[: 4 * row_len].reshape(4, row_len))
    ids = corpus.ids
    used = np.sort(rows.ravel())
    assert len(np.unique(used)) == len(used)  # each token at most once ...
    assert len(ids) - len(used) < 4 + 1  # ... and only the < batch_size + 1 tail is unused
    for b in batches:
        assert b["inputs"].dtype == np.int32 and b["targets"].dtype == np.int32
        assert b["inputs"].shape == b["targets"].shape
    targets = np.concatenate([b["targets"] for b in batches], axis=1)
    np.testing.assert_array_equal(targets, full[1: 4 * row_len + 1].reshape(4, row_len))


def test_shuffled_each_epoch_and_deterministic_for_seed():
    corpus = make_corpus()
    a = LMStream(corpus, batch_size=4, bptt=8, seed=1, variable_length=True)
    b = LMStream(corpus, batch_size=4, bptt=8, seed=1, variable_length=True)
    c = LMStream(corpus, batch_size=4, bptt=8, seed=2, variable_length=True)
    for _ in range(2):
        ea, eb, ec = epoch_batches(a), epoch_batches(b), epoch_batches(c)
        assert len(ea) == len(eb)
        for x, y in zip(ea, eb, strict=True):
            np.testing.assert_array_equal(x["inputs"], y["inputs"])
            np.testing.assert_array_equal(x["targets"], y["targets"])
        assert not np.array_equal(row_streams(ea)[:, :20], row_streams(ec)[:, :20])
    assert not np.array_equal(a.plan(0).order, a.plan(1).order)
    assert a.epoch == 2 and a.step == 0


def test_no_shuffle_keeps_corpus_order():
    corpus = make_corpus()
    stream = LMStream(corpus, batch_size=1, bptt=16, shuffle=False)
    rows = row_streams(epoch_batches(stream))
    np.testing.assert_array_equal(rows[0], corpus.ids[: len(corpus.ids) - 1])


def test_backward_stream_is_reversed_documents():
    corpus = make_corpus()
    fwd = LMStream(corpus, batch_size=3, bptt=7, seed=5)
    bwd = LMStream(corpus, batch_size=3, bptt=7, seed=5, backward=True)
    order = bwd.plan(0).order
    np.testing.assert_array_equal(order, fwd.plan(0).order)
    rows = row_streams(epoch_batches(bwd))
    full = expected_stream(corpus, order, backward=True)
    np.testing.assert_array_equal(rows, full[: rows.size].reshape(rows.shape))


def test_resume_continues_exactly():
    corpus = make_corpus(seed=1)
    ref = LMStream(corpus, batch_size=4, bptt=6, seed=9, variable_length=True, length_step=2)
    reference = epoch_batches(ref) + epoch_batches(ref)
    run = LMStream(corpus, batch_size=4, bptt=6, seed=9, variable_length=True, length_step=2)
    it = iter(run)
    for _ in range(3):
        next(it)
    saved = json.loads(json.dumps(run.get_state()))
    resumed = LMStream(corpus, batch_size=4, bptt=6, seed=9, variable_length=True,
                       length_step=2)
    resumed.set_state(saved)
    rest = epoch_batches(resumed) + epoch_batches(resumed)
    assert len(rest) == len(reference) - 3
    for x, y in zip(rest, reference[3:], strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
    with pytest.raises(ValueError, match="seed"):
        LMStream(corpus, batch_size=4, bptt=6, seed=10).set_state(saved)


def test_variable_lengths_bounded_and_near_bptt():
    corpus = make_corpus(n_docs=400, max_len=60)
    stream = LMStream(corpus, batch_size=4, bptt=72, seed=0, variable_length=True)
    seen = set()
    for _ in range(3):
        seen |= {b["inputs"].shape[1] for b in epoch_batches(stream)}
    allowed = set(stream.possible_lengths())
    assert seen <= allowed
    assert len(allowed) <= 2 * len(bucket_lengths(72, 8))
    assert all(n % 8 == stream.row_len % 8 or n % 8 == 0 for n in seen)
    lengths = [stream.plan(e).windows[:-1] for e in range(3)]
    assert 60 < np.mean(np.concatenate(lengths)) < 76  # 0.95 * 72 + 0.05 * 36 = 70.2
    fixed = LMStream(corpus, batch_size=4, bptt=72)
    assert {b["inputs"].shape[1] for b in epoch_batches(fixed)} == set(fixed.possible_lengths())
    assert len(fixed.possible_lengths()) <= 2


def test_drop_last_window_keeps_full_windows_only():
    corpus = make_corpus()
    stream = LMStream(corpus, batch_size=2, bptt=10, last_window="drop")
    assert {b["inputs"].shape[1] for b in epoch_batches(stream)} == {10}
    assert stream.num_batches() == stream.row_len // 10


@pytest.mark.parametrize("process_count", [2, 4])
def test_hosts_take_contiguous_row_blocks(process_count):
    corpus = make_corpus()
    whole = LMStream(corpus, batch_size=8, bptt=5, seed=4, variable_length=True)
    parts = [LMStream(corpus, batch_size=8, bptt=5, seed=4, variable_length=True,
                      process_index=i, process_count=process_count)
             for i in range(process_count)]
    for full, *local in zip(epoch_batches(whole), *map(epoch_batches, parts), strict=True):
        assert all(b["inputs"].shape[0] == 8 // process_count for b in local)
        np.testing.assert_array_equal(np.concatenate([b["inputs"] for b in local]),
                                      full["inputs"])
        np.testing.assert_array_equal(np.concatenate([b["targets"] for b in local]),
                                      full["targets"])


def test_bad_arguments_are_named():
    corpus = make_corpus()
    with pytest.raises(ValueError, match="not divisible by process_count"):
        LMStream(corpus, batch_size=6, process_count=4)
    with pytest.raises(ValueError, match="last_window"):
        LMStream(corpus, batch_size=2, last_window="pad")
    with pytest.raises(ValueError, match="cannot fill"):
        LMStream(TokenizedCorpus.from_lists([[1, 2, 3]]), batch_size=4)


@pytest.mark.parametrize("bs,bptt", [(4, 9), (3, 72), (5, 7)])
def test_fixed_bptt_matches_fastai_lm_dataloader(bs, bptt):
    """Live parity with fastai's LMDataLoader, unshuffled and for our shuffled epoch order."""
    import torch
    from fastai.text.all import LMDataLoader

    corpus = make_corpus(n_docs=50, seed=bs)
    shuffled = LMStream(corpus, bs, bptt, seed=7)
    for stream, order in [(LMStream(corpus, bs, bptt, shuffle=False), range(50)),
                          (shuffled, shuffled.plan(0).order)]:
        docs = [torch.tensor(corpus.doc(i)) for i in order]
        theirs = [(x.numpy(), y.numpy()) for x, y in
                  LMDataLoader(docs, bs=bs, seq_len=bptt, shuffle=False)]
        ours = epoch_batches(stream)
        assert len(ours) == len(theirs)
        for (x, y), b in zip(theirs, ours, strict=True):
            np.testing.assert_array_equal(b["inputs"], x)
            np.testing.assert_array_equal(b["targets"], y)
