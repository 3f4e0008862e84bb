"""Public API: `LanguageModel` and `TextClassifier` (fastai files in and out, save/load, eval).

```python
lm = LanguageModel.from_fastai("lstm_fwd.pth", "itos_wt103.pkl", new_vocab=my_vocab)
logits, state = lm(ids)               # ids int32 [batch, time]; eval mode, zero state
logits, state = lm(ids2, state)       # state carried; a batch-size change is handled as fastai
lm.save("my_lm"); lm = LanguageModel.load("my_lm")
lm.to_fastai("lstm.pth", "itos.pkl")  # fastai's load_pretrained / Learner.load read these
clf = TextClassifier.from_language_model(lm, n_classes=2)
logits = clf(ids)                     # padded batch in fastai layout -> [batch, n_classes]
```

Each wrapper holds an NNX module (`.module`) and its vocab; training code takes the module or
its pure parameter dict (`.params`). A saved directory holds `state/` (orbax StandardCheckpointer:
parameters and BatchNorm statistics), `config.json` and `vocab.json` (`Vocab.save`'s format), and
is written atomically: everything goes into a hidden temporary sibling directory that is renamed
into place only when complete (a killed process can leave that sibling, never a partial model).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ulmfit_jax.convert import fastai_files, fastai_weights
from ulmfit_jax.convert.safe_pickle import save_itos
from ulmfit_jax.errors import MissingFileError, ModelFileError, disk_full_is_clear
from ulmfit_jax.model.classifier import AWDLSTMClassifier
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.model.encoder import EncoderState, zero_state
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel, resize_state
from ulmfit_jax.text.vocab import Vocab

FORMAT_VERSION = 1
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
    state: Mapping[str, Any], overwrite: bool,
) -> None:
    """Write state/config/vocab into a temporary sibling, then rename it to `directory`."""
    import orbax.checkpoint as ocp

    final = os.path.abspath(os.fspath(directory))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex}")
    try:
        with disk_full_is_clear(f"the model {final}"):
            os.makedirs(tmp)
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(os.path.join(tmp, STATE_DIR), state)
                ckptr.wait_until_finished()
            Vocab(vocab).save(os.path.join(tmp, VOCAB_FILE))
            # config.json last: its presence marks a complete directory.
            _write_json(os.path.join(tmp, CONFIG_FILE),
                        {"format_version": FORMAT_VERSION, "kind": kind, "config": config})
            _swap_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_into_place(tmp: str, final: str) -> None:
    # Directory renames are atomic; an old model is moved aside first and removed only after
    # the new one is in place, so a crash leaves either the old or the new model, never a mix.
    old = None
    if os.path.exists(final):
        old = f"{tmp}.old"
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old)


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)


def _read_directory(directory: str | os.PathLike, kind: str) -> tuple[dict, list[str], str]:
    """config dict, vocab and the orbax state path of a saved model directory."""
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
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{root}/{CONFIG_FILE}: unsupported format_version "
                             f"{meta.get('format_version')!r} (expected {FORMAT_VERSION})")
    vocab = Vocab.load(os.path.join(root, VOCAB_FILE)).itos
    return meta["config"], vocab, os.path.join(root, STATE_DIR)


def _restore_state(module: nnx.Module, state_path: str) -> None:
    import orbax.checkpoint as ocp

    template = nnx.to_pure_dict(nnx.state(module))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
        with ocp.StandardCheckpointer() as ckptr:
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


def _check_vocab(vocab: Sequence[str] | Vocab, vocab_size: int, source: str) -> list[str]:
    vocab = _itos(vocab)
    if len(vocab) != vocab_size:
        raise ValueError(f"{source}: vocab has {len(vocab)} tokens but the model has "
                         f"{vocab_size} embedding rows")
    return vocab


# ---------------------------------------------------------------------------- LanguageModel


class LanguageModel:
    """An AWD-LSTM language model with its vocab: fastai files, eval forward, save/load."""

    def __init__(self, module: AWDLSTMLanguageModel, vocab: Sequence[str] | Vocab):
        self.module = module
        self.vocab = _check_vocab(vocab, module.config.vocab_size, "LanguageModel")

    @property
    def config(self) -> AWDLSTMConfig:
        """The model's `AWDLSTMConfig`."""
        return self.module.config

    @property
    def params(self) -> dict[str, Any]:
        """Pure dict of the parameters (see ARCHITECTURE.md)."""
        return nnx.to_pure_dict(nnx.state(self.module, nnx.Param))

    @classmethod
    def create(cls, config: AWDLSTMConfig, vocab: Sequence[str], seed: int = 0) -> LanguageModel:
        """A freshly initialised model (fastai's initialisation)."""
        return cls(AWDLSTMLanguageModel(config, rngs=nnx.Rngs(seed)), vocab)

    @classmethod
    def from_params(
        cls, config: AWDLSTMConfig, params: Mapping[str, Any], vocab: Sequence[str]
    ) -> LanguageModel:
        """Build from a parameter pure dict (shapes checked against `config`)."""
        module = nnx.eval_shape(lambda: AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0)))
        _set_state(module, params, "LanguageModel.from_params")
        return cls(module, vocab)

    @classmethod
    def from_fastai(
        cls,
        weights_path: str | os.PathLike,
        itos_path: str | os.PathLike,
        new_vocab: Sequence[str] | Vocab | None = None,
        **config_overrides: Any,
    ) -> LanguageModel:
        """Read a fastai LM file (v2, v1 or 2018 layout) and its itos pickle.

        With `new_vocab`, rows are remapped: known words keep their row, new ones get the mean.
        `config_overrides` (e.g. `drop_mult=0.3`) replace fields of the LM config read from
        the file's shapes.
        """
        ckpt, vocab = fastai_files.read_language_model(weights_path, itos_path, _itos(new_vocab))
        if ckpt.kind != fastai_files.KIND_LM:
            raise ModelFileError(f"{ckpt.source}: file kind {ckpt.kind!r}, not a language model")
        config, params = fastai_weights.lm_params_from_fastai(ckpt.state_dict)
        return cls.from_params(dataclasses.replace(config, **config_overrides), params, vocab)

    def to_fastai(self, weights_path: str | os.PathLike, itos_path: str | os.PathLike) -> None:
        """Write `.pth` + itos pickle for fastai's `load_pretrained` / `Learner.load`."""
        sd = fastai_weights.lm_params_to_fastai(self.params)
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
        elif state[0][0].shape[0] != batch:
            state = resize_state(state, batch)
        graphdef, params = nnx.split(self.module)
        return _lm_forward(graphdef, params, ids, state)

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> None:
        """Save params (orbax), `config.json` and `vocab.json` to `directory`, atomically."""
        _write_directory(directory, "language_model", _config_to_json(self.config), self.vocab,
                         nnx.to_pure_dict(nnx.state(self.module)), overwrite)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> LanguageModel:
        """Load a directory written by `save`."""
        config, vocab, state_path = _read_directory(directory, "language_model")
        config = _config_from_json(config)
        module = nnx.eval_shape(lambda: AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0)))
        _restore_state(module, state_path)
        return cls(module, vocab)


