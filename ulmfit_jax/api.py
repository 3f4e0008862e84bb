"""Public API: `LanguageModel` and `TextClassifier` (fastai files in and out, save/load, eval).

```python
lm = LanguageModel.from_fastai("lstm_fwd.pth", "itos_wt103.pkl", new_vocab=my_vocab)
logits, state = lm(ids)               # ids int32 [batch, time]; eval mode, zero state
logits, state = lm(ids2, state)       # state carried; a batch-size change is handled as fastai
lm.save("my_lm"); lm = LanguageModel.load("my_lm")
lm.to_fastai("lstm.pth", "itos.pkl")  # fastai's load_pretrained / Learner.load read these
clf = TextClassifier.from_language_model(lm, n_classes=2)
logits = clf(ids)                     # padded batch in fastai layout -> [batch, n_classes]

clf = TextClassifier.load("models/classifier_fwd")      # raw text in, as sklearn / fastai
clf.predict_proba(["A fine film."])   # [n, n_classes]; clf.predict(texts) -> class names
clf.export("serving/")                # jax.export artifact for `ulmfit_jax.serving.load`
Ensemble.load("models/classifier_fwd", "models/classifier_bwd").predict(texts)
lm.generate("The movie", n_words=20, seed=0); lm.predict_next(["The movie"], k=5)
```

Each wrapper holds an NNX module (`.module`), its vocab, the tokenizer it reads raw text with
(`.tokenizer`, None for a model that only takes ids), its direction (`.backward`: the model
reads each document's ids reversed, and reverses them itself) and, for a classifier, its class
names. A saved directory holds `state/` (orbax StandardCheckpointer: parameters and BatchNorm
statistics), `config.json` (model config, direction, class names), `vocab.json`
(`Vocab.save`'s format) and the tokenizer spec (`tokenizer.json`, plus `tokenizer.model` for
SentencePiece; see `text.tokenizer_spec`). It is written atomically: everything goes into a
hidden temporary sibling directory that is renamed into place only when complete (a killed
process can leave that sibling, never a partial model). Directories of format version 1
(no tokenizer, direction or class names) still load, for use on ids.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ulmfit_jax.atomic_io import atomic_directory
from ulmfit_jax.convert import fastai_files, fastai_weights
from ulmfit_jax.convert.safe_pickle import save_itos
from ulmfit_jax.errors import MissingFileError, ModelFileError, disk_full_is_clear
from ulmfit_jax.inference.classify import classifier_probabilities
from ulmfit_jax.inference.ensemble import Ensemble
from ulmfit_jax.inference.export import PLATFORMS, export_classifier
from ulmfit_jax.inference.generate import Generator
from ulmfit_jax.model.classifier import AWDLSTMClassifier
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.model.encoder import EncoderState, zero_state
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel, resize_state
from ulmfit_jax.text.detokenize import detokenize
from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer
from ulmfit_jax.text.prediction_batches import predicted_labels
from ulmfit_jax.text.sentencepiece_tokenizer import SentencePieceTokenizer
from ulmfit_jax.text.tokenizer_spec import Tokenizer, has_tokenizer, load_tokenizer, save_tokenizer
from ulmfit_jax.text.vocab import Vocab

__all__ = ["Ensemble", "LanguageModel", "TextClassifier"]

# 2: + tokenizer spec, direction and class names. Version 1 directories load for ids-in use.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
STATE_DIR, CONFIG_FILE, VOCAB_FILE = "state", "config.json", "vocab.json"
# fastai's text_classifier_learner default (get_text_classifier alone uses 1.0).
CLASSIFIER_DROP_MULT = 0.5


# ---------------------------------------------------------------------------- jitted eval


@functools.partial(jax.jit, static_argnums=0)
def _lm_forward(
    graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array, hidden: EncoderState
) -> tuple[jax.Array, EncoderState]:
    model = nnx.merge(graphdef, state)
    out = model(ids, hidden)
    return out.logits, out.state


@functools.partial(jax.jit, static_argnums=0)
def _classifier_forward(graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(ids)


def _as_ids(ids: Any) -> jax.Array:
    ids = jnp.asarray(ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"ids must be integer [batch, time], got {ids.dtype} {ids.shape}")
    return ids.astype(jnp.int32)


def _check_ids_in_vocab(ids: jax.Array, vocab_size: int) -> None:
    # An out-of-range id would be silently clamped by the gather on accelerators.
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got range [{lo}, {hi}]")


# ---------------------------------------------------------------------------- params <-> module


def _set_state(module: nnx.Module, pure: Mapping[str, Any], source: str) -> None:
    """Write a pure dict (params and BatchNorm stats) into `module`, checking every shape."""
    state = nnx.state(module)
    current = nnx.to_pure_dict(state)
    cur_paths = dict(_flatten(current))
    new_paths = dict(_flatten(pure))
    if set(cur_paths) != set(new_paths):
        missing = sorted(set(cur_paths) - set(new_paths))
        extra = sorted(set(new_paths) - set(cur_paths))
        raise ValueError(
            f"{source}: parameter tree mismatch; missing {missing}, unexpected {extra}"
        )
    for path, value in new_paths.items():
        got, expected = _shape(value), _shape(cur_paths[path])
        if got != expected:
            raise ValueError(f"{source}: {path} has shape {got}, expected {expected}")
    nnx.replace_by_pure_dict(state, _like(current, pure))
    nnx.update(module, state)


def _merge_trees(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Union of two nested dicts with disjoint leaves (parameters and BatchNorm statistics)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = _merge_trees(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _flatten(tree: Mapping[Any, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _flatten(value, path + "/")
        else:
            out.append((path, value))
    return out


def _like(template: Mapping[Any, Any], tree: Mapping[Any, Any]) -> dict[Any, Any]:
    """`tree`'s values under `template`'s keys (int list keys may come back as strings)."""
    out = {}
    for key, value in template.items():
        src = tree[key] if key in tree else tree[str(key)]
        if isinstance(value, Mapping):
            out[key] = _like(value, src)
        else:
            out[key] = jnp.asarray(src, value.dtype)
    return out


def _config_to_json(config: AWDLSTMConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["compute_dtype"] = jnp.dtype(config.compute_dtype).name
    return d


def _config_from_json(d: Mapping[str, Any]) -> AWDLSTMConfig:
    d = dict(d)
    # jnp's scalar types (jnp.float32, jnp.bfloat16), as the config defaults use.
    d["compute_dtype"] = getattr(jnp, d["compute_dtype"])
    return AWDLSTMConfig(**d)


def _classifier_config_to_json(config: ClassifierConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["encoder"] = _config_to_json(config.encoder)
    return d


def _classifier_config_from_json(d: Mapping[str, Any]) -> ClassifierConfig:
    d = dict(d)
    d["encoder"] = _config_from_json(d["encoder"])
    d["head_sizes"] = tuple(d["head_sizes"])
    if d.get("head_ps") is not None:
        d["head_ps"] = tuple(d["head_ps"])
    return ClassifierConfig(**d)


# ---------------------------------------------------------------------------- directory I/O


def _write_directory(
    directory: str | os.PathLike, kind: str, config: dict, vocab: Sequence[str],
    state: Mapping[str, Any], overwrite: bool, meta: Mapping[str, Any],
    tokenizer: Tokenizer | None,
) -> None:
    """Write state/config/vocab/tokenizer into a temporary sibling, then rename it into place.

    `meta` (direction, class names) goes into config.json beside the model config."""
    with disk_full_is_clear(f"the model {os.fspath(directory)}"), \
            atomic_directory(directory, overwrite) as tmp:
        with _local_checkpointer() as ckptr:
            # Host copies: orbax refuses a process-local jax.Array in a multi-process run.
            ckptr.save(os.path.join(tmp, STATE_DIR), jax.tree.map(np.asarray, state))
            ckptr.wait_until_finished()
        Vocab(vocab).save(os.path.join(tmp, VOCAB_FILE))
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        # config.json last: its presence marks a complete directory.
        _write_json(os.path.join(tmp, CONFIG_FILE), {"format_version": FORMAT_VERSION,
                                                     "kind": kind, **meta, "config": config})


def _local_checkpointer():
    """An orbax checkpointer for this process alone: a saved model is host data, written (in a
    multi-process run by process 0) and read without waiting for other processes."""
    import orbax.checkpoint as ocp

    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)


@dataclasses.dataclass(frozen=True)
class _SavedDirectory:
    """What `_read_directory` finds: config.json's content, vocab, state path, tokenizer."""

    meta: dict
    vocab: list[str]
    state_path: str
    tokenizer: Tokenizer | None


