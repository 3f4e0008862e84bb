"""The shared part of every source: documents, splits, the scan that validates and splits, errors.

A source is a *record factory*: a zero-argument callable that opens the underlying data and
yields `(where, document)` pairs, `where` being a human-readable location ("path:line") used in
error messages and `document` being None for a record that the empty-document policy skipped.
`build_dataset` scans each factory once (validating labels, counting, hashing, deduplicating,
splitting) and returns a `TextDataset` whose splits re-run the factory on every iteration, so
a corpus never has to fit in RAM as Python strings; only a few bytes per record are kept
(a 16-byte text digest, a label code and two masks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np

from ulmfit_jax.errors import ConfigError, DataError

logger = logging.getLogger("ulmfit_jax.text.sources")

Label = str | tuple[str, ...] | None
"""A single-label class name, a tuple of class names (multi-label), or None (unlabelled)."""

Record = tuple[str, "Document | None"]
RecordFactory = Callable[[], Iterator[Record]]
EmptyPolicy = Literal["skip", "error"]
DecodeErrors = Literal["strict", "replace"]


class ReadOptions(TypedDict):
    """How a source's files are decoded and what an empty document does."""

    encoding: str
    errors: DecodeErrors
    empty: EmptyPolicy


FIELD_MARK = "xxfld"


@dataclass(frozen=True)
class Document:
    """One document: its text and its label (see `Label`)."""

    text: str
    label: Label = None


def check_policies(empty: str, errors: str) -> None:
    """Reject unknown `empty` / `errors` policy names early, before any file is read."""
    if empty not in ("skip", "error"):
        raise ConfigError(f"empty must be 'skip' or 'error', got {empty!r}")
    if errors not in ("strict", "replace"):
        raise ConfigError(f"errors must be 'strict' or 'replace', got {errors!r}")


