"""The saved-model directory: what `LanguageModel.save` / `TextClassifier.save` write and
`load` reads.

```
<directory>/
  state/           orbax StandardCheckpointer: parameters and BatchNorm statistics (pure dict)
  vocab.json       `Vocab.save`'s format
  tokenizer.json   the tokenizer spec (+ tokenizer.model for SentencePiece; text.tokenizer_spec)
  config.json      {"format_version", "kind", <meta: direction, class names, ...>, "config"}
```
`config` is the model config's `to_dict()`. The directory is written atomically
(`atomic_io.atomic_directory`): everything goes into a hidden versioned sibling, fsynced, and
`<directory>` becomes a symbolic link to it in one rename, so it always names one complete model,
the old or the new one, whenever a writer stops; `load_saved_model` reads one version whole even
while another process saves over it. config.json is written last.

Format versions: 2 adds the tokenizer spec, the direction and the class names. Version 1
directories (none of them) still load, for use on ids.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from flax import nnx

from ulmfit_jax.api.module_state import set_state
from ulmfit_jax.atomic_io import atomic_directory, read_directory
from ulmfit_jax.errors import MissingFileError, ModelFileError, disk_full_is_clear
from ulmfit_jax.text.tokenizer_spec import Tokenizer, has_tokenizer, load_tokenizer, save_tokenizer
from ulmfit_jax.text.vocab import Vocab

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
STATE_DIR, CONFIG_FILE, VOCAB_FILE = "state", "config.json", "vocab.json"
KIND_LM, KIND_CLASSIFIER = "language_model", "classifier"
M = TypeVar("M", bound=nnx.Module)


@dataclasses.dataclass(frozen=True)
class SavedModel:
    """What `read_saved_model` finds: config.json's content, vocab, state path, tokenizer."""

    meta: dict
    vocab: list[str]
    state_path: str
    tokenizer: Tokenizer | None

    @property
    def config(self) -> dict[str, Any]:
        """The model config as `to_dict()` wrote it."""
        return self.meta["config"]


def write_saved_model(
    directory: str | os.PathLike, kind: str, config: dict, vocab: Sequence[str],
    state: Mapping[str, Any], overwrite: bool, meta: Mapping[str, Any],
    tokenizer: Tokenizer | None,
) -> None:
    """Write state/config/vocab/tokenizer into a new version, then link it into place.

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


def load_saved_model(directory: str | os.PathLike, kind: str,
                     build: Callable[[SavedModel], M]) -> tuple[SavedModel, M]:
    """`read_saved_model`, then the module `build` makes from it, filled by `restore_state`: all
    from the one version of `directory` it names now, even while a save replaces it."""
    def read(root: str) -> tuple[SavedModel, M]:
        saved = read_saved_model(root, kind)
        module = build(saved)
        restore_state(module, saved.state_path)
        return saved, module
    return read_directory(directory, read)


def read_saved_model(directory: str | os.PathLike, kind: str) -> SavedModel:
    """config.json, vocab, orbax state path and tokenizer of a saved model directory."""
    root = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(root):
        raise MissingFileError(f"{root}: no such model directory")
    for name in (CONFIG_FILE, VOCAB_FILE, STATE_DIR):
        if not os.path.exists(os.path.join(root, name)):
            raise MissingFileError(
                f"{root} is not a saved {kind} directory: missing {os.path.join(root, name)}"
            )
    meta = _read_meta(root, kind)
    vocab = Vocab.load(os.path.join(root, VOCAB_FILE)).itos
    tokenizer = load_tokenizer(root) if has_tokenizer(root) else None
    return SavedModel(meta, vocab, os.path.join(root, STATE_DIR), tokenizer)


def restore_state(module: nnx.Module, state_path: str) -> None:
    """Fill `module` (built from config.json, possibly shapes only) with the saved state."""
    template = nnx.to_pure_dict(nnx.state(module))
    # Host arrays as the target: restored the same way in one process or many.
    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), template)
    try:
        with _local_checkpointer() as ckptr:
            restored = ckptr.restore(state_path, target)
    except Exception as e:
        raise ModelFileError(f"{state_path}: cannot restore the saved parameters into a model "
                             f"built from config.json ({type(e).__name__}: {str(e)[:300]})") from e
    set_state(module, restored, state_path)


def _read_meta(root: str, kind: str) -> dict:
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
    return meta


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
