"""Serving export: the classifier's eval forward + softmax as a `jax.export` artifact.

The directory holds `classifier.jax_export` (`Exported.serialize()`; parameters are constants
inside it), `serving.json` (class names, bptt, pad id, direction), `vocab.json` and the
tokenizer spec (`tokenizer.json`, plus `tokenizer.model` for SentencePiece).
`ulmfit_jax.serving.load` runs it with jax, numpy and the tokenizer only.

The exported function takes ids int32 `[batch, chunks * bptt]` in fastai's padded layout
(`text.classifier_batches.pad_chunks`) with symbolic `batch` and `chunks`, and returns
probabilities float32 `[batch, n_classes]`; it is lowered for every platform in `platforms`
(default CPU, CUDA and TPU). Each concrete shape compiles once when first called.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from ulmfit_jax.atomic_io import atomic_directory
from ulmfit_jax.model.classifier import AWDLSTMClassifier
from ulmfit_jax.serving import (
    EXPORT_FILE,
    SERVING_FILE,
    SERVING_FORMAT,
    SERVING_VERSION,
    VOCAB_FILE,
)
from ulmfit_jax.text.tokenizer_spec import save_tokenizer
from ulmfit_jax.text.vocab import Vocab

PLATFORMS = ("cpu", "cuda", "tpu")


def export_forward(module: AWDLSTMClassifier,
                   platforms: Sequence[str] = PLATFORMS) -> jax.export.Exported:
    """ids int32 [batch, chunks*bptt] -> probabilities [batch, n_classes], symbolic dims."""
    graphdef, state = nnx.split(module)

    def probabilities(ids: jax.Array) -> jax.Array:
        return jax.nn.softmax(nnx.merge(graphdef, state)(ids), axis=-1)

    batch, chunks = jax.export.symbolic_shape("batch, chunks")
    spec = jax.ShapeDtypeStruct((batch, chunks * module.config.bptt), jnp.int32)
    return jax.export.export(jax.jit(probabilities), platforms=tuple(platforms))(spec)


def export_classifier(module: AWDLSTMClassifier, vocab: Sequence[str], tokenizer,
                      class_names: Sequence[str], backward: bool,
                      directory: str | os.PathLike, overwrite: bool = False,
                      platforms: Sequence[str] = PLATFORMS) -> None:
    """Write the serving directory (see module doc), atomically."""
    exported = export_forward(module, platforms)
    config = module.config
    meta = {"format": SERVING_FORMAT, "version": SERVING_VERSION,
            "class_names": list(class_names), "bptt": config.bptt,
            "pad_id": config.encoder.pad_id, "backward": backward,
            "platforms": list(exported.platforms),
            "input": "ids int32 [batch, chunks * bptt], fastai's padded layout",
            "output": "probabilities float32 [batch, n_classes]"}
    with atomic_directory(directory, overwrite) as tmp:
        Path(tmp, EXPORT_FILE).write_bytes(exported.serialize())
        Vocab(vocab).save(Path(tmp, VOCAB_FILE))
        save_tokenizer(tokenizer, tmp)
        Path(tmp, SERVING_FILE).write_text(json.dumps(meta, indent=1) + "\n", "utf-8")