def _read_directory(directory: str | os.PathLike, kind: str) -> _SavedDirectory:
    """config.json, vocab, orbax state path and tokenizer of a saved model directory."""
    root = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(root):
        raise MissingFileError(f"{root}: no such model directory")
    for name in (CONFIG_FILE, VOCAB_FILE, STATE_DIR):
        if not os.path.exists(os.path.join(root, name)):
            raise MissingFileError(
                f"{root} is not a saved {kind} directory: missing {os.path.join(root, name)}"
            )
    try:
        with open(os.path.join(root, CONFIG_FILE), encoding="utf-8") as f:
            meta = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{root}/{CONFIG_FILE}: not readable JSON ({e})") from e
    if meta.get("kind") != kind:
        raise ModelFileError(
            f"{root}/{CONFIG_FILE}: holds a {meta.get('kind')!r}, expected {kind!r}")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ModelFileError(
            f"{root}/{CONFIG_FILE}: unsupported format_version {meta.get('format_version')!r} "
            f"(expected one of {READABLE_VERSIONS})")
    vocab = Vocab.load(os.path.join(root, VOCAB_FILE)).itos
    tokenizer = load_tokenizer(root) if has_tokenizer(root) else None
    return _SavedDirectory(meta, vocab, os.path.join(root, STATE_DIR), tokenizer)


