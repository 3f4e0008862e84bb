"""CSV corpora in the fastai / LeCun layout: label column(s), then text field(s), no header.

`csv_dataset("ag_news_csv/train.csv", "ag_news_csv/test.csv")` reads AG News as distributed:
label in column 0, title and description in columns 1-2, joined as fastai does
(`xxfld 1 <title> xxfld 2 <description>`). Columns may be given by index, or by name with
`header=True`. Several label columns (or `label_delim`) make a multi-label task whose labels
are the tuple of the non-empty values. `label_cols=()` reads an unlabelled (LM) corpus.
Bytes are decoded line by line, so errors name the line (the encoding must be ASCII-compatible:
UTF-8, Latin-1, ...). Blank lines are skipped, as pandas does.
"""

from __future__ import annotations

import csv
import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .core import (
    DataError,
    DecodeErrors,
    EmptyPolicy,
    Label,
    Record,
    SplitPlan,
    TextDataset,
    build_dataset,
    check_file,
    check_policies,
    decode,
    file_stat,
    make_document,
)

Column = int | str

# LeCun's Yelp/Amazon reviews exceed csv's default 128 KiB field limit.
if csv.field_size_limit() < 2**30:
    csv.field_size_limit(2**30)


def _decoded_lines(path: Path, encoding: str, errors: DecodeErrors) -> Iterator[str]:
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            yield decode(raw, str(path), encoding, errors, first_line=line_no)


def read_csv_rows(path: str | os.PathLike, *, encoding: str = "utf-8",
                  errors: DecodeErrors = "strict", delimiter: str = ",",
                  ) -> Iterator[tuple[int, list[str]]]:
    """`(line number, fields)` of every non-blank row; ragged rows are a DataError.

    The width is set by the first row (the header, when there is one). Line numbers are
    those of the row's first physical line (quoted fields may span lines).
    """
    path = check_file(path)
    reader = csv.reader(_decoded_lines(path, encoding, errors), delimiter=delimiter, strict=True)
    width, line = None, 1
    try:
        for row in reader:
            start, line = line, reader.line_num + 1
            if not row:
                continue
            width = width or len(row)
            if len(row) != width:
                raise DataError(f"{path}:{start}: expected {width} fields, got {len(row)}")
            yield start, row
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def _resolve(path: Path, cols: Sequence[Column], header: list[str] | None, width: int,
             line: int) -> list[int]:
    out = []
    for c in cols:
        if isinstance(c, str):
            if header is None or c not in header:
                raise DataError(f"{path}:{line}: no column named {c!r} "
                                f"({'header: ' + str(header) if header else 'no header'})")
            c = header.index(c)
        if not -width <= c < width:
            raise DataError(f"{path}:{line}: no column {c} in a row of {width} fields")
        out.append(c % width)
    return out


def _row_label(where: str, values: list[str], multi: bool, delim: str | None) -> Label:
    values = [v.strip() for v in values]
    if not multi:
        if not values[0]:
            raise DataError(f"{where}: missing label")
        return values[0]
    if delim is not None:
        values = [part.strip() for v in values for part in v.split(delim)]
    return tuple(sorted({v for v in values if v}))


class _CsvRecords:
    """Record factory over one CSV file (picklable, re-iterable)."""

    def __init__(self, path: str | os.PathLike, *, label_cols: Sequence[Column],
                 text_cols: Sequence[Column] | None, header: bool, label_delim: str | None,
                 mark_fields: bool | None, encoding: str, errors: DecodeErrors,
                 empty: EmptyPolicy, delimiter: str):
        self.path = check_file(path)
        self.label_cols, self.text_cols = list(label_cols), text_cols
        self.header, self.label_delim, self.mark_fields = header, label_delim, mark_fields
        self.encoding, self.errors, self.empty, self.delimiter = encoding, errors, empty, delimiter
        self.multi = len(self.label_cols) > 1 or label_delim is not None

    def __call__(self) -> Iterator[Record]:
        rows = read_csv_rows(self.path, encoding=self.encoding, errors=self.errors,
                             delimiter=self.delimiter)
        labels_at: list[int] | None = None
        texts_at: list[int] = []  # set with labels_at, from the first row
        names = None
        for line, row in rows:
            if labels_at is None:
                names = row if self.header else None
                labels_at, texts_at = self._columns(names, len(row), line)
                if self.header:
                    continue
            where = f"{self.path}:{line}"
            label = (_row_label(where, [row[i] for i in labels_at], self.multi, self.label_delim)
                     if labels_at else None)
            yield where, make_document(where, [row[i] for i in texts_at], label, self.empty,
                                       self.mark_fields)

    def _columns(self, names: list[str] | None, width: int,
                 line: int) -> tuple[list[int], list[int]]:
        labels_at = _resolve(self.path, self.label_cols, names, width, line)
        if self.text_cols is None:
            texts_at = [i for i in range(width) if i not in labels_at]
        else:
            texts_at = _resolve(self.path, self.text_cols, names, width, line)
        if not texts_at:
            raise DataError(f"{self.path}:{line}: no text column left in a row of {width} fields")
        return labels_at, texts_at

    def settings(self) -> dict:
        # The scan's content digests cover the file's content; its path and mtime stay out of
        # the fingerprint so a copied corpus keeps its cache.
        return {k: v for k, v in vars(self).items() if k != "path"}


def csv_dataset(train_path: str | os.PathLike, valid_path: str | os.PathLike | None = None, *,
                label_cols: Sequence[Column] = (0,), text_cols: Sequence[Column] | None = None,
                header: bool = False, label_delim: str | None = None,
                labels: Sequence[str] | None = None, mark_fields: bool | None = None,
                valid_fraction: float = 0.2, seed: int = 42, dedupe: bool = False,
                encoding: str = "utf-8", errors: DecodeErrors = "strict",
                empty: EmptyPolicy = "skip", delimiter: str = ",") -> TextDataset:
    """A classification (or, with `label_cols=()`, LM) dataset from CSV file(s).

    Without `valid_path`, a stratified `valid_fraction` of train (seeded, see
    `stratified_valid_mask`) is the validation split. `text_cols=None` means every column
    that is not a label column. `labels` declares the class names; any other is an error.
    """
    check_policies(empty, errors)
    records = functools.partial(_CsvRecords, label_cols=label_cols, text_cols=text_cols,
                                header=header, label_delim=label_delim,
                                mark_fields=mark_fields, encoding=encoding, errors=errors,
                                empty=empty, delimiter=delimiter)
    train = records(train_path)
    valid = records(valid_path) if valid_path is not None else None
    files = [train] + ([valid] if valid else [])
    plan = SplitPlan(valid, valid_fraction, seed)
    settings = {"files": [f.settings() for f in files], "dedupe": dedupe,
                "split": None if valid else [valid_fraction, seed], "labels": labels}
    return build_dataset(f"csv:{Path(train_path).name}", train, plan, settings=settings,
                         labelled=bool(label_cols), labels=labels, dedupe=dedupe,
                         multi_label=train.multi, stats=[file_stat(f.path) for f in files])



