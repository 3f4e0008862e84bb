"""Run a classifier exported by `TextClassifier.export` with jax, numpy and the tokenizer only.

```python
from ulmfit_jax import serving
clf = serving.load("exported/")          # no flax, optax, orbax or torch needed
clf.predict_proba(["A fine film."])       # [n, n_classes], as TextClassifier.predict_proba
clf.predict(["A fine film."])             # class names
```

Nothing of the package's model code is imported: the forward pass is the deserialized
`jax.export` artifact. Texts are tokenized, sorted and padded exactly as
`TextClassifier.predict_proba` does (`text.prediction_batches`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from ulmfit_jax.errors import MissingFileError, ModelFileError
from ulmfit_jax.text import prediction_batches as pb
from ulmfit_jax.text.tokenizer_spec import load_tokenizer
from ulmfit_jax.text.vocab import Vocab

EXPORT_FILE, SERVING_FILE, VOCAB_FILE = "classifier.jax_export", "serving.json", "vocab.json"
SERVING_FORMAT, SERVING_VERSION = "ulmfit_jax.serving", 1


class ServedClassifier:
    """An exported classifier with its tokenizer, vocab and class names."""

    def __init__(self, directory: str | os.PathLike):
        root = Path(directory)
        meta = _read_meta(root)
        self.class_names: list[str] = list(meta["class_names"])
        self.bptt, self.pad_id, self.backward = meta["bptt"], meta["pad_id"], meta["backward"]
        self.vocab = Vocab.load(root / VOCAB_FILE)
        self.tokenizer = load_tokenizer(root)
        exported = jax.export.deserialize(bytearray((root / EXPORT_FILE).read_bytes()))
        self._forward = jax.jit(exported.call)  # one compile per padded shape

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64,
                      progress: bool | None = None) -> np.ndarray:
        """Probabilities `[len(texts), n_classes]` of raw texts, in input order."""
        return pb.texts_to_probabilities(
            self._forward, self.tokenizer, self.vocab, texts, batch_size=batch_size,
            bptt=self.bptt, pad_id=self.pad_id, n_classes=len(self.class_names),
            backward=self.backward, progress=progress)

    def predict(self, texts: Sequence[str], batch_size: int = 64,
                progress: bool | None = None) -> list[str]:
        """The most likely class name of each text."""
        probs = self.predict_proba(texts, batch_size=batch_size, progress=progress)
        return pb.best_labels(probs, self.class_names)


def _read_meta(root: Path) -> dict:
    path = root / SERVING_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: missing; {root} is not a directory written by "
                                "TextClassifier.export")
    meta = json.loads(path.read_text("utf-8"))
    if meta.get("format") != SERVING_FORMAT or meta.get("version") != SERVING_VERSION:
        raise ModelFileError(f"{path}: not a {SERVING_FORMAT} version {SERVING_VERSION} file")
    return meta


def load(directory: str | os.PathLike) -> ServedClassifier:
    """The exported classifier in `directory` (written by `TextClassifier.export`)."""
    return ServedClassifier(directory)
