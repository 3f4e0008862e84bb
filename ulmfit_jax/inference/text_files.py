"""The prediction CLI's files: texts in (txt, CSV, JSONL, stdin), labelled probabilities out.

- `.txt` (and stdin by default): one text per line;
- `.csv`: a header row, the text in column `text_column`;
- `.jsonl`: one JSON object per line, the text under key `text_column`.
A bad file or row raises `InputError` with one line naming the file, line or column.

Output rows hold the prediction and every class's probability: CSV columns
`label,<class 1>,<class 2>,...`, or JSONL objects `{"label": ..., "probabilities": {...}}`.
A multi-label model predicts a set of classes (each whose probability exceeds its threshold,
possibly none): CSV column `labels` holds their names joined by `|` (`LABEL_SEPARATOR`; empty
for none), JSONL key `labels` a list.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ulmfit_jax.atomic_io import atomic_write
from ulmfit_jax.errors import DataError

FORMATS = ("txt", "csv", "jsonl")
LABEL_SEPARATOR = "|"  # between a multi-label prediction's classes in a CSV cell


class InputError(DataError):
    """A user's mistake in the input or output arguments (reported as one line, exit 2)."""


def file_format(path: str, given: str | None, default: str) -> str:
    """`given`, else the format named by `path`'s extension, else `default` (stdin/stdout)."""
    if given:
        return given
    if path == "-":
        return default
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise InputError(f"{path}: unknown extension; expected one of "
                         + ", ".join(f".{f}" for f in FORMATS))
    return suffix


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text("utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a file") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start})") from None


def read_texts(path: str, fmt: str, text_column: str = "text") -> list[str]:
    """The texts of `path` ('-' for stdin) in format `fmt` (see module doc)."""
    content = _read_text(path)
    name = "<stdin>" if path == "-" else path
    if fmt == "txt":
        return content.splitlines()
    if fmt == "csv":
        return _csv_texts(content, name, text_column)
    return _jsonl_texts(content, name, text_column)


def _csv_texts(content: str, name: str, column: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    if reader.fieldnames is None:
        raise InputError(f"{name}: empty CSV file (a header row is needed)")
    if column not in reader.fieldnames:
        raise InputError(f"{name}: no column {column!r} (columns: {', '.join(reader.fieldnames)});"
                         " choose one with --text_column")
    texts = []
    try:
        for row in reader:
            if row[column] is None:
                raise InputError(f"{name}:{reader.line_num}: the row has no {column!r} field "
                                 f"(fewer than the header's {len(reader.fieldnames)} columns)")
            texts.append(row[column])
    except csv.Error as err:
        raise InputError(f"{name}:{reader.line_num}: bad CSV row ({err})") from None
    return texts


def _jsonl_texts(content: str, name: str, key: str) -> list[str]:
    texts = []
    for line_no, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{name}:{line_no}: not JSON ({err.msg})") from None
        if not isinstance(record, dict) or key not in record:
            raise InputError(f"{name}:{line_no}: no key {key!r} (choose one with --text_column)")
        if not isinstance(record[key], str):
            raise InputError(f"{name}:{line_no}: {key!r} is {type(record[key]).__name__}, "
                             "not a string")
        texts.append(record[key])
    return texts


def format_predictions(probs: np.ndarray, labels: Sequence[str] | Sequence[Sequence[str]],
                       class_names: Sequence[str], fmt: str, multi_label: bool = False) -> str:
    """Rows of prediction and per-class probabilities (`probs` `[n, n_classes]`) as CSV or
    JSONL; `labels` holds a class name per row, or with `multi_label` a list of them (see the
    module doc), as `predicted_labels` gives them."""
    key = "labels" if multi_label else "label"
    if fmt == "jsonl":
        return "".join(json.dumps({key: label if isinstance(label, str) else list(label),
                                   "probabilities": dict(zip(class_names, map(float, row),
                                                             strict=True))},
                                  ensure_ascii=False) + "\n"
                       for label, row in zip(labels, probs, strict=True))
    if multi_label:
        _check_separator(class_names)
    cells = [label if isinstance(label, str) else LABEL_SEPARATOR.join(label)
             for label in labels]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([key, *class_names])
    writer.writerows([cell, *(f"{p:.6f}" for p in row)]
                     for cell, row in zip(cells, probs, strict=True))
    return out.getvalue()


def _check_separator(class_names: Sequence[str]) -> None:
    for name in class_names:
        if LABEL_SEPARATOR in name:
            raise InputError(f"class {name!r} contains {LABEL_SEPARATOR!r}, which separates a "
                             "multi-label prediction's classes in CSV; write JSONL instead "
                             "(--output_format jsonl)")


def write_output(path: str, text: str) -> None:
    """`text` to stdout ('-') or to `path` (written to a temporary file, then renamed)."""
    if path == "-":
        sys.stdout.write(text)
        return
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"{path}: directory {target.parent} does not exist")
    atomic_write(target, text)
