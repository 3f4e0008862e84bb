"""Pretraining corpora as plain text: WikiText-103 as distributed, or any `.txt` files.

Both are unlabelled (language-model) datasets that stream: a file is read line by line and
only the current document is ever held as a string, so a multi-GB dump never sits in memory.

- `wikitext(path)`: `wiki.train.tokens`, `wiki.valid.tokens` and (when present)
  `wiki.test.tokens`; one article per document, an article starting at a top-level heading
  line ` = Title = ` (sections ` = = Section = = ` stay inside it), as fastai's WT103
  preparation split them. The text is kept as written (heading and newlines included, `<unk>`,
  `@,@`, `@.@` untouched): fastai's own tokenizer rules turn `<unk>` into `xxunk`, ` @.@ `
  into `.` and ` @-@ ` into `-` (`fastai/text/core.py` `fix_html`), which is how fastai's WT103
  vocab was made, so the same rules run on it here.
- `text_files(path)`: a folder of `.txt` files (one document each, sorted by name), or one
  file split into documents at blank lines (a Wikipedia dump in another language).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from pathlib import Path

from .core import (
    DataError,
    DecodeErrors,
    EmptyPolicy,
    ReadOptions,
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

WIKITEXT_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens",
                  "test": "wiki.test.tokens"}
# A top-level heading: exactly one '=' on each side (fastai's `istitle`).
_RE_TITLE = re.compile(r"^ = [^=]* = $")


def _lines(path: Path, encoding: str, errors: DecodeErrors) -> Iterator[tuple[int, str]]:
    """`(line number, decoded line)` of a file, one line in memory at a time."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            yield line_no, decode(raw, str(path), encoding, errors, first_line=line_no)


def _trailing_blank(lines: list[str]) -> int:
    n = 0
    while n < len(lines) and not lines[-1 - n].strip():
        n += 1
    return n


class _Paragraphs:
    """Records of one file split into documents, streamed (picklable, re-iterable).

    kind "wikitext": a top-level heading starts a document (blank lines before it join it);
    kind "blank_lines": a blank line ends a document (and is not part of it)."""

    def __init__(self, path: Path, kind: str, encoding: str, errors: DecodeErrors,
                 empty: EmptyPolicy):
        self.path, self.kind = path, kind
        self.encoding, self.errors, self.empty = encoding, errors, empty

    def _starts(self, line: str, lines: list[str]) -> bool:
        return (self.kind == "wikitext" and bool(_RE_TITLE.match(line.rstrip("\r\n")))
                and any(seen.strip() for seen in lines))

    def _ends(self, line: str) -> bool:
        return self.kind == "blank_lines" and not line.strip()

    def __call__(self) -> Iterator[Record]:
        lines: list[str] = []
        first = 1
        for line_no, line in _lines(self.path, self.encoding, self.errors):
            if lines and self._ends(line):
                yield self._record(first, lines)
                lines = []
            elif lines and self._starts(line, lines):
                # The blank lines before a heading open the next article, as in fastai.
                n_blank = _trailing_blank(lines)
                yield self._record(first, lines[:len(lines) - n_blank])
                lines = lines[len(lines) - n_blank:]
                first = line_no - n_blank
            if not lines:
                first = line_no
            if not self._ends(line):
                lines.append(line)
        if lines:
            yield self._record(first, lines)

    def _record(self, first: int, lines: list[str]) -> Record:
        where = f"{self.path}:{first}"
        return where, make_document(where, ["".join(lines)], None, self.empty)

    def settings(self) -> dict:
        return {"kind": self.kind, "encoding": self.encoding, "errors": self.errors,
                "empty": self.empty}


class _FileRecords:
    """Records of a folder's `.txt` files, one document each, in name order."""

    def __init__(self, files: list[Path], encoding: str, errors: DecodeErrors,
                 empty: EmptyPolicy):
        self.files, self.encoding, self.errors, self.empty = files, encoding, errors, empty

    def __call__(self) -> Iterator[Record]:
        for path in self.files:
            text = decode(path.read_bytes(), str(path), self.encoding, self.errors)
            yield str(path), make_document(str(path), [text], None, self.empty)


def wikitext(path: str | os.PathLike, *, encoding: str = "utf-8",
             errors: DecodeErrors = "strict", empty: EmptyPolicy = "skip") -> TextDataset:
    """WikiText-103 (or -2) from its folder: train, valid and, as `test`, wiki.test.tokens.

    The test articles are the dataset's `test` split, never trained on.
    """
    check_policies(empty, errors)
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (expected the WikiText folder holding "
                        f"{', '.join(WIKITEXT_FILES.values())})")
    opts = ReadOptions(encoding=encoding, errors=errors, empty=empty)
    files = {split: check_file(root / name) for split, name in WIKITEXT_FILES.items()
             if split != "test" or (root / name).exists()}
    records = {split: _Paragraphs(p, "wikitext", **opts) for split, p in files.items()}
    settings = {"files": list(files), **records["train"].settings()}
    dataset = build_dataset(f"wikitext:{root.name}", records["train"],
                            SplitPlan(records["valid"]), settings=settings, labelled=False,
                            stats=[file_stat(p) for p in files.values()])
    if "test" not in records:
        return dataset
    test = build_dataset(f"wikitext:{root.name} test", records["test"],
                         SplitPlan(valid_fraction=0.0), settings=settings, labelled=False,
                         stats=[file_stat(files["test"])])
    return dataclasses.replace(dataset, test=test.train)


def _text_records(path: Path, opts: ReadOptions) -> tuple[_FileRecords | _Paragraphs, list[Path]]:
    """Records of a folder of `.txt` files or of one file split at blank lines, and the files."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise DataError(f"{path}: no .txt files in this folder")
        return _FileRecords(files, **opts), files
    path = check_file(path)
    return _Paragraphs(path, "blank_lines", **opts), [path]


def text_files(path: str | os.PathLike, valid_path: str | os.PathLike | None = None, *,
               valid_fraction: float = 0.1, seed: int = 42, encoding: str = "utf-8",
               errors: DecodeErrors = "strict", empty: EmptyPolicy = "skip") -> TextDataset:
    """Plain text: a folder of `.txt` files (one document each) or one file whose documents
    are separated by blank lines. `valid_path` (the same kinds) is the validation split;
    without it, a seeded `valid_fraction` of the documents is (see `stratified_valid_mask`).
    """
    check_policies(empty, errors)
    opts = ReadOptions(encoding=encoding, errors=errors, empty=empty)
    train, files = _text_records(Path(path), opts)
    valid = None
    if valid_path is not None:
        valid, valid_files = _text_records(Path(valid_path), opts)
        files = files + valid_files
    # Content digests make the fingerprint; paths and mtimes stay out so a copied corpus
    # keeps its cache.
    settings = {"kind": type(train).__name__, "valid": type(valid).__name__,
                "split": None if valid else [valid_fraction, seed], **opts}
    return build_dataset(f"text:{Path(path).name}", train,
                         SplitPlan(valid, valid_fraction, seed), settings=settings,
                         labelled=False, stats=[file_stat(p) for p in files])
