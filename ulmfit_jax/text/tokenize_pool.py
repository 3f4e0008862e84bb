"""Tokenizing a stream of text chunks in worker processes, in order, with bounded memory.

Tokenizing is the slow part of a text pipeline (spaCy runs at a few thousand documents per
second per core). Each worker turns a chunk of texts into its distinct tokens in order of
first appearance plus local ids and document lengths (a small pickled reply that leaves the
parent only O(distinct tokens) dictionary work); the parent keeps at most `max_in_flight`
chunks submitted, so memory stays flat however big the corpus is.
"""

from __future__ import annotations

import collections
import multiprocessing
import signal
from collections.abc import Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol

import numpy as np

EncodedChunk = tuple[list[str], np.ndarray, np.ndarray]
"""(distinct tokens in first-appearance order, int32 local ids `[n_tokens]`, int64 document
lengths `[n_docs]`)."""


class FingerprintedTokenizer(Protocol):
    """Any tokenizer the token cache can use: texts -> token lists, plus a fingerprint that
    changes whenever its output could (the cache key). `FastaiTokenizer` and
    `SentencePieceTokenizer` are two; a user's own tokenizer is welcome."""

    def tokenize(self, texts: list[str]) -> list[list[str]]: ...

    def fingerprint(self) -> str: ...


def encode_chunk(tokenizer: FingerprintedTokenizer, texts: list[str]) -> EncodedChunk:
    """Tokenizes a chunk into (local itos in first-appearance order, local ids, doc lengths)."""
    docs = tokenizer.tokenize(texts)
    if len(docs) != len(texts):
        raise ValueError(f"tokenizer returned {len(docs)} documents for {len(texts)} texts")
    local: dict[str, int] = {}
    flat = [local.setdefault(tok, len(local)) for doc in docs for tok in doc]
    lengths = np.array([len(doc) for doc in docs], dtype=np.int64)
    return list(local), np.asarray(flat, dtype=np.int32), lengths


def encoded_chunks(chunks: Iterator[list[str]], tokenizer: FingerprintedTokenizer,
                   workers: int, max_in_flight: int, mp_context: str
                   ) -> Generator[tuple[int, EncodedChunk], None, None]:
    """(n_docs, encoded chunk) in corpus order, tokenized by `workers` processes (0: here).
    Close it (`contextlib.closing`) to stop the workers when its consumer stops early.

    `Pool.imap` would read the whole input ahead in its feeder thread; submitting one chunk
    at a time and waiting whenever `max_in_flight` chunks are pending bounds memory.
    """
    if workers == 0:
        for texts in chunks:
            yield len(texts), encode_chunk(tokenizer, texts)
        return
    ctx = multiprocessing.get_context(mp_context)
    # ProcessPoolExecutor (not Pool) because a worker killed by the OOM killer then raises
    # BrokenProcessPool instead of hanging the build forever.
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(tokenizer,))
    try:
        pending: collections.deque = collections.deque()
        for texts in chunks:
            pending.append((len(texts), pool.submit(_encode_chunk_in_worker, texts)))
            if len(pending) >= max_in_flight:
                n, future = pending.popleft()
                yield n, future.result()
        while pending:
            n, future = pending.popleft()
            yield n, future.result()
    finally:
        # On error or Ctrl-C, drop queued chunks; the few already handed to workers finish
        # (workers ignore SIGINT, see `_init_worker`), then the workers exit.
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- worker side

_WORKER_TOKENIZER: FingerprintedTokenizer | None = None


def _init_worker(tokenizer: FingerprintedTokenizer) -> None:
    # A terminal's Ctrl-C reaches the whole process group. A worker that took it as a
    # KeyboardInterrupt could die between acquiring the task queue's lock and the `with` that
    # releases it, and its siblings would then wait on that lock forever, hanging the parent's
    # shutdown. So only the parent handles SIGINT: it cancels the queued chunks and waits for
    # the running ones.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _encode_chunk_in_worker(texts: list[str]) -> EncodedChunk:
    assert _WORKER_TOKENIZER is not None, "worker started without a tokenizer"
    return encode_chunk(_WORKER_TOKENIZER, texts)
