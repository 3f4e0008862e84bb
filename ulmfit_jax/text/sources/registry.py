"""The sources a run config can name (`config.data.source`, `config.data.lm_source`).

One entry per source name: the function that makes its `TextDataset` from the run config's
`data` section, the keys of that section it cannot do without, and whether it is a pretraining
corpus. The trainer's data loading, its config check and its data messages all read this table;
a new source is its own module plus one entry here.

`settings` is the `data` section, read by attribute (`settings.path`); this layer never
imports ml_collections, so anything with those attributes works.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ulmfit_jax.errors import ConfigError

from .core import TextDataset
from .csv_files import csv_dataset
from .imdb_folder import imdb_folder
from .movie_reviews import movie_reviews_imdb, movie_reviews_lm, movie_reviews_rotten_tomatoes
from .text_files import text_files, wikitext
from .tfds_datasets import tfds_dataset


@dataclasses.dataclass(frozen=True)
class SourceEntry:
    """How a run config's `data` section becomes one source's dataset.

    load: `settings -> TextDataset`. required: keys of `settings` that must be non-empty.
    pretraining: an unlabelled corpus with its own LM validation split (the vocab is counted
    on its training split only). fraction_split: the validation split is a
    `settings.valid_fraction` of the training documents (else the source has its own);
    reads_valid_path: `settings.valid_path`, when given, is the validation split instead.
    """

    load: Callable[[Any], TextDataset]
    required: tuple[str, ...] = ()
    pretraining: bool = False
    fraction_split: bool = False
    reads_valid_path: bool = False


def _csv(s: Any) -> TextDataset:
    return csv_dataset(s.path, s.valid_path or None, valid_fraction=s.valid_fraction,
                       label_cols=tuple(s.csv_label_cols), header=s.csv_header,
                       label_delim=s.csv_label_delim or None)


SOURCES: dict[str, SourceEntry] = {
    "movie_reviews_imdb": SourceEntry(lambda s: movie_reviews_imdb(s.valid_fraction),
                                      fraction_split=True),
    "movie_reviews_rotten_tomatoes": SourceEntry(
        lambda s: movie_reviews_rotten_tomatoes(s.valid_fraction), fraction_split=True),
    "movie_reviews_lm": SourceEntry(lambda s: movie_reviews_lm(s.valid_fraction),
                                    fraction_split=True),
    "csv": SourceEntry(_csv, required=("path",), fraction_split=True, reads_valid_path=True),
    "imdb_folder": SourceEntry(lambda s: imdb_folder(s.path, valid_fraction=s.valid_fraction),
                               required=("path",)),
    "tfds": SourceEntry(lambda s: tfds_dataset(s.path, valid_fraction=s.valid_fraction),
                        required=("path",)),
    "wikitext": SourceEntry(lambda s: wikitext(s.path), required=("path",), pretraining=True),
    "text_files": SourceEntry(
        lambda s: text_files(s.path, s.valid_path or None, valid_fraction=s.valid_fraction),
        required=("path",), pretraining=True, fraction_split=True, reads_valid_path=True),
}


def source_entry(name: str, key: str = "source") -> SourceEntry:
    """The entry of source `name`; an unknown name is a `ConfigError` naming
    `config.data.<key>`."""
    if name not in SOURCES:
        raise ConfigError(f"config.data.{key}={name!r} is not allowed: one of "
                          f"{tuple(SOURCES)}")
    return SOURCES[name]


def check_settings(settings: Any, key: str = "source") -> None:
    """Refuse an unknown `settings.<key>` or an empty key its source requires, in one line
    naming the key (`ConfigError`)."""
    name = getattr(settings, key)
    for needed in source_entry(name, key).required:
        value = getattr(settings, needed)
        if not value:
            raise ConfigError(f"config.data.{needed}={value!r} is not allowed: required "
                              f"(config.data.{key}={name!r} reads it)")


def check_valid_split(settings: Any, key: str = "source") -> None:
    """Refuse `settings.valid_fraction` 0 where it makes the only validation split the run
    has: the classifier's source's, or a pretraining `lm_source`'s (another LM source's
    documents are split again by `lm_valid_fraction`). `ConfigError` naming the keys."""
    name = getattr(settings, key)
    entry = source_entry(name, key)
    by_fraction = entry.fraction_split and not (entry.reads_valid_path and settings.valid_path)
    needed = key == "source" or entry.pretraining
    if settings.valid_fraction != 0 or not (by_fraction and needed):
        return
    path = " and no config.data.valid_path" if entry.reads_valid_path else ""
    raise ConfigError(f"config.data.valid_fraction={settings.valid_fraction!r} is not allowed "
                      f"with config.data.{key}={name!r}{path}: its validation split would be "
                      "empty; a fraction in (0, 1)"
                      + (" or a config.data.valid_path" if entry.reads_valid_path else ""))


def load_source(settings: Any, name: str | None = None) -> TextDataset:
    """The `TextDataset` named by `settings.source` (or `name`)."""
    name = name or settings.source
    return source_entry(name, "source" if name == settings.source else "lm_source").load(settings)
