"""tensorflow-datasets corpora, read offline through array_record data sources (no TensorFlow).

Needs the optional `tfds` extra (`pip install 'ulmfit-jax[tfds]'`: tensorflow-datasets,
importlib_resources, array_record). A dataset must have been prepared once in the
array_record format, e.g. on a machine with network access::

    python -c "import tensorflow_datasets as tfds; tfds.builder('ag_news_subset', \\
        data_dir='~/tensorflow_datasets', file_format='array_record').download_and_prepare()"

Downloads stay off by default: with them on, an unprepared dataset retries for minutes
before failing. `KNOWN_DATASETS` maps each paper dataset to its text and label features;
several text features are joined with fastai's field marks (`xxfld 1 <title> xxfld 2 ...`).
TFDS 4.9 has no `dbpedia` builder: a DBpedia prepared under that name (features title,
content, label) is read from its files in `data_dir`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .core import (
    DataError,
    DecodeErrors,
    EmptyPolicy,
    Record,
    SplitPlan,
    TextDataset,
    build_dataset,
    check_policies,
    decode,
    make_document,
)


@dataclass(frozen=True)
class TfdsFields:
    """Where one TFDS dataset keeps its texts and label, and its unlabelled split, if any."""

    text: tuple[str, ...]
    label: str
    unsup_split: str | None = None


KNOWN_DATASETS = {
    "imdb_reviews": TfdsFields(("text",), "label", "unsupervised"),
    "ag_news_subset": TfdsFields(("title", "description"), "label"),
    "yelp_polarity_reviews": TfdsFields(("text",), "label"),
    "dbpedia": TfdsFields(("title", "content"), "label"),
    # TREC-6; pass label_field="label-fine" for TREC-50.
    "trec": TfdsFields(("text",), "label-coarse"),
}

_CHUNK = 1024


def import_tfds():
    """The tensorflow_datasets module, or an ImportError naming the `tfds` extra."""
    try:
        return importlib.import_module("tensorflow_datasets")
    except ImportError as e:
        raise ImportError("tensorflow-datasets sources need the optional 'tfds' extra: "
                          "pip install 'ulmfit-jax[tfds]'") from e


def _builder(tfds, name: str, data_dir: str | None):
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        pass
    # Older builders (yelp_polarity_reviews, ...) register only when their lazily imported
    # package is loaded.
    importlib.import_module("tensorflow_datasets.text")
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"tfds dataset {name!r}: not a TFDS builder and not prepared in "
                        f"data_dir={data_dir!r}") from None


def _data_source(builder, name: str, split: str, data_dir: str | None):
    try:
        return builder.as_data_source(split=split)
    except Exception as e:
        if not builder.is_prepared():
            raise DataError(
                f"tfds dataset {name!r} is not prepared in data_dir={data_dir!r} "
                f"({builder.data_dir}); prepare it once with network access: "
                f"tfds.builder({name!r}, data_dir=..., file_format='array_record')"
                ".download_and_prepare(), or pass download=True") from None
        raise DataError(f"tfds dataset {name!r} split {split!r} in {builder.data_dir}: {e} "
                        "(it must be prepared with file_format='array_record')") from e


def _examples(source) -> Iterator[dict]:
    n = len(source)
    for start in range(0, n, _CHUNK):
        keys = list(range(start, min(start + _CHUNK, n)))
        try:
            batch = source.__getitems__(keys)
        except TypeError:
            # tfds.testing.mock_data's data source has no working batched read.
            batch = [source[k] for k in keys]
        yield from batch


class _TfdsRecords:
    """Records of one split of a TFDS data source."""

    def __init__(self, builder, name: str, split: str, data_dir: str | None,
                 fields: TfdsFields, labelled: bool, mark_fields: bool | None,
                 errors: DecodeErrors, empty: EmptyPolicy):
        self.builder, self.name, self.split, self.data_dir = builder, name, split, data_dir
        self.fields, self.labelled, self.mark_fields = fields, labelled, mark_fields
        self.errors, self.empty = errors, empty
        label = builder.info.features[fields.label]
        if not hasattr(label, "names"):
            raise DataError(f"tfds dataset {name!r}: feature {fields.label!r} is not a ClassLabel")
        self.label_names = list(label.names)

    def __call__(self) -> Iterator[Record]:
        source = _data_source(self.builder, self.name, self.split, self.data_dir)
        for i, example in enumerate(_examples(source)):
            where = f"tfds {self.name}[{self.split}] example {i}"
            texts = [self._text(where, example, f) for f in self.fields.text]
            label = self._label(where, example) if self.labelled else None
            yield where, make_document(where, texts, label, self.empty, self.mark_fields)

    def _text(self, where: str, example: dict, feature: str) -> str:
        if feature not in example:
            raise DataError(f"{where}: no text feature {feature!r} (has {sorted(example)})")
        value = example[feature]
        return decode(value, where, "utf-8", self.errors) if isinstance(value, bytes) else value

    def _label(self, where: str, example: dict) -> str:
        index = int(example[self.fields.label])
        if not 0 <= index < len(self.label_names):
            raise DataError(f"{where}: label index {index} outside the "
                            f"{len(self.label_names)} classes")
        return self.label_names[index]


def tfds_dataset(name: str, *, data_dir: str | None = None, train_split: str = "train",
                 valid_split: str | None = "test", unsup_split: str | None = "default",
                 text_fields: Sequence[str] | None = None, label_field: str | None = None,
                 mark_fields: bool | None = None, valid_fraction: float = 0.2, seed: int = 42,
                 download: bool = False, errors: DecodeErrors = "strict",
                 empty: EmptyPolicy = "skip") -> TextDataset:
    """A TFDS dataset by name (`KNOWN_DATASETS`, or any with `text_fields`/`label_field`).

    `valid_split=None` splits a stratified `valid_fraction` off train. `unsup_split="default"`
    takes the dataset's unlabelled split (imdb_reviews: "unsupervised"), None takes none.
    Class names are the label feature's names (`ClassLabel.names`), sorted by `sort_labels`.
    """
    check_policies(empty, errors)
    tfds = import_tfds()
    fields = _fields(name, text_fields, label_field)
    builder = _builder(tfds, name, data_dir)
    if download:
        builder.download_and_prepare(file_format="array_record")
    if unsup_split == "default":
        unsup_split = fields.unsup_split
    opts = dict(builder=builder, name=name, data_dir=data_dir, mark_fields=mark_fields,
                errors=errors, empty=empty)
    opts["fields"] = fields
    train = _TfdsRecords(split=train_split, labelled=True, **opts)
    valid = _TfdsRecords(split=valid_split, labelled=True, **opts) if valid_split else None
    unsup = _TfdsRecords(split=unsup_split, labelled=False, **opts) if unsup_split else None
    settings = {"dataset": builder.info.full_name,
                "splits": [train_split, valid_split, unsup_split],
                "fields": [fields.text, fields.label], "mark_fields": mark_fields,
                "split": None if valid_split else [valid_fraction, seed], "errors": errors,
                "empty": empty}
    return build_dataset(f"tfds:{name}", train, SplitPlan(valid, valid_fraction, seed),
                         settings=settings, labelled=True, labels=train.label_names,
                         unsup=unsup)


def _fields(name: str, text_fields: Sequence[str] | None, label_field: str | None) -> TfdsFields:
    known = KNOWN_DATASETS.get(name)
    if known is None:
        # Empty fields fall back to the known ones, so an unknown dataset needs both non-empty.
        if not text_fields or not label_field:
            raise DataError(f"tfds dataset {name!r}: not in KNOWN_DATASETS "
                            f"({sorted(KNOWN_DATASETS)}); pass text_fields and label_field")
        return TfdsFields(tuple(text_fields), label_field, None)
    return TfdsFields(tuple(text_fields) if text_fields else known.text,
                      label_field or known.label, known.unsup_split)