def check_file(path: str | os.PathLike) -> Path:
    """`path` as a Path, or a DataError when it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "not found"
        raise DataError(f"{path}: {what}")
    return path


def decode(raw: bytes, where: str, encoding: str, errors: DecodeErrors, first_line: int = 1) -> str:
    """`raw` decoded; a strict failure names `where` and the line of the bad byte."""
    try:
        return raw.decode(encoding, errors="strict" if errors == "strict" else "replace")
    except UnicodeDecodeError as e:
        line = first_line + raw.count(b"\n", 0, e.start)
        raise DataError(
            f"{where}:{line}: cannot decode byte {raw[e.start:e.start + 1]!r} as {encoding} "
            f"({e.reason}); pass errors='replace' to replace undecodable bytes"
        ) from None


def join_fields(fields: Sequence[str], mark_fields: bool | None = None) -> str:
    """Several text fields as one text, exactly as fastai's `_join_texts` does.

    With `mark_fields` (default: when there is more than one field) the result is
    `xxfld 1 <f1> xxfld 2 <f2> ...`; otherwise the fields are joined with single spaces.
    """
    if mark_fields is None:
        mark_fields = len(fields) > 1
    if not mark_fields:
        return " ".join(fields)
    return " ".join(f"{FIELD_MARK} {i} {f}" for i, f in enumerate(fields, 1))


def make_document(where: str, fields: Sequence[str], label: Label, empty: EmptyPolicy,
                  mark_fields: bool | None = None) -> Document | None:
    """A Document from text fields, or None for an empty one under `empty="skip"`."""
    if not any(f.strip() for f in fields):
        if empty == "error":
            raise DataError(f"{where}: empty document (pass empty='skip' to skip such documents)")
        return None
    return Document(join_fields(fields, mark_fields), label)


def sort_labels(names: Iterable[str]) -> list[str]:
    """Class names in canonical order: numerically when all are integers, else as strings.

    Numeric order matches fastai, whose CategoryMap sorts the values pandas read, which are
    ints for the LeCun CSVs' "1", "2", ..., "14" (string order would put "10" before "2" and
    break the class order of a fastai classifier head).
    """
    names = set(names)
    if names and all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def label_names(label: Label) -> tuple[str, ...]:
    """The class names a label mentions."""
    if label is None:
        return ()
    return (label,) if isinstance(label, str) else tuple(label)


def file_stat(path: Path) -> tuple[str, int, int]:
    """(path, size, mtime_ns): what a split re-checks before it re-reads a file."""
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _hash_json(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class DocStream:
    """One split: a re-iterable stream of `Document`s (each iteration re-reads the source).

    `len()` is the number of documents; `fingerprint()` changes whenever any text or label
    of the split, its order, or the settings that produced it change.
    """

    def __init__(self, name: str, records: RecordFactory, mask: np.ndarray, fingerprint: str,
                 labels: Sequence[str] = (), stats: Sequence[tuple[str, int, int]] = ()):
        self.name = name
        self._records = records
        self._mask = mask
        self._fingerprint = fingerprint
        self._label_index = {name: i for i, name in enumerate(labels)}
        self._stats = tuple(stats)

    def __len__(self) -> int:
        return int(self._mask.sum())

    def __iter__(self) -> Iterator[Document]:
        self._check_unchanged()
        n = -1
        for n, (where, doc) in enumerate(self._records()):
            if n >= len(self._mask):
                raise DataError(f"{where}: {self.name} has more records than when it was scanned")
            if self._mask[n]:
                if doc is None:  # it parsed when scanned
                    raise DataError(f"{where}: {self.name} record changed since it was scanned")
                yield doc
        if n + 1 != len(self._mask):
            raise DataError(f"{self.name}: {n + 1} records, {len(self._mask)} when scanned")

    def _check_unchanged(self) -> None:
        for path, size, mtime in self._stats:
            if file_stat(Path(path)) != (path, size, mtime):
                raise DataError(f"{path}: file changed since it was scanned; "
                                "build the dataset again")

    def fingerprint(self) -> str:
        """Stable content-and-settings hash of this split (a cache key)."""
        return self._fingerprint

    def texts(self) -> Iterator[str]:
        """The texts only."""
        return (doc.text for doc in self)

    def label_id(self, label: Label) -> int | list[int] | None:
        """Class index of a single label (a sorted list of indices for a multi-label)."""
        if label is None:
            return None
        if isinstance(label, str):
            return self._label_index[label]
        return sorted(self._label_index[n] for n in label)

    def label_target(self, label: Label) -> int | tuple[int, ...] | None:
        """What a classifier learns: the class index, or for a multi-label the multi-hot
        tuple over all classes (1 for each class the document has)."""
        if label is None:
            return None
        if isinstance(label, str):
            return self._label_index[label]
        hot = [0] * len(self._label_index)
        for name in label:
            hot[self._label_index[name]] = 1
        return tuple(hot)

    def as_pairs(self) -> _PairStream:
        """The split as re-iterable `(text, label target)` pairs (`label_target`), the form
        token_cache takes."""
        return _PairStream(self)


class _PairStream:
    """`(text, label index)` view of a DocStream; same length and fingerprint."""

    def __init__(self, docs: DocStream):
        self._docs = docs

    def __len__(self) -> int:
        return len(self._docs)

    def __iter__(self) -> Iterator[tuple[str, int | tuple[int, ...] | None]]:
        return ((d.text, self._docs.label_target(d.label)) for d in self._docs)

    def fingerprint(self) -> str:
        return "targets-" + self._docs.fingerprint()


@dataclass(frozen=True)
class TextDataset:
    """A corpus split into `train` and `valid` (and optional unlabelled `unsup`, and `test`)
    streams.

    `labels` are the sorted class names (`sort_labels`); empty for an unlabelled corpus.
    Class index `i` means `labels[i]`.
    """

    name: str
    train: DocStream
    valid: DocStream
    labels: list[str]
    unsup: DocStream | None = None
    multi_label: bool = False
    settings: dict = field(default_factory=dict, compare=False)
    test: DocStream | None = None  # a held-out split no stage trains on (WikiText's test)

    def fingerprint(self) -> str:
        """Stable hash of every split's content plus the settings (a cache key)."""
        parts = [s.fingerprint() if s is not None else None
                 for s in (self.train, self.valid, self.unsup)]
        if self.test is not None:
            parts.append(self.test.fingerprint())
        return _hash_json([self.name, parts, self.labels, self.multi_label])

    def lm_texts(self) -> Iterator[str]:
        """Every text of train, valid and unsup, for language-model fine-tuning.

        As in ULMFiT/fastai the LM sees the classifier's validation texts too (never labels).
        """
        for split in (self.train, self.valid, self.unsup):
            if split is not None:
                yield from split.texts()


class _LabelCodes:
    """Small int codes for labels (single or tuple), shared by the scans of one dataset."""

    def __init__(self):
        self.codes: dict[Label, int] = {}

    def code(self, label: Label) -> int:
        return self.codes.setdefault(label, len(self.codes))

    def names(self) -> set[str]:
        return {n for label in self.codes for n in label_names(label)}


@dataclass
class _Scan:
    """What one pass over a record factory leaves behind: a few bytes per record."""

    keep: np.ndarray      # bool [n]: a document that goes into some split
    codes: np.ndarray     # int32 [n]: label code (-1 for skipped records)
    digests: np.ndarray   # uint8 [n, 16]: blake2b of the text


def _check_label(where: str, doc: Document, labelled: bool,
                 allowed: set[str] | None) -> None:
    if not labelled:
        return
    if doc.label is None or doc.label == "":
        raise DataError(f"{where}: missing label")
    if allowed is not None:
        unknown = [n for n in label_names(doc.label) if n not in allowed]
        if unknown:
            raise DataError(f"{where}: unknown label {unknown[0]!r}; known labels: "
                            f"{sort_labels(allowed)}")