def _restore_state(module: nnx.Module, state_path: str) -> None:

    template = nnx.to_pure_dict(nnx.state(module))
    # Host arrays as the target: restored the same way in one process or many.
    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), template)
    try:
        with _local_checkpointer() as ckptr:
            restored = ckptr.restore(state_path, target)
    except Exception as e:
        raise ModelFileError(f"{state_path}: cannot restore the saved parameters into a model "
                             f"built from config.json ({type(e).__name__}: {str(e)[:300]})") from e
    _set_state(module, restored, state_path)


def _itos(vocab: Sequence[str] | Vocab | None) -> list[str] | None:
    """A token list from a list of str or a `Vocab`."""
    if vocab is None:
        return None
    return list(vocab.itos) if isinstance(vocab, Vocab) else list(vocab)


def _require_tokenizer(tokenizer: Tokenizer | None, kind: str) -> Tokenizer:
    if tokenizer is None:
        raise ModelFileError(
            f"this {kind} has no tokenizer (saved before format version 2, or built without "
            "one), so it cannot read raw text; add the tokenizer it was trained with and save "
            "it again: model.with_tokenizer(FastaiTokenizer()).save(directory, overwrite=True)")
    return tokenizer


def _check_vocab(vocab: Sequence[str] | Vocab, vocab_size: int, source: str) -> list[str]:
    vocab = _itos(vocab)
    if len(vocab) != vocab_size:
        raise ValueError(f"{source}: vocab has {len(vocab)} tokens but the model has "
                         f"{vocab_size} embedding rows")
    return vocab


# ---------------------------------------------------------------------------- LanguageModel


