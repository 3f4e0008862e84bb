"""`LanguageModel`: an AWD-LSTM LM with its vocab and tokenizer (fastai files, eval forward,
generation, save/load)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx

from ulmfit_jax.api import saved_model
from ulmfit_jax.api.checks import (
    as_ids,
    check_ids_in_vocab,
    check_vocab,
    require_tokenizer,
    token_list,
)
from ulmfit_jax.api.module_state import abstract_module, set_state
from ulmfit_jax.convert import fastai_files, fastai_weights
from ulmfit_jax.errors import ModelFileError
from ulmfit_jax.inference.generate import Generator
from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.model.encoder import EncoderState, zero_state
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel, resize_state
from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer
from ulmfit_jax.text.tokenizer_spec import Tokenizer, tokens_to_text
from ulmfit_jax.text.vocab import Vocab


@functools.partial(jax.jit, static_argnums=0)
def _lm_forward(
    graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array, hidden: EncoderState
) -> tuple[jax.Array, EncoderState]:
    out = nnx.merge(graphdef, state)(ids, hidden)
    return out.logits, out.state


class LanguageModel:
    """An AWD-LSTM language model with its vocab and tokenizer: fastai files, eval forward,
    generation, save/load."""

    def __init__(self, module: AWDLSTMLanguageModel, vocab: Sequence[str] | Vocab,
                 tokenizer: Tokenizer | None = None, backward: bool = False):
        self.module = module
        self.vocab = check_vocab(vocab, module.config.vocab_size, "LanguageModel")
        self.tokenizer, self.backward = tokenizer, bool(backward)

    def with_tokenizer(self, tokenizer: Tokenizer) -> LanguageModel:
        """A copy that reads raw text with `tokenizer` (e.g. for a format-1 directory), sharing
        this one's module: `lm.with_tokenizer(FastaiTokenizer()).save(directory, overwrite=True)`.
        """
        new = copy.copy(self)
        new.tokenizer = tokenizer
        return new

    @property
    def config(self) -> AWDLSTMConfig:
        """The model's `AWDLSTMConfig`."""
        return self.module.config

    @property
    def params(self) -> dict[str, Any]:
        """Pure dict of the parameters (see ARCHITECTURE.md)."""
        return nnx.to_pure_dict(nnx.state(self.module, nnx.Param))

    @classmethod
    def create(cls, config: AWDLSTMConfig, vocab: Sequence[str], seed: int = 0,
               tokenizer: Tokenizer | None = None, backward: bool = False) -> LanguageModel:
        """A freshly initialised model (fastai's initialisation)."""
        return cls(AWDLSTMLanguageModel(config, rngs=nnx.Rngs(seed)), vocab, tokenizer, backward)

    @classmethod
    def from_params(
        cls, config: AWDLSTMConfig, params: Mapping[str, Any], vocab: Sequence[str],
        tokenizer: Tokenizer | None = None, backward: bool = False,
    ) -> LanguageModel:
        """Build from a parameter pure dict (shapes checked against `config`)."""
        module = abstract_module(AWDLSTMLanguageModel, config)
        set_state(module, params, "LanguageModel.from_params")
        return cls(module, vocab, tokenizer, backward)

    @classmethod
    def from_fastai(
        cls,
        weights_path: str | os.PathLike,
        itos_path: str | os.PathLike,
        new_vocab: Sequence[str] | Vocab | None = None,
        tokenizer: Tokenizer | None = None,
        backward: bool = False,
        **config_overrides: Any,
    ) -> LanguageModel:
        """Read a fastai LM file (v2, v1 or 2018 layout) and its itos pickle.

        With `new_vocab`, rows are remapped: known words keep their row, new ones get the mean.
        `tokenizer` defaults to fastai's (`FastaiTokenizer()`); `backward` for a backward LM
        (e.g. wt103-bwd). `config_overrides` (e.g. `drop_mult=0.3`) replace fields of the LM
        config read from the file's shapes.
        """
        ckpt, vocab = fastai_files.read_language_model(weights_path, itos_path,
                                                       token_list(new_vocab))
        if ckpt.kind != fastai_files.KIND_LM:
            raise ModelFileError(f"{ckpt.source}: file kind {ckpt.kind!r}, not a language model")
        config, params = fastai_weights.lm_params_from_fastai(ckpt.state_dict)
        return cls.from_params(dataclasses.replace(config, **config_overrides), params, vocab,
                               tokenizer or FastaiTokenizer(), backward)

    def to_fastai(self, weights_path: str | os.PathLike, itos_path: str | os.PathLike) -> None:
        """Write `.pth` + itos pickle for fastai's `load_pretrained` / `Learner.load`."""
        sd = fastai_weights.lm_params_to_fastai(self.params, self.config)
        fastai_files.save_language_model(sd, self.vocab, weights_path, itos_path)

    def zero_state(self, batch_size: int) -> EncoderState:
        """All-zero hidden state for `batch_size` rows."""
        return zero_state(self.config, batch_size)

    def __call__(
        self, ids: Any, state: EncoderState | None = None
    ) -> tuple[jax.Array, EncoderState]:
        """ids int [batch, time] -> (logits [batch, time, vocab], new state); eval mode.

        `state` None starts from zeros; a state for another batch size keeps its first rows
        (smaller batch) or gains zero rows (larger), as fastai does.
        """
        ids = as_ids(ids)
        check_ids_in_vocab(ids, self.config.vocab_size)
        batch = ids.shape[0]
        if state is None:
            state = self.zero_state(batch)
        elif jax.tree.leaves(state)[0].shape[0] != batch:
            state = resize_state(state, batch)
        graphdef, params = nnx.split(self.module)
        return _lm_forward(graphdef, params, ids, state)

    @functools.cached_property
    def _vocab_table(self) -> Vocab:
        return Vocab(self.vocab)  # its token -> id map, built once

    def _generator(self) -> Generator:
        tokenizer = require_tokenizer(self.tokenizer, "language model")
        return Generator(self.module, self._vocab_table, tokenizer, self.backward)

    def generate(self, prompt: str, n_words: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> str:
        """`prompt` and `n_words` sampled words after it, as readable text (fastai's
        `LMLearner.predict`; see `inference.generate`). A backward LM writes the words
        before the prompt. Deterministic for a given `seed`."""
        tokens = self._generator().generate(prompt, n_words, temperature, top_k, top_p, seed)
        return tokens_to_text(require_tokenizer(self.tokenizer, "language model"), tokens)

    def predict_next(self, texts: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
        """The `k` most likely next tokens after each text, `(token, probability)` pairs."""
        return self._generator().predict_next(texts, k)

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> None:
        """Save params (orbax), `config.json`, `vocab.json` and the tokenizer, atomically
        (see `api.saved_model`)."""
        saved_model.write_saved_model(
            directory, saved_model.KIND_LM, self.config.to_dict(), self.vocab,
            nnx.to_pure_dict(nnx.state(self.module)), overwrite, {"backward": self.backward},
            self.tokenizer)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> LanguageModel:
        """Load a directory written by `save` (format version 1 or 2)."""
        saved, module = saved_model.load_saved_model(
            directory, saved_model.KIND_LM,
            lambda saved: abstract_module(AWDLSTMLanguageModel,
                                          AWDLSTMConfig.from_dict(saved.config)))
        return cls(module, saved.vocab, saved.tokenizer, saved.meta.get("backward", False))
