"""What the token cache reads from a source: each item's text and label, a fingerprint of the
whole source, texts in chunks for the tokenizer workers and the labels as one array.

A source item is a str, a `(text, label)` pair, a `{"text": ..., "label": ...}` dict or an
object with `.text` (and optionally `.label`), such as `sources.Document`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np


def split_document(doc: Any) -> tuple[str, int | None]:
    """(text, label) of one source item: a str, a (text, label) pair, a dict or an object
    with `.text` / `.label`."""
    if isinstance(doc, str):
        return doc, None
    if isinstance(doc, dict):
        return doc["text"], doc.get("label")
    if hasattr(doc, "text"):
        return doc.text, getattr(doc, "label", None)
    if isinstance(doc, tuple | list) and len(doc) == 2 and isinstance(doc[0], str):
        return doc[0], doc[1]
    raise TypeError(f"cannot read a document from {type(doc).__name__}: expected str, "
                    "(text, label), {'text': ..., 'label': ...} or an object with .text")


def corpus_fingerprint(source: Iterable[Any]) -> str:
    """The source's own `fingerprint()`, else a hash of every text and label (one pass)."""
    fp = getattr(source, "fingerprint", None)
    if callable(fp):
        return str(fp())
    h = hashlib.sha256()
    for doc in source:
        text, label = split_document(doc)
        h.update(json.dumps([text, label]).encode())
    return "content-" + h.hexdigest()


def text_chunks(source: Iterable[Any], chunk_size: int, labels: list[Any]
                ) -> Iterator[list[str]]:
    """Lists of `chunk_size` texts; labels are appended to `labels` as a side effect."""
    chunk: list[str] = []
    for doc in source:
        text, label = split_document(doc)
        if not isinstance(text, str):
            raise TypeError(f"document {len(labels)}: text is {type(text).__name__}, not str")
        labels.append(label)
        chunk.append(text)
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def labels_array(labels: list[Any]) -> np.ndarray | None:
    """int64 `[n_docs]` labels, None when no document has one; mixed presence is an error."""
    missing = [i for i, lab in enumerate(labels) if lab is None]
    if len(missing) == len(labels):
        return None
    if missing:
        raise ValueError(f"documents {missing[:5]} have no label while others do")
    if all(isinstance(lab, tuple | list) for lab in labels):
        # Multi-label: multi-hot rows, int64 [n_docs, n_classes].
        if len({len(lab) for lab in labels}) != 1:
            raise ValueError("multi-hot labels must all have the same length")
        return np.array(labels, dtype=np.int64)
    try:
        return np.array([int(lab) for lab in labels], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"labels must be integer class indices or multi-hot tuples, got "
                         f"{e}") from e
