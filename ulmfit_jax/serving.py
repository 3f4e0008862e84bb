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

import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from ulmfit_jax.atomic_io import read_directory
from ulmfit_jax.serving_format import EXPORT_FILE, VOCAB_FILE, read_serving_meta
from ulmfit_jax.text import prediction_batches as pb
from ulmfit_jax.text.tokenizer_spec import load_tokenizer
from ulmfit_jax.text.vocab import Vocab


class ServedClassifier:
    """An exported classifier with its tokenizer, vocab and class names."""

    def __init__(self, directory: str | os.PathLike):
        read_directory(directory, self._read)  # one version, even while an export replaces it

    def _read(self, directory: str) -> None:
        root = Path(directory)
        meta = read_serving_meta(root)
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


def load(directory: str | os.PathLike) -> ServedClassifier:
    """The exported classifier in `directory` (written by `TextClassifier.export`)."""
    return ServedClassifier(directory)
