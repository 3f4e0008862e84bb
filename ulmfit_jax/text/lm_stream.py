"""Language-model stream batcher: bptt windows over one long, row-contiguous token stream.

Each epoch the documents are put in an order (a permutation drawn from `(seed, epoch)`, or
corpus order without shuffling), optionally each reversed (the backward model), and
concatenated into one stream. As in fastai's `LMDataLoader`, the stream is cut into
`batch_size` rows of `row_len = (n_tokens - 1) // batch_size` inputs each (the `< batch_size`
tokens left over at the end of the stream are not used that epoch), and the rows are walked
together in windows: batch `k` holds, for every row, the `len_k` tokens following batch
`k - 1`'s, so the LSTM state carried from one batch to the next continues the same text.
Targets are the inputs shifted by one token (the last target of a row is the first token of
the next row, as in fastai). With fixed `bptt` the batches equal `LMDataLoader`'s for the same
document order (tested live).

Window lengths: fixed `bptt`, or the 2018 variable rule (`bptt` with p = 0.95 else `bptt / 2`,
then `~ N(that, 5)`, at least 5) rounded to the nearest multiple of `length_step` so that jit
compiles a bounded set of shapes (`possible_lengths()`).

The epoch's final partial window (`last_window`):
- "short" (default, fastai's choice): one shorter window with what is left, so every token of
  the stream is an input exactly once per epoch. With fixed `bptt` its length is the same
  every epoch (one extra shape); with variable lengths it is `row_len mod length_step` plus a
  multiple of `length_step`, so the shapes stay bounded.
- "drop": the leftover (shorter than the window that would have followed) is skipped.

Multi-host data parallelism: all hosts build the same stream from the same seed; host
`process_index` of `process_count` takes the contiguous block of rows
`[process_index * local_rows, (process_index + 1) * local_rows)`. Sharding the batch dim of
those rows over the host's devices keeps every row on one device for the whole epoch.

Iterator state `{"epoch", "step", ...}` is JSON-serialisable; `set_state` resumes exactly,
because each epoch's order and window lengths are recomputed from `(seed, epoch)`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ulmfit_jax.text.resumable import Batch, ResumableBatches
from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus

# The 2018 fastai loader: P(full bptt), standard deviation of the length, minimum length.
FULL_BPTT_PROB = 0.95
LENGTH_STD = 5.0
MIN_LENGTH = 5


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """One epoch's document order and windows (all int64)."""

    order: np.ndarray        # [n_docs] document index at each stream position
    doc_starts: np.ndarray   # [n_docs + 1] stream offset of each ordered document
    windows: np.ndarray      # [n_batches] window lengths
    window_starts: np.ndarray  # [n_batches] offset of each window inside a row


def bucket_lengths(bptt: int, length_step: int) -> tuple[int, ...]:
    """Window lengths a variable-length stream may use: multiples of `length_step` up to
    about `bptt + 3 * LENGTH_STD` (longer draws are clipped)."""
    top = max(length_step, math.ceil((bptt + 3 * LENGTH_STD) / length_step) * length_step)
    bottom = length_step * max(1, round(MIN_LENGTH / length_step))
    return tuple(range(bottom, top + 1, length_step))


def sample_window_length(rng: np.random.Generator, bptt: int, buckets: tuple[int, ...]) -> int:
    """One window length by the 2018 rule, snapped to the nearest bucket."""
    base = bptt if rng.random() < FULL_BPTT_PROB else bptt / 2
    raw = max(MIN_LENGTH, int(rng.normal(base, LENGTH_STD)))
    return buckets[int(np.argmin(np.abs(np.asarray(buckets) - raw)))]


