"""The serving directory's format, shared by its writer (`inference.export`) and its reader
(`serving`): file names and the `serving.json` schema.

Standard library only, so that `serving` stays importable without flax, optax, orbax or torch.
The directory holds `classifier.jax_export` (`jax.export.Exported.serialize()`), `serving.json`
(below), `vocab.json` and the tokenizer spec (`tokenizer.json`, plus `tokenizer.model` for
SentencePiece).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ulmfit_jax.errors import MissingFileError, ModelFileError

EXPORT_FILE, SERVING_FILE, VOCAB_FILE = "classifier.jax_export", "serving.json", "vocab.json"
SERVING_FORMAT, SERVING_VERSION = "ulmfit_jax.serving", 1
INPUT = "ids int32 [batch, chunks * bptt], fastai's padded layout"
OUTPUT = "probabilities float32 [batch, n_classes]"


def serving_meta(class_names: Sequence[str], bptt: int, pad_id: int, backward: bool,
                 platforms: Sequence[str]) -> dict[str, Any]:
    """`serving.json`'s content: what the reader needs to tokenize, pad and label."""
    return {"format": SERVING_FORMAT, "version": SERVING_VERSION,
            "class_names": list(class_names), "bptt": bptt, "pad_id": pad_id,
            "backward": backward, "platforms": list(platforms), "input": INPUT,
            "output": OUTPUT}


def write_serving_meta(directory: str | Path, meta: dict[str, Any]) -> None:
    """Write `serving.json` into `directory`."""
    Path(directory, SERVING_FILE).write_text(json.dumps(meta, indent=1) + "\n", "utf-8")


def read_serving_meta(root: Path) -> dict[str, Any]:
    """`serving.json` of an export directory, refused unless it is this format and version."""
    path = root / SERVING_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: missing; {root} is not a directory written by "
                               "TextClassifier.export")
    meta = json.loads(path.read_text("utf-8"))
    if meta.get("format") != SERVING_FORMAT or meta.get("version") != SERVING_VERSION:
        raise ModelFileError(f"{path}: not a {SERVING_FORMAT} version {SERVING_VERSION} file")
    return meta
