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
    return [_keyword_document("pos" if i % 2 == 0 else "neg", rng) for i in range(n)]


def imbalanced_documents(n: int, seed: int) -> list[tuple[str, str]]:
    """As `separable_documents`, but only every 18th row (the first included) is "pos"."""
    rng = np.random.default_rng(seed)
    return [_keyword_document("pos" if i % 18 == 0 else "neg", rng) for i in range(n)]


def _keyword_document(label: str, rng: np.random.Generator) -> tuple[str, str]:
    words = list(rng.choice(FILLER, rng.integers(15, 40)))
    for keyword in rng.choice(KEYWORDS[label], 2):
        words.insert(int(rng.integers(0, len(words) + 1)), str(keyword))
    return label, " ".join(words) + "."


def write_csvs(directory: Path, rows, n_train: int, n_valid: int) -> tuple[Path, Path]:
    """train.csv and valid.csv from `rows(n, seed)` (no header)."""
    paths = []
    for name, n, seed in (("train.csv", n_train, 0), ("valid.csv", n_valid, 1)):
        path = directory / name
        with path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows(n, seed))
        paths.append(path)
    return paths[0], paths[1]


def write_separable_csvs(directory: Path, n_train: int = 300, n_valid: int = 100) -> tuple[Path,
                                                                                             Path]:
    """train.csv and valid.csv (no header; label in column 0, text in column 1)."""
    return write_csvs(directory, separable_documents, n_train, n_valid)


WIKI_WORDS = [f"w{i}" for i in range(40)]


def wikitext_article(title: str, rng: np.random.Generator, n_paragraphs: int = 3) -> str:
    """One article in WikiText-103's layout: heading, sections, tokenized lines, `<unk>`,
    `@,@` and `@.@`. Sentences repeat short word patterns, so a language model can learn them."""
    lines = [" \n", f" = {title} = \n", " \n"]
    for p in range(n_paragraphs):
        if p:
            lines += [" \n", f" = = Section {p} = = \n", " \n"]
        words = []
        for _ in range(int(rng.integers(4, 8))):
            start = int(rng.integers(0, len(WIKI_WORDS) - 4))
            words += WIKI_WORDS[start:start + 4] + ["<unk>", "1", "@,@", "000", "@.@", "5", "."]
        lines.append(" " + " ".join(words) + " \n")
    return "".join(lines)


def write_wikitext(directory: Path, n_train: int = 60, n_valid: int = 10,
                   n_test: int = 10) -> Path:
    """A WikiText-format folder (`wiki.{train,valid,test}.tokens`) of synthetic articles."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        articles = [wikitext_article(f"{split.title()} article {i}", rng) for i in range(n)]
        (directory / f"wiki.{split}.tokens").write_text("".join(articles), encoding="utf-8")
    return directory


TOPICS = {"sports": ["goal", "referee", "stadium"], "music": ["guitar", "melody", "chorus"],
          "food": ["recipe", "spicy", "oven"]}


def multi_label_documents(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (labels joined by "|", text) rows: each topic is present with probability 1/2 (at
    least one per document) and puts two of its keywords among shared filler words."""
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < n:
        present = [t for t in TOPICS if rng.random() < 0.5]
        if not present:
            continue
        words = list(rng.choice(FILLER, rng.integers(15, 40)))
        for topic in present:
            for keyword in rng.choice(TOPICS[topic], 2):
                words.insert(int(rng.integers(0, len(words) + 1)), str(keyword))
        rows.append(("|".join(present), " ".join(words) + "."))
    return rows


def write_multi_label_csvs(directory: Path, n_train: int = 300,
                           n_valid: int = 100) -> tuple[Path, Path]:
    """train.csv and valid.csv (no header; "|"-separated labels in column 0, text in 1)."""
    return write_csvs(directory, multi_label_documents, n_train, n_valid)