def scan(name: str, records: RecordFactory, table: _LabelCodes, *, labelled: bool,
         allowed: set[str] | None = None, dedupe: bool = False) -> _Scan:
    """Validate every record once, and mark which ones to keep.

    Dedupe keeps the first copy of each text; a text whose copies carry different labels
    is dropped entirely (no copy can be trusted). Skips and drops are logged.
    """
    keep, codes, digests = [], [], bytearray()
    first_copy: dict[bytes, int] = {}
    n_empty = n_dup = 0
    conflicted: set[int] = set()
    for i, (where, doc) in enumerate(records()):
        if doc is None:
            n_empty += 1
            keep.append(False)
            codes.append(-1)
            digests += bytes(16)
            continue
        _check_label(where, doc, labelled, allowed)
        digest = hashlib.blake2b(doc.text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        code = table.code(doc.label if labelled else None)
        is_new = True
        if dedupe:
            j = first_copy.setdefault(digest, i)
            is_new = j == i
            if not is_new:
                n_dup += 1
                if codes[j] != code:
                    conflicted.add(j)
        keep.append(is_new)
        codes.append(code)
        digests += digest
    result = _Scan(np.array(keep, dtype=bool), np.array(codes, dtype=np.int32),
                   np.frombuffer(bytes(digests), dtype=np.uint8).reshape(-1, 16))
    result.keep[list(conflicted)] = False
    _log_scan(name, n_empty, n_dup, len(conflicted))
    return result


def _log_scan(name: str, n_empty: int, n_dup: int, n_conflicted: int) -> None:
    if n_empty:
        logger.warning("%s: skipped %d empty documents", name, n_empty)
    if n_dup:
        logger.info("%s: dropped %d duplicate copies (first copy kept)", name, n_dup)
    if n_conflicted:
        logger.warning("%s: dropped %d texts whose copies had conflicting labels",
                       name, n_conflicted)


def stratified_valid_mask(s: _Scan, valid_fraction: float, seed: int) -> np.ndarray:
    """Mark round(valid_fraction * n_c) kept records of each label c as validation.

    Records are ranked by a seeded hash of their text, not by position or numpy's RNG, so the
    split is the same on every platform and numpy version, survives reordering of the
    source, and puts identical texts (when not deduplicated) into the same split.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ConfigError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    key = seed.to_bytes(16, "little", signed=True)
    ranks = np.array([int.from_bytes(hashlib.blake2b(d.tobytes(), digest_size=8, key=key)
                                     .digest(), "little") for d in s.digests], dtype=np.uint64)
    valid = np.zeros(len(s.keep), dtype=bool)
    for code in np.unique(s.codes[s.keep]):
        idx = np.flatnonzero(s.keep & (s.codes == code))
        n_valid = math.floor(valid_fraction * len(idx) + 0.5)
        order = idx[np.lexsort((idx, ranks[idx]))]
        valid[order[:n_valid]] = True
    return valid


def _split_fingerprint(base: str, s: _Scan, mask: np.ndarray, table: _LabelCodes) -> str:
    h = hashlib.sha256(base.encode())
    h.update(s.digests[mask].tobytes())
    h.update(s.codes[mask].astype("<i4").tobytes())
    h.update(json.dumps([[n if isinstance(n, str | None) else list(n), c]
                         for n, c in table.codes.items()]).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class SplitPlan:
    """How to split: a separate `valid` factory, else a stratified `valid_fraction` of train."""

    valid: RecordFactory | None = None
    valid_fraction: float = 0.2
    seed: int = 42


def build_dataset(name: str, train: RecordFactory, plan: SplitPlan, *, settings: dict,
                  labelled: bool, labels: Sequence[str] | None = None,
                  unsup: RecordFactory | None = None, dedupe: bool = False,
                  multi_label: bool = False,
                  stats: Sequence[tuple[str, int, int]] = ()) -> TextDataset:
    """Scan, validate and split the records into a `TextDataset`.

    `labels` declares the classes (any other label is an error, with file and line);
    otherwise they are the labels met in train, and validation labels must be among them.
    `stats` are the files whose size/mtime every iteration re-checks.
    """
    table = _LabelCodes()
    declared = set(labels) if labels is not None else None
    base = _hash_json([name, settings])
    tr = scan(f"{name} train", train, table, labelled=labelled, allowed=declared, dedupe=dedupe)
    known = declared if declared is not None else table.names()
    if plan.valid is None:
        valid_mask = stratified_valid_mask(tr, plan.valid_fraction, plan.seed)
        va, va_records, train_mask = tr, train, tr.keep & ~valid_mask
    else:
        va = scan(f"{name} valid", plan.valid, table, labelled=labelled, allowed=known,
                  dedupe=dedupe)
        valid_mask, va_records, train_mask = va.keep, plan.valid, tr.keep
    names = sort_labels(known) if labelled else []

    def stream(split: str, records: RecordFactory, s: _Scan, mask: np.ndarray,
               codes: _LabelCodes = table) -> DocStream:
        fp = _split_fingerprint(base + split, s, mask, codes)
        return DocStream(f"{name} {split}", records, mask, fp, names, stats)

    unsup_stream = None
    if unsup is not None:
        unsup_codes = _LabelCodes()
        un = scan(f"{name} unsup", unsup, unsup_codes, labelled=False, dedupe=dedupe)
        unsup_stream = stream("unsup", unsup, un, un.keep, unsup_codes)
    return TextDataset(name, stream("train", train, tr, train_mask),
                       stream("valid", va_records, va, valid_mask), names, unsup_stream,
                       multi_label, settings)