class LanguageModel:
    """An AWD-LSTM language model with its vocab and tokenizer: fastai files, eval forward,
    generation, save/load."""

    def __init__(self, module: AWDLSTMLanguageModel, vocab: Sequence[str] | Vocab,
                 tokenizer: Tokenizer | None = None, backward: bool = False):
        self.module = module
        self.vocab = _check_vocab(vocab, module.config.vocab_size, "LanguageModel")
        self.tokenizer, self.backward = tokenizer, bool(backward)

    def with_tokenizer(self, tokenizer: Tokenizer) -> LanguageModel:
        """Set the tokenizer raw text is read with (e.g. on a format-1 directory); returns
        self, so `lm.with_tokenizer(FastaiTokenizer()).save(directory, overwrite=True)`."""
        self.tokenizer = tokenizer
        return self

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
        module = nnx.eval_shape(lambda: AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0)))
        _set_state(module, params, "LanguageModel.from_params")
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
        ckpt, vocab = fastai_files.read_language_model(weights_path, itos_path, _itos(new_vocab))
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
        ids = _as_ids(ids)
        _check_ids_in_vocab(ids, self.config.vocab_size)
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
        tokenizer = _require_tokenizer(self.tokenizer, "language model")
        return Generator(self.module, self._vocab_table, tokenizer, self.backward)

    def generate(self, prompt: str, n_words: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> str:
        """`prompt` and `n_words` sampled words after it, as readable text (fastai's
        `LMLearner.predict`; see `inference.generate`). A backward LM writes the words
        before the prompt. Deterministic for a given `seed`."""
        tokens = self._generator().generate(prompt, n_words, temperature, top_k, top_p, seed)
        if isinstance(self.tokenizer, SentencePieceTokenizer):
            return self.tokenizer.detokenize(tokens)  # pieces, not space-separated words
        return detokenize(tokens)

    def predict_next(self, texts: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
        """The `k` most likely next tokens after each text, `(token, probability)` pairs."""
        return self._generator().predict_next(texts, k)

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> None:
        """Save params (orbax), `config.json`, `vocab.json` and the tokenizer, atomically."""
        _write_directory(directory, "language_model", _config_to_json(self.config), self.vocab,
                         nnx.to_pure_dict(nnx.state(self.module)), overwrite,
                         {"backward": self.backward}, self.tokenizer)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> LanguageModel:
        """Load a directory written by `save`."""
        saved = _read_directory(directory, "language_model")
        config = _config_from_json(saved.meta["config"])
        module = nnx.eval_shape(lambda: AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0)))
        _restore_state(module, saved.state_path)
        return cls(module, saved.vocab, saved.tokenizer, saved.meta.get("backward", False))


# ---------------------------------------------------------------------------- TextClassifier


