"""`TokenizedCorpus`: documents as token ids, the form every batcher reads.

All documents' ids sit in one flat int32 array with int64 document offsets, so a corpus of
any size is two arrays (memory-mapped when they come from the token cache) rather than a
list of Python lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
    """Documents as one flat id array plus offsets (all memory-mapped where they come from disk).

    ids: int32 `[n_tokens]`; offsets: int64 `[n_docs + 1]`; labels: int64 `[n_docs]`
    (multi-label: multi-hot `[n_docs, n_classes]`) or None.
    """

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be 1-D, start at 0 and have n_docs + 1 entries")
        if self.offsets[-1] != len(self.ids):
            raise ValueError(f"offsets end at {self.offsets[-1]} but ids has {len(self.ids)}")
        if self.labels is not None and len(self.labels) != self.num_docs:
            raise ValueError(f"{len(self.labels)} labels for {self.num_docs} documents")

    @classmethod
    def from_lists(cls, docs: Sequence[Sequence[int]],
                   labels: Sequence[int] | None = None) -> TokenizedCorpus:
        """Builds an in-memory corpus from a list of id lists (tests, small data)."""
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = [i for d in docs for i in d]
        ids = np.asarray(flat, dtype=np.int32).reshape(-1)
        lab = None if labels is None else np.asarray(labels, dtype=np.int64)
        return cls(ids, offsets, lab)

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document, int64 `[n_docs]`."""
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        """Ids of document `i`, `[length]`."""
        return np.asarray(self.ids[self.offsets[i]:self.offsets[i + 1]])

    def reversed(self) -> TokenizedCorpus:
        """Each document's tokens reversed (the backward model's view), in memory."""
        ids = np.asarray(self.ids).copy()
        for d in range(self.num_docs):
            a, b = self.offsets[d], self.offsets[d + 1]
            ids[a:b] = ids[a:b][::-1]
        return TokenizedCorpus(ids, np.asarray(self.offsets), self.labels)
