"""aclImdb-style folders: one text file per document, one sub-folder per class.

```
path/train/pos/*.txt  path/train/neg/*.txt  path/train/unsup/*.txt   (unlabelled, for the LM)
path/test/pos/*.txt   path/test/neg/*.txt
```
`imdb_folder(path)` gives train = `train/<class>/`, valid = `test/<class>/` (as fastai's IMDb
notebooks do), unsup = `train/unsup/` when present. Classes are the sub-folders of `train/`
other than the unsup one; a validation class folder unknown to train is an error. With
`valid=None` the validation split is a stratified fraction of train instead. Files are read
in sorted order; a file's text is its whole content.
"""

from __future__ import annotations

import os
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
    check_policies,
    decode,
    make_document,
    sort_labels,
)


def _folder(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_dir():
        raise DataError(f"{path}: folder not found")
    return path


def _text_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".txt" and p.is_file())


class _FolderRecords:
    """Records of `<split>/<class>/*.txt` for the given classes (label None when unlabelled)."""

    def __init__(self, split_dir: Path, classes: list[str], labelled: bool, encoding: str,
                 errors: DecodeErrors, empty: EmptyPolicy):
        self.split_dir, self.classes, self.labelled = split_dir, classes, labelled
        self.encoding, self.errors, self.empty = encoding, errors, empty

    def __call__(self) -> Iterator[Record]:
        for name in self.classes:
            for path in _text_files(_folder(self.split_dir, name)):
                text = decode(path.read_bytes(), str(path), self.encoding, self.errors)
                yield str(path), make_document(str(path), [text],
                                               name if self.labelled else None, self.empty)


def _classes(split_dir: Path, unsup: str | None) -> list[str]:
    names = [p.name for p in split_dir.iterdir() if p.is_dir() and p.name != unsup]
    if not names:
        raise DataError(f"{split_dir}: no class sub-folders")
    return sort_labels(names)


def imdb_folder(path: str | os.PathLike, *, train: str = "train", valid: str | None = "test",
                unsup: str | None = "unsup", valid_fraction: float = 0.2, seed: int = 42,
                dedupe: bool = False, encoding: str = "utf-8", errors: DecodeErrors = "strict",
                empty: EmptyPolicy = "skip") -> TextDataset:
    """A dataset from an aclImdb-style folder (see the module docstring)."""
    check_policies(empty, errors)
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    train_dir = _folder(root, train)
    classes = _classes(train_dir, unsup)
    opts = ReadOptions(encoding=encoding, errors=errors, empty=empty)
    train_records = _FolderRecords(train_dir, classes, True, **opts)
    valid_records = None
    if valid is not None:
        valid_dir = _folder(root, valid)
        unknown = set(_classes(valid_dir, unsup)) - set(classes)
        if unknown:
            raise DataError(f"{valid_dir / sorted(unknown)[0]}: unknown label folder; "
                            f"the classes of {train_dir} are {classes}")
        valid_records = _FolderRecords(valid_dir, _classes(valid_dir, unsup), True, **opts)
    unsup_records = None
    if unsup is not None and (train_dir / unsup).is_dir():
        unsup_records = _FolderRecords(train_dir, [unsup], False, **opts)
    # Content digests (taken by the scan) make the fingerprint; paths and mtimes stay out so
    # a copied corpus keeps its cache.
    settings = {"folders": [train, valid, unsup],
                "split": None if valid else [valid_fraction, seed],
                "dedupe": dedupe, **opts}
    return build_dataset(f"folder:{root.name}", train_records,
                         SplitPlan(valid_records, valid_fraction, seed), settings=settings,
                         labelled=True, labels=classes, unsup=unsup_records, dedupe=dedupe)