class TextClassifier:
    """An AWD-LSTM text classifier with its vocab, tokenizer and class names: fastai files,
    predictions on raw text, save/load, serving export."""

    def __init__(self, module: AWDLSTMClassifier, vocab: Sequence[str] | Vocab,
                 tokenizer: Tokenizer | None = None, class_names: Sequence[str] | None = None,
                 backward: bool = False):
        """class_names default to "0", "1", ... (the label indices)."""
        self.module = module
        self.vocab = _check_vocab(vocab, module.config.encoder.vocab_size, "TextClassifier")
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
        """Set the tokenizer (and class names) a format-1 directory lacks; returns self, so
        `clf.with_tokenizer(FastaiTokenizer(), ["neg", "pos"]).save(directory, overwrite=True)`."""
        self.tokenizer = tokenizer
        if class_names is not None:
            self.class_names = self._check_class_names(class_names)
        return self

    def with_multi_label(self, threshold: float = 0.5) -> TextClassifier:
        """Make this a multi-label classifier, as fastai's `BCEWithLogitsLossFlat`: sigmoid
        probabilities, and each text gets every class whose probability exceeds `threshold`
        (saved with it); returns self."""
        if not 0 < threshold < 1:
            raise ValueError(f"TextClassifier: threshold must be in (0, 1), got {threshold}")
        self.multi_label, self.threshold = True, float(threshold)
        return self

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
        module = nnx.eval_shape(lambda: AWDLSTMClassifier(config, rngs=nnx.Rngs(0)))
        _set_state(module, _merge_trees(params, batch_stats), "TextClassifier.from_params")
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
        enc = AWDLSTMConfig.classifier_defaults(
            encoder_config.vocab_size, drop_mult=drop_mult, emb_size=encoder_config.emb_size,
            hidden_size=encoder_config.hidden_size, n_layers=encoder_config.n_layers,
            pad_id=encoder_config.pad_id, compute_dtype=encoder_config.compute_dtype,
            lstm_impl=encoder_config.lstm_impl, encoder_kind=encoder_config.encoder_kind,
        )
        config = ClassifierConfig(encoder=enc, n_classes=n_classes, **classifier_options)
        clf = cls.create(config, vocab, seed, tokenizer, class_names, backward)
        state = clf.state
        state["encoder"] = encoder_params
        _set_state(clf.module, state, "TextClassifier.from_encoder")
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
        ckpt, vocab = fastai_files.read_language_model(weights_path, itos_path, _itos(new_vocab))
        text = dict(tokenizer=tokenizer or FastaiTokenizer(), class_names=class_names,
                    backward=backward)
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
        module = nnx.eval_shape(lambda: AWDLSTMClassifier(config, rngs=nnx.Rngs(0)))
        _set_state(module, state, ckpt.source)
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
        ids = _as_ids(ids)
        _check_ids_in_vocab(ids, self.config.encoder.vocab_size)
        graphdef, state = nnx.split(self.module)
        return _classifier_forward(graphdef, state, ids)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64,
                      progress: bool | None = None) -> np.ndarray:
        """Probabilities `[len(texts), n_classes]` of raw texts, in input order.

        Documents are read whole, sorted by length into batches of a few bucketed shapes;
        a document's result does not depend on its batch. A progress bar is drawn when
        `progress` is True, or when it is None and there are 1,000 texts or more.
        """
        tokenizer = _require_tokenizer(self.tokenizer, "classifier")
        return classifier_probabilities(self.module, self._vocab_table, tokenizer, texts,
                                        batch_size, self.backward, progress, self.multi_label)

    @functools.cached_property
    def _vocab_table(self) -> Vocab:
        return Vocab(self.vocab)  # its token -> id map, built once

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
        tokenizer = _require_tokenizer(self.tokenizer, "classifier")
        if self.multi_label:
            raise ValueError("TextClassifier.export: multi-label classifiers are not exportable "
                             "yet (the serving artifact returns softmax probabilities)")
        export_classifier(self.module, self.vocab, tokenizer, self.class_names, self.backward,
                          directory, overwrite, platforms)

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> None:
        """Save params + BatchNorm stats (orbax), `config.json` (with class names and
        direction), `vocab.json` and the tokenizer, atomically."""
        _write_directory(directory, "classifier", _classifier_config_to_json(self.config),
                         self.vocab, self.state, overwrite,
                         {"backward": self.backward, "class_names": self.class_names,
                          "multi_label": self.multi_label, "threshold": self.threshold},
                         self.tokenizer)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextClassifier:
        """Load a directory written by `save`."""
        saved = _read_directory(directory, "classifier")
        config = _classifier_config_from_json(saved.meta["config"])
        module = nnx.eval_shape(lambda: AWDLSTMClassifier(config, rngs=nnx.Rngs(0)))
        _restore_state(module, saved.state_path)
        clf = cls(module, saved.vocab, saved.tokenizer, saved.meta.get("class_names"),
                  saved.meta.get("backward", False))
        if saved.meta.get("multi_label", False):
            clf.with_multi_label(saved.meta.get("threshold", 0.5))
        return clf
