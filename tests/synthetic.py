"""Small synthetic corpora for tests: a separable two-class task written as CSV files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FILLER = [f"word{i}" for i in range(60)]
KEYWORDS = {"pos": ["splendid", "marvelous", "superb"], "neg": ["dreadful", "awful", "horrid"]}


def separable_documents(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (label, text) rows: shared filler words plus two keywords of the document's class."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = list(rng.choice(FILLER, rng.integers(15, 40)))
        for keyword in rng.choice(KEYWORDS[label], 2):
            words.insert(int(rng.integers(0, len(words) + 1)), str(keyword))
        rows.append((label, " ".join(words) + "."))
    return rows


def write_separable_csvs(directory: Path, n_train: int = 300, n_valid: int = 100) -> tuple[Path,
                                                                                             Path]:
    """train.csv and valid.csv (no header; label in column 0, text in column 1)."""
    paths = []
    for name, n, seed in (("train.csv", n_train, 0), ("valid.csv", n_valid, 1)):
        path = directory / name
        with path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(separable_documents(n, seed))
        paths.append(path)
    return paths[0], paths[1]