class LMStream(ResumableBatches):
    """Batches `{"inputs", "targets"}` int32 `[local_rows, time]` for LM training/eval."""

    def __init__(self, corpus: TokenizedCorpus, batch_size: int, bptt: int = 72, *,
                 seed: int = 0, shuffle: bool = True, backward: bool = False,
                 variable_length: bool = False, length_step: int = 8,
                 last_window: str = "short", process_index: int = 0,
                 process_count: int = 1) -> None:
        """batch_size: rows over all hosts; each host yields `batch_size // process_count`."""
        _check_args(batch_size, bptt, last_window, length_step, process_index, process_count)
        self.corpus = corpus
        self.batch_size, self.bptt = batch_size, bptt
        self.seed, self.shuffle, self.backward = seed, shuffle, backward
        self.variable_length, self.length_step = variable_length, length_step
        self.last_window = last_window
        self.local_rows = batch_size // process_count
        self.first_row = process_index * self.local_rows
        self.row_len = (len(corpus.ids) - 1) // batch_size
        if self.row_len < 1:
            raise ValueError(f"{len(corpus.ids)} tokens cannot fill {batch_size} rows of at "
                             "least one input and target")
        self.buckets = bucket_lengths(bptt, length_step)
        self.epoch, self.step = 0, 0
        self._plan_epoch = -1
        self._plan: EpochPlan | None = None

    # ---------------------------------------------------------------- state

    def identity(self) -> dict:
        """Seed, batch size and corpus size: a saved state must match them."""
        return {"seed": self.seed, "batch_size": self.batch_size,
                "num_tokens": int(len(self.corpus.ids))}

    # ---------------------------------------------------------------- epochs

    def plan(self, epoch: int) -> EpochPlan:
        """Document order and window lengths of `epoch` (deterministic in `(seed, epoch)`)."""
        if self._plan is None or self._plan_epoch != epoch:
            self._plan = self._make_plan(epoch)
            self._plan_epoch = epoch
        return self._plan

    def _make_plan(self, epoch: int) -> EpochPlan:
        n_docs = self.corpus.num_docs
        order = (np.random.default_rng([self.seed, epoch, 0]).permutation(n_docs)
                 if self.shuffle else np.arange(n_docs))
        doc_starts = np.concatenate([[0], np.cumsum(self.corpus.lengths[order])])
        windows = np.asarray(self._window_lengths(epoch), dtype=np.int64)
        window_starts = np.concatenate([[0], np.cumsum(windows)[:-1]])
        return EpochPlan(order, doc_starts.astype(np.int64), windows, window_starts)

    def _window_lengths(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.seed, epoch, 1])
        lengths, used = [], 0
        while True:
            want = (sample_window_length(rng, self.bptt, self.buckets)
                    if self.variable_length else self.bptt)
            if used + want > self.row_len:
                break
            lengths.append(want)
            used += want
        if self.last_window == "short" and used < self.row_len:
            lengths.append(self.row_len - used)
        return lengths

    def num_batches(self, epoch: int | None = None) -> int:
        """Batches in `epoch` (default: the current one)."""
        return len(self.plan(self.epoch if epoch is None else epoch).windows)

    def possible_lengths(self) -> tuple[int, ...]:
        """Every window length this stream can ever yield (the shapes jit will see)."""
        if not self.variable_length:
            full = [self.bptt] if self.row_len >= self.bptt else []
            rest = self.row_len % self.bptt
            return tuple(sorted(full + ([rest] if rest and self.last_window == "short" else [])))
        lengths = set(self.buckets)
        if self.last_window == "short":
            first = self.row_len % self.length_step
            lengths |= set(range(first or self.length_step, max(self.buckets),
                                 self.length_step))
        return tuple(sorted(n for n in lengths if 0 < n <= self.row_len))

    # ---------------------------------------------------------------- batches

    def batch(self, epoch: int, step: int) -> Batch:
        """Batch `step` of `epoch` for this host: inputs/targets int32 `[local_rows, time]`."""
        plan = self.plan(epoch)
        length = int(plan.windows[step])
        rows = self.first_row + np.arange(self.local_rows)
        positions = (rows[:, None] * self.row_len + plan.window_starts[step]
                     + np.arange(length + 1)[None, :])
        tokens = self._tokens_at(plan, positions)
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

    def _tokens_at(self, plan: EpochPlan, positions: np.ndarray) -> np.ndarray:
        """Tokens at stream `positions` (any shape), gathered from the flat corpus."""
        slot = np.searchsorted(plan.doc_starts, positions, side="right") - 1
        within = positions - plan.doc_starts[slot]
        doc = plan.order[slot]
        offsets = self.corpus.offsets
        flat = offsets[doc + 1] - 1 - within if self.backward else offsets[doc] + within
        return np.asarray(self.corpus.ids[flat.ravel()], dtype=np.int32).reshape(flat.shape)


def _check_args(batch_size: int, bptt: int, last_window: str, length_step: int,
                process_index: int, process_count: int) -> None:
    if batch_size < 1 or bptt < 1 or length_step < 1:
        raise ValueError(f"batch_size, bptt and length_step must be >= 1, got {batch_size}, "
                         f"{bptt}, {length_step}")
    if last_window not in ("short", "drop"):
        raise ValueError(f"last_window must be 'short' or 'drop', got {last_window!r}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by process_count "
                         f"{process_count}")
