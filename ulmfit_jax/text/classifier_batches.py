"""Classifier batches: fastai's length-sorted orders and chunked padding, resumable.

Order (as fastai's `SortedDL`):
- training (`shuffle=True`), "sortish": a random permutation with the longest document moved
  to the front, cut into chunks of `batch_size * 50` each sorted longest first, cut into
  batches; the first batch (holding the longest document, so memory peaks at once) and the
  last (possibly partial) batch stay in place, the others are shuffled (`sortish_order`);
- validation / prediction (`shuffle=False`): strictly longest first, ties in corpus order
  (`sorted_order`). Each batch carries `indices` (corpus positions; `restore_order` puts
  per-batch predictions back in corpus order).

Padding (fastai's `pad_input_chunk`, `pad_chunks` here): each batch is padded to its longest
document; the padding is split into whole `bptt` chunks placed *before* the text and the
remainder placed *after* it, so BPT3C's chunks of a short document start with chunks that are
pure padding (state stays zero) and the text starts on a chunk boundary.

`max_tokens` (default None = whole documents, as fastai, whose BPT3C runs over every chunk and
pools the last `max_len` outputs) keeps only the *last* `max_tokens` tokens (or the first,
with `keep="first"`) of longer documents, bounding the padded width.

Batches: `ids` int32 `[batch, time]`, `lengths` int32 `[batch]`, `indices` int64 `[batch]`,
and `labels` int32 `[batch]` when the corpus has labels. With `pad_last_batch=True` a short
final batch is filled with filler rows (all padding, length 0, label and index -1) so every
batch has `batch_size` rows (data-parallel sharding needs that); consumers must ignore rows
with `lengths == 0`.

Iterator state `{"epoch", "step", ...}` is JSON-serialisable; `set_state` resumes exactly,
because each epoch's order is recomputed from `(seed, epoch)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ulmfit_jax.text.resumable import Batch, ResumableBatches
from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus

# fastai's SortedDL sorts chunks of 50 batches.
SORTISH_CHUNK_BATCHES = 50


class _Permuter(Protocol):
    def permutation(self, x: int) -> np.ndarray: ...


def pad_front(width, length, bptt: int):
    """Where a document of `length` tokens starts in a row of `width` padded by `pad_chunks`
    (pad_first): after whole `bptt` chunks of padding (ints or arrays)."""
    return (width - length) // bptt * bptt


def pad_chunks(docs: Sequence[np.ndarray], pad_id: int = 1, bptt: int = 72,
               pad_first: bool = True, pad_len: int | None = None) -> np.ndarray:
    """fastai's `pad_input_chunk`: docs padded to `pad_len` (default: longest), `[batch, time]`.

    pad_first: whole `bptt` chunks of padding before each document and the remainder after;
    otherwise the document first, then all padding.
    """
    lengths = [len(d) for d in docs]
    width = max(lengths, default=0) if pad_len is None else pad_len
    if any(n > width for n in lengths):
        raise ValueError(f"a document of {max(lengths)} tokens exceeds pad_len {width}")
    out = np.full((len(docs), width), pad_id, dtype=np.int32)
    for row, (doc, n) in enumerate(zip(docs, lengths, strict=True)):
        start = pad_front(width, n, bptt) if pad_first else 0
        out[row, start:start + n] = doc
    return out


def bucket_chunks(n_chunks: int) -> int:
    """Round a number of bptt chunks up to 1, 2, 3, 4, 6, 8, 12, 18, 24, 36, ... (few shapes)."""
    if n_chunks <= 4:
        return max(n_chunks, 1)
    size = 4
    while size < n_chunks:
        size = size * 3 // 2 if size % 4 == 0 else size * 4 // 3
    return size


def pad_bucketed(docs: Sequence[np.ndarray], pad_id: int, bptt: int,
                 width: int | None = None) -> np.ndarray:
    """docs in fastai's layout at their batch width W (`pad_chunks`), inside a bucketed width
    T (`bucket_chunks`): the whole `bptt` chunks of T - W in front of every row, the remainder
    after, `[batch, T]`.

    W is `width`, by default the longest document: with several hosts, each holding some of a
    batch's rows, every host must pass the whole batch's W (their shapes must agree).
    A document's result does not depend on T, and the positions outside the W window are
    padding in every row: a step no row takes, which the encoder skips on a CPU.
    """
    if width is None:
        width = max((len(d) for d in docs), default=0)
    target = bucket_chunks(-(-width // bptt)) * bptt
    front = (target - width) // bptt * bptt
    out = np.full((len(docs), target), pad_id, dtype=np.int32)
    out[:, front:front + width] = pad_chunks(docs, pad_id, bptt, pad_first=True, pad_len=width)
    return out


def repad(batch: dict, bptt: int, pad_id: int) -> np.ndarray:
    """The batch's documents re-padded by `pad_bucketed` at the batch's width (its ids' width:
    the longest document of the whole batch, on every host) `[batch, time]`."""
    ids, lengths = batch["ids"], batch["lengths"]
    width = ids.shape[1]
    fronts = pad_front(width, lengths, bptt)
    docs = [ids[r, f:f + n] for r, (f, n) in enumerate(zip(fronts, lengths, strict=True))]
    return pad_bucketed(docs, pad_id, bptt, width)


def sorted_order(lengths: np.ndarray) -> np.ndarray:
    """Indices longest first, ties in original order (fastai's stable reverse sort)."""
    return np.argsort(-np.asarray(lengths), kind="stable")


def sortish_order(lengths: np.ndarray, batch_size: int, rng: _Permuter) -> np.ndarray:
    """fastai `SortedDL.shuffle_fn`: a permutation of `range(len(lengths))`, batch-sortish.

    `rng` is a `np.random.Generator`, or a `RandomState` to reproduce fastai's draws from the
    global numpy RNG exactly.
    """
    lengths = np.asarray(lengths)
    idxs = rng.permutation(len(lengths))
    longest = int(np.argmax(lengths))
    at = int(np.where(idxs == longest)[0][0])
    idxs[0], idxs[at] = idxs[at], idxs[0]
    size = batch_size * SORTISH_CHUNK_BATCHES
    chunks = [idxs[i:i + size] for i in range(0, len(idxs), size)]
    idxs = np.concatenate([c[sorted_order(lengths[c])] for c in chunks])
    batches = [idxs[i:i + batch_size] for i in range(0, len(idxs), batch_size)]
    if len(batches) <= 2:
        return idxs
    middle = np.stack(batches[1:-1])[rng.permutation(len(batches) - 2)]
    return np.concatenate([batches[0], middle.ravel(), batches[-1]])


def restore_order(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Per-batch outputs back in corpus order: `values[k]` belongs to document `indices[k]`.

    values: `[n, ...]` stacked over batches; indices: `[n]` (filler rows with index -1 are
    dropped).
    """
    values, indices = np.asarray(values), np.asarray(indices)
    keep = indices >= 0
    values, indices = values[keep], indices[keep]
    if not np.array_equal(np.sort(indices), np.arange(len(indices))):
        raise ValueError("indices are not a permutation of range(n): a batch is missing")
    out = np.empty_like(values)
    out[indices] = values
    return out


class ClassifierBatches(ResumableBatches):
    """Padded, length-sorted classifier batches over a `TokenizedCorpus` (see module doc)."""

    def __init__(self, corpus: TokenizedCorpus, batch_size: int, *, bptt: int = 72,
                 pad_id: int = 1, shuffle: bool = True, seed: int = 0,
                 max_tokens: int | None = None, keep: str = "last", pad_first: bool = True,
                 drop_last: bool | None = None, pad_last_batch: bool = False,
                 process_index: int = 0, process_count: int = 1) -> None:
        """drop_last defaults to `shuffle` (fastai drops the partial training batch only).
        batch_size counts rows over all hosts; host `process_index` gets its block of rows."""
        drop_last = shuffle if drop_last is None else drop_last
        _check_args(corpus, batch_size, max_tokens, keep, process_index, process_count,
                    drop_last or pad_last_batch)
        self.corpus, self.batch_size, self.bptt, self.pad_id = corpus, batch_size, bptt, pad_id
        self.shuffle, self.seed, self.pad_first = shuffle, seed, pad_first
        self.max_tokens, self.keep = max_tokens, keep
        self.drop_last, self.pad_last_batch = drop_last, pad_last_batch
        self.local_rows = batch_size // process_count
        self.first_row = process_index * self.local_rows
        lengths = corpus.lengths
        self.lengths = lengths if max_tokens is None else np.minimum(lengths, max_tokens)
        self.epoch, self.step = 0, 0
        self._order_epoch = -1
        self._order: np.ndarray | None = None

    def identity(self) -> dict:
        """Seed, batch size and corpus size: a saved state must match them."""
        return {"seed": self.seed, "batch_size": self.batch_size,
                "num_docs": self.corpus.num_docs}

    def order(self, epoch: int) -> np.ndarray:
        """Document indices of `epoch` in batch order, `[n_docs]`."""
        if self._order is None or self._order_epoch != epoch:
            self._order = (sortish_order(self.lengths, self.batch_size,
                                         np.random.default_rng([self.seed, epoch]))
                           if self.shuffle else sorted_order(self.lengths))
            self._order_epoch = epoch
        return self._order

    def num_batches(self, epoch: int | None = None) -> int:
        """Batches per epoch (the same every epoch; `epoch` is accepted for the protocol)."""
        n = self.corpus.num_docs
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch(self, epoch: int, step: int) -> Batch:
        """Batch `step` of `epoch`, this host's rows (see module doc for the keys)."""
        members = self.order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]
        docs = [self._tokens(i) for i in members]
        width = max(len(d) for d in docs)
        n_fill = self.batch_size - len(members) if self.pad_last_batch else 0
        indices = np.concatenate([members, np.full(n_fill, -1)]).astype(np.int64)
        docs += [np.zeros(0, np.int32)] * n_fill
        rows = slice(self.first_row, self.first_row + self.local_rows)
        batch = {"ids": pad_chunks(docs[rows], self.pad_id, self.bptt, self.pad_first, width),
                 "lengths": np.array([len(d) for d in docs[rows]], dtype=np.int32),
                 "indices": indices[rows]}
        if self.corpus.labels is not None:
            labels = np.asarray(self.corpus.labels)[members]
            fill = np.full((n_fill, *labels.shape[1:]), -1)  # multi-label: [batch, n_classes]
            batch["labels"] = np.concatenate([labels, fill]).astype(np.int32)[rows]
        return batch

    def _tokens(self, i: int) -> np.ndarray:
        doc = self.corpus.doc(int(i))
        if self.max_tokens is not None and len(doc) > self.max_tokens:
            doc = doc[-self.max_tokens:] if self.keep == "last" else doc[:self.max_tokens]
        return doc


def _check_args(corpus: TokenizedCorpus, batch_size: int, max_tokens: int | None, keep: str,
                process_index: int, process_count: int, full_batches: bool) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if corpus.num_docs < 1:
        raise ValueError("the corpus has no documents")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    if keep not in ("last", "first"):
        raise ValueError(f"keep must be 'last' or 'first', got {keep!r}")
    if not 0 <= process_index < process_count or batch_size % process_count:
        raise ValueError(f"process_index {process_index} / process_count {process_count} "
                         f"do not split batch_size {batch_size} into equal blocks")
    if process_count > 1 and corpus.num_docs % batch_size and not full_batches:
        raise ValueError("with several hosts the last partial batch cannot be split evenly: "
                         "set drop_last=True or pad_last_batch=True")
