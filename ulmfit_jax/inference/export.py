"""Serving export: the classifier's eval forward + softmax as a `jax.export` artifact.

The directory's format (file names, `serving.json`) is `ulmfit_jax.serving_format`, which
`ulmfit_jax.serving` reads with jax, numpy and the tokenizer only; parameters are constants
inside the serialized `classifier.jax_export`.

The exported function takes ids int32 `[batch, chunks * bptt]` in fastai's padded layout
(`text.classifier_batches.pad_chunks`) with symbolic `batch` and `chunks`, and returns
probabilities float32 `[batch, n_classes]`; it is lowered for every platform in `platforms`
(default CPU, CUDA and TPU). Each concrete shape compiles once when first called.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from ulmfit_jax.atomic_io import atomic_directory
from ulmfit_jax.inference.classify import classifier_eval
from ulmfit_jax.model.classifier import AWDLSTMClassifier
from ulmfit_jax.serving_format import EXPORT_FILE, VOCAB_FILE, serving_meta, write_serving_meta
from ulmfit_jax.text.tokenizer_spec import save_tokenizer
from ulmfit_jax.text.vocab import Vocab

PLATFORMS = ("cpu", "cuda", "tpu")


# LSTM kernels that lower on every platform; cuDNN's lowers for CUDA only.
PORTABLE_LSTM_IMPLS = ("scan", "wavefront")


def portable_module(module: AWDLSTMClassifier) -> AWDLSTMClassifier:
    """The same classifier (same parameters and statistics) with an LSTM kernel that lowers
    for CPU, CUDA and TPU: a model trained or loaded on a GPU host may carry `cudnn` (or
    `auto`, resolved on the exporting host), which would bind the artifact to CUDA."""
    encoder = module.config.encoder
    if encoder.lstm_impl in PORTABLE_LSTM_IMPLS:
        return module
    config = dataclasses.replace(
        module.config, encoder=dataclasses.replace(encoder, lstm_impl="scan"))
    portable = nnx.eval_shape(lambda: AWDLSTMClassifier(config, rngs=nnx.Rngs(0)))
    nnx.update(portable, nnx.state(module))
    return portable


def export_forward(module: AWDLSTMClassifier,
                   platforms: Sequence[str] = PLATFORMS) -> jax.export.Exported:
    """ids int32 [batch, chunks*bptt] -> probabilities [batch, n_classes], symbolic dims."""
    graphdef, state = nnx.split(portable_module(module))

    def probabilities(ids: jax.Array) -> jax.Array:
        return classifier_eval(graphdef, ids, state).probs

    batch, chunks = jax.export.symbolic_shape("batch, chunks")
    spec = jax.ShapeDtypeStruct((batch, chunks * module.config.bptt), jnp.int32)
    return jax.export.export(jax.jit(probabilities), platforms=tuple(platforms))(spec)


def export_classifier(module: AWDLSTMClassifier, vocab: Sequence[str], tokenizer,
                      class_names: Sequence[str], backward: bool,
                      directory: str | os.PathLike, overwrite: bool = False,
                      platforms: Sequence[str] = PLATFORMS) -> None:
    """Write the serving directory (see `serving_format`), atomically."""
    exported = export_forward(module, platforms)
    config = module.config
    meta = serving_meta(class_names, config.bptt, config.encoder.pad_id, backward,
                        exported.platforms)
    with atomic_directory(directory, overwrite) as tmp:
        Path(tmp, EXPORT_FILE).write_bytes(exported.serialize())
        Vocab(vocab).save(Path(tmp, VOCAB_FILE))
        save_tokenizer(tokenizer, tmp)
        write_serving_meta(tmp, meta)