# ---------------------------------------------------------------------------- TextClassifier


class TextClassifier:
    """An AWD-LSTM text classifier with its vocab: fastai files, eval forward, save/load."""

    def __init__(self, module: AWDLSTMClassifier, vocab: Sequence[str] | Vocab):
        self.module = module
        self.vocab = _check_vocab(vocab, module.config.encoder.vocab_size, "TextClassifier")

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
        cls, config: ClassifierConfig, vocab: Sequence[str], seed: int = 0
    ) -> TextClassifier:
        """A freshly initialised classifier."""
        return cls(AWDLSTMClassifier(config, rngs=nnx.Rngs(seed)), vocab)

    @classmethod
    def from_params(
        cls, config: ClassifierConfig, params: Mapping[str, Any], vocab: Sequence[str],
        batch_stats: Mapping[str, Any],
    ) -> TextClassifier:
        """Build from a parameter pure dict and the BatchNorm running statistics (the trainer's
        `params` / `batch_stats` trees; shapes checked against `config`)."""
        module = nnx.eval_shape(lambda: AWDLSTMClassifier(config, rngs=nnx.Rngs(0)))
        _set_state(module, _merge_trees(params, batch_stats), "TextClassifier.from_params")
        return cls(module, vocab)

    @classmethod
    def from_encoder(
        cls,
        encoder_params: Mapping[str, Any],
        encoder_config: AWDLSTMConfig,
        vocab: Sequence[str],
        n_classes: int,
        drop_mult: float = CLASSIFIER_DROP_MULT,
        seed: int = 0,
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
            lstm_impl=encoder_config.lstm_impl,
        )
        config = ClassifierConfig(encoder=enc, n_classes=n_classes, **classifier_options)
        clf = cls.create(config, vocab, seed)
        state = clf.state
        state["encoder"] = encoder_params
        _set_state(clf.module, state, "TextClassifier.from_encoder")
        return clf

    @classmethod
    def from_language_model(
        cls, lm: LanguageModel, n_classes: int, drop_mult: float = CLASSIFIER_DROP_MULT,
        seed: int = 0, **classifier_options: Any,
    ) -> TextClassifier:
        """A new classifier on `lm`'s encoder (ULMFiT stage 3); see `from_encoder`."""
        return cls.from_encoder(lm.params["encoder"], lm.config, lm.vocab, n_classes,
                                drop_mult, seed, **classifier_options)

    @classmethod
    def from_fastai(
        cls,
        weights_path: str | os.PathLike,
        itos_path: str | os.PathLike,
        n_classes: int | None = None,
        new_vocab: Sequence[str] | Vocab | None = None,
        drop_mult: float = CLASSIFIER_DROP_MULT,
        seed: int = 0,
        **classifier_options: Any,
    ) -> TextClassifier:
        """Read a fastai classifier file, or start one from an LM / `save_encoder` file.

        A classifier file gives the whole model (`n_classes`, if given, must agree). An LM or
        encoder-only file needs `n_classes` and gets a fresh head (seeded by `seed`).
        `classifier_options` (bptt, max_len; head_sizes for a new head) go to `ClassifierConfig`.
        """
        ckpt, vocab = fastai_files.read_language_model(weights_path, itos_path, _itos(new_vocab))
        if ckpt.kind == fastai_files.KIND_CLASSIFIER:
            return cls._from_classifier_file(ckpt, vocab, n_classes, drop_mult,
                                             **classifier_options)
        if n_classes is None:
            raise ModelFileError(f"{ckpt.source}: file kind {ckpt.kind!r}, not a classifier; "
                                 "pass n_classes to start a classifier on its encoder")
        if ckpt.kind == fastai_files.KIND_LM:
            config, params = fastai_weights.lm_params_from_fastai(ckpt.state_dict)
            encoder = params["encoder"]
        else:
            config, encoder = fastai_weights.encoder_params_from_fastai(ckpt.state_dict)
        return cls.from_encoder(encoder, config, vocab, n_classes, drop_mult, seed,
                                **classifier_options)

    @classmethod
    def _from_classifier_file(
        cls, ckpt: fastai_files.FastaiCheckpoint, vocab: list[str], n_classes: int | None,
        drop_mult: float, **classifier_options: Any,
    ) -> TextClassifier:
        config, state = fastai_weights.classifier_params_from_fastai(ckpt.state_dict)
        if n_classes is not None and n_classes != config.n_classes:
            raise ModelFileError(f"{ckpt.source}: the head has {config.n_classes} classes, "
                                 f"n_classes={n_classes} was requested")
        encoder = dataclasses.replace(config.encoder, drop_mult=drop_mult)
        config = dataclasses.replace(config, encoder=encoder, **classifier_options)
        module = nnx.eval_shape(lambda: AWDLSTMClassifier(config, rngs=nnx.Rngs(0)))
        _set_state(module, state, ckpt.source)
        return cls(module, vocab)

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

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> None:
        """Save params + BatchNorm stats (orbax), `config.json`, `vocab.json`, atomically."""
        _write_directory(directory, "classifier", _classifier_config_to_json(self.config),
                         self.vocab, self.state, overwrite)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextClassifier:
        """Load a directory written by `save`."""
        config, vocab, state_path = _read_directory(directory, "classifier")
        config = _classifier_config_from_json(config)
        module = nnx.eval_shape(lambda: AWDLSTMClassifier(config, rngs=nnx.Rngs(0)))
        _restore_state(module, state_path)
        return cls(module, vocab)
