"""`TextClassifier`: an AWD-LSTM classifier with its vocab, tokenizer and class names (fastai
files, predictions on raw text, save/load, serving export)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from ulmfit_jax.api import saved_model
from ulmfit_jax.api.checks import (
    as_ids,
    check_ids_in_vocab,
    check_vocab,
    require_tokenizer,
    token_list,
)
from ulmfit_jax.api.language_model import LanguageModel
from ulmfit_jax.api.module_state import abstract_module, merge_trees, set_state
from ulmfit_jax.convert import fastai_files, fastai_weights
from ulmfit_jax.convert.safe_pickle import save_itos
from ulmfit_jax.errors import ModelFileError
from ulmfit_jax.inference.classify import RawTextPredictor, classifier_eval
from ulmfit_jax.inference.export import PLATFORMS, export_classifier
from ulmfit_jax.model.classifier import AWDLSTMClassifier
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer
from ulmfit_jax.text.prediction_batches import predicted_labels
from ulmfit_jax.text.tokenizer_spec import Tokenizer
from ulmfit_jax.text.vocab import Vocab

# fastai's text_classifier_learner default (get_text_classifier alone uses 1.0).
CLASSIFIER_DROP_MULT = 0.5


class TextClassifier:
    """An AWD-LSTM text classifier with its vocab, tokenizer and class names: fastai files,
    predictions on raw text, save/load, serving export."""

    def __init__(self, module: AWDLSTMClassifier, vocab: Sequence[str] | Vocab,
                 tokenizer: Tokenizer | None = None, class_names: Sequence[str] | None = None,
                 backward: bool = False):
        """class_names default to "0", "1", ... (the label indices)."""
        self.module = module
        self.vocab = check_vocab(vocab, module.config.encoder.vocab_size, "TextClassifier")
        self.tokenizer, self.backward = tokenizer, bool(backward)
        self.class_names = self._check_class_names(class_names)
        self.multi_label, self.threshold = False, 0.5

    def _check_class_names(self, names: Sequence[str] | None) -> list[str]:
        n = self.config.n_classes
        names = [str(i) for i in range(n)] if names is None else [str(c) for c in names]
        if len(names) != n:
            raise ValueError(f"TextClassifier: {len(names)} class names for {n} classes")
        return names

    def with_tokenizer(self, tokenizer: Tokenizer,
                       class_names: Sequence[str] | None = None) -> TextClassifier:
        """A copy with the tokenizer (and class names) a format-1 directory lacks, sharing this
        one's module: `clf.with_tokenizer(FastaiTokenizer(), ["neg", "pos"]).save(directory,
        overwrite=True)`."""
        new = copy.copy(self)
        new.tokenizer = tokenizer
        if class_names is not None:
            new.class_names = self._check_class_names(class_names)
        return new

    def with_multi_label(self, threshold: float = 0.5) -> TextClassifier:
        """A multi-label copy of this classifier (sharing its module), as fastai's
        `BCEWithLogitsLossFlat`: sigmoid probabilities, and each text gets every class whose
        probability exceeds `threshold` (saved with it)."""
        if not 0 < threshold < 1:
            raise ValueError(f"TextClassifier: threshold must be in (0, 1), got {threshold}")
        new = copy.copy(self)
        new.multi_label, new.threshold = True, float(threshold)
        return new

    @property
    def config(self) -> ClassifierConfig:
        """The model's `ClassifierConfig`."""
        return self.module.config

    @property
    def params(self) -> dict[str, Any]:
        """Pure dict of the trainable parameters (BatchNorm running stats excluded)."""
        return nnx.to_pure_dict(nnx.state(self.module, nnx.Param))

    @property
    def state(self) -> dict[str, Any]:
        """Pure dict of parameters and BatchNorm running statistics."""
        return nnx.to_pure_dict(nnx.state(self.module))

    @classmethod
    def create(
        cls, config: ClassifierConfig, vocab: Sequence[str], seed: int = 0,
        tokenizer: Tokenizer | None = None, class_names: Sequence[str] | None = None,
        backward: bool = False,
    ) -> TextClassifier:
        """A freshly initialised classifier."""
        return cls(AWDLSTMClassifier(config, rngs=nnx.Rngs(seed)), vocab, tokenizer,
                   class_names, backward)

    @classmethod
    def from_params(
        cls, config: ClassifierConfig, params: Mapping[str, Any], vocab: Sequence[str],
        batch_stats: Mapping[str, Any], tokenizer: Tokenizer | None = None,
        class_names: Sequence[str] | None = None, backward: bool = False,
    ) -> TextClassifier:
        """Build from a parameter pure dict and the BatchNorm running statistics (the trainer's
        `params` / `batch_stats` trees; shapes checked against `config`)."""
        module = abstract_module(AWDLSTMClassifier, config)
        set_state(module, merge_trees(params, batch_stats), "TextClassifier.from_params")
        return cls(module, vocab, tokenizer, class_names, backward)

    @classmethod
    def from_encoder(
        cls,
        encoder_params: Mapping[str, Any],
        encoder_config: AWDLSTMConfig,
        vocab: Sequence[str],
        n_classes: int,
        drop_mult: float = CLASSIFIER_DROP_MULT,
        seed: int = 0,
        *,
        tokenizer: Tokenizer | None = None,
        class_names: Sequence[str] | None = None,
        backward: bool = False,
        **classifier_options: Any,
    ) -> TextClassifier:
        """A new classifier (fresh head) on a trained encoder (`encoder/...` params subtree).

        The encoder gets fastai's classifier dropouts (`awd_lstm_clas_config`) times
        `drop_mult`; `classifier_options` go to `ClassifierConfig` (bptt, max_len, head_sizes,
        head_ps).
        """
        enc = encoder_config.for_classifier(drop_mult)
        config = ClassifierConfig(encoder=enc, n_classes=n_classes, **classifier_options)
        clf = cls.create(config, vocab, seed, tokenizer, class_names, backward)
        state = clf.state
        state["encoder"] = encoder_params
        set_state(clf.module, state, "TextClassifier.from_encoder")
        return clf

    @classmethod
    def from_language_model(
        cls, lm: LanguageModel, n_classes: int, drop_mult: float = CLASSIFIER_DROP_MULT,
        seed: int = 0, class_names: Sequence[str] | None = None, **classifier_options: Any,
    ) -> TextClassifier:
        """A new classifier on `lm`'s encoder (ULMFiT stage 3), with its tokenizer and
        direction; see `from_encoder`."""
        return cls.from_encoder(lm.params["encoder"], lm.config, lm.vocab, n_classes,
                                drop_mult, seed, tokenizer=lm.tokenizer,
                                class_names=class_names, backward=lm.backward,
                                **classifier_options)

    @classmethod
    def from_fastai(
        cls,
        weights_path: str | os.PathLike,
        itos_path: str | os.PathLike,
        n_classes: int | None = None,
        new_vocab: Sequence[str] | Vocab | None = None,
        drop_mult: float = CLASSIFIER_DROP_MULT,
        seed: int = 0,
        *,
        tokenizer: Tokenizer | None = None,
        class_names: Sequence[str] | None = None,
        backward: bool = False,
        **classifier_options: Any,
    ) -> TextClassifier:
        """Read a fastai classifier file, or start one from an LM / `save_encoder` file.

        A classifier file gives the whole model (`n_classes`, if given, must agree). An LM or
        encoder-only file needs `n_classes` and gets a fresh head (seeded by `seed`).
        `tokenizer` defaults to fastai's (`FastaiTokenizer()`). `classifier_options` (bptt,
        max_len; head_sizes for a new head) go to `ClassifierConfig`.
        """
        ckpt, vocab = fastai_files.read_language_model(weights_path, itos_path,
                                                       token_list(new_vocab))
        text: dict[str, Any] = dict(tokenizer=tokenizer or FastaiTokenizer(),
                                    class_names=class_names, backward=backward)
        if ckpt.kind == fastai_files.KIND_CLASSIFIER:
            return cls._from_classifier_file(ckpt, vocab, n_classes, drop_mult, text,
                                             **classifier_options)
        if n_classes is None:
            raise ModelFileError(f"{ckpt.source}: file kind {ckpt.kind!r}, not a classifier; "
                                 "pass n_classes to start a classifier on its encoder")
        if ckpt.kind == fastai_files.KIND_LM:
            config, params = fastai_weights.lm_params_from_fastai(ckpt.state_dict)
            encoder = params["encoder"]
        else:
            config, encoder = fastai_weights.encoder_params_from_fastai(ckpt.state_dict)
        return cls.from_encoder(encoder, config, vocab, n_classes, drop_mult, seed, **text,
                                **classifier_options)

    @classmethod
    def _from_classifier_file(
        cls, ckpt: fastai_files.FastaiCheckpoint, vocab: list[str], n_classes: int | None,
        drop_mult: float, text: dict[str, Any], **classifier_options: Any,
    ) -> TextClassifier:
        config, state = fastai_weights.classifier_params_from_fastai(ckpt.state_dict)
        if n_classes is not None and n_classes != config.n_classes:
            raise ModelFileError(f"{ckpt.source}: the head has {config.n_classes} classes, "
                                 f"n_classes={n_classes} was requested")
        encoder = dataclasses.replace(config.encoder, drop_mult=drop_mult)
        config = dataclasses.replace(config, encoder=encoder, **classifier_options)
        module = abstract_module(AWDLSTMClassifier, config)
        set_state(module, state, ckpt.source)
        return cls(module, vocab, **text)

    def to_fastai(
        self, weights_path: str | os.PathLike, itos_path: str | os.PathLike | None = None
    ) -> None:
        """Write a bare classifier state dict for fastai's `Learner.load` (+ itos pickle)."""
        sd = fastai_weights.classifier_params_to_fastai(self.state, self.config)
        fastai_files.save_classifier(sd, weights_path)
        if itos_path is not None:
            save_itos(self.vocab, itos_path)

    def __call__(self, ids: Any) -> jax.Array:
        """ids int [batch, time], padded in fastai's layout -> logits [batch, n_classes]."""
        ids = as_ids(ids)
        check_ids_in_vocab(ids, self.config.encoder.vocab_size)
        graphdef, state = nnx.split(self.module)
        return classifier_eval(graphdef, ids, state).logits

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64,
                      progress: bool | None = None) -> np.ndarray:
        """Probabilities `[len(texts), n_classes]` of raw texts, in input order.

        Documents are read whole, sorted by length into batches of a few bucketed shapes;
        a document's result does not depend on its batch. Batches are split over this
        process's devices (on a CPU only for a small AWD-LSTM, hidden size <= 256, where it
        pays: call `ulmfit_jax.use_cpu_cores()` before anything runs jax to have one device
        per core; jax starts with one). A progress bar is drawn when
        `progress` is True, or when it is None and there are 1,000 texts or more.
        """
        tokenizer = require_tokenizer(self.tokenizer, "classifier")
        return self._predictor(self.module, self._vocab_table, tokenizer, texts, batch_size,
                               self.backward, progress, self.multi_label)

    @functools.cached_property
    def _vocab_table(self) -> Vocab:
        return Vocab(self.vocab)  # its token -> id map, built once

    @functools.cached_property
    def _predictor(self) -> RawTextPredictor:
        return RawTextPredictor()  # what repeated calls share (the module's split, devices)

    def predict(self, texts: Sequence[str], batch_size: int = 64,
                progress: bool | None = None) -> list[str] | list[list[str]]:
        """The most likely class name of each text (see `predict_proba`); multi-label: the
        list of class names whose probability exceeds `threshold` (possibly empty)."""
        probs = self.predict_proba(texts, batch_size=batch_size, progress=progress)
        return predicted_labels(probs, self.class_names, self.multi_label, self.threshold)

    def export(self, directory: str | os.PathLike, overwrite: bool = False,
               platforms: Sequence[str] = PLATFORMS) -> None:
        """Write a `jax.export` serving artifact (symbolic batch and length, lowered for
        `platforms`) with the tokenizer, vocab and class names; `ulmfit_jax.serving.load`
        runs it without flax (see `inference.export`)."""
        tokenizer = require_tokenizer(self.tokenizer, "classifier")
        if self.multi_label:
            raise ValueError("TextClassifier.export: multi-label classifiers are not exportable "
                             "yet (the serving artifact returns softmax probabilities)")
        export_classifier(self.module, self.vocab, tokenizer, self.class_names, self.backward,
                          directory, overwrite, platforms)

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> None:
        """Save params + BatchNorm stats (orbax), `config.json` (with class names and
        direction), `vocab.json` and the tokenizer, atomically."""
        saved_model.write_saved_model(
            directory, saved_model.KIND_CLASSIFIER, self.config.to_dict(), self.vocab,
            self.state, overwrite,
            {"backward": self.backward, "class_names": self.class_names,
             "multi_label": self.multi_label, "threshold": self.threshold}, self.tokenizer)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextClassifier:
        """Load a directory written by `save` (format version 1 or 2)."""
        saved, module = saved_model.load_saved_model(
            directory, saved_model.KIND_CLASSIFIER,
            lambda saved: abstract_module(AWDLSTMClassifier,
                                          ClassifierConfig.from_dict(saved.config)))
        clf = cls(module, saved.vocab, saved.tokenizer, saved.meta.get("class_names"),
                  saved.meta.get("backward", False))
        if saved.meta.get("multi_label", False):
            clf = clf.with_multi_label(saved.meta.get("threshold", 0.5))
        return clf
