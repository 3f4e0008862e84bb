"""fastai checkpoint files: reading the three layouts, vocab remapping, writing `.pth` files.

Every file is normalised to the *canonical* fastai v2 state dict (`dict[str, np.ndarray]`,
the keys and order of a fastai v2 model's `state_dict()`), which `fastai_weights` converts to
our parameter trees. Layouts read (see docs/fastai_formats.md):

- fastai v2: `rnns.{l}.weight_hh_l0_raw`; taken as is.
- fastai v1 release: v2 keys plus a dropped copy `rnns.{l}.module.weight_hh_l0` (an AWD-QRNN's:
  `rnns.{l}.layers.0.linear.module.weight`), ignored.
- 2018 (fastai 0.7 `.h5`, a torch file): `encoder_with_dropout.embed.weight` and
  `rnns.{l}.module.weight_hh_l0_raw`, renamed; its decoder has no bias, read as zeros (which
  gives exactly the 2018 model's logits).

each as a language model (`0.encoder...`, `1.decoder...`), an encoder saved alone
(`learn.save_encoder`: `encoder...`) or a v2 classifier (`0.module.encoder...`, `1.layers...`),
bare or wrapped as `{'model': state_dict, 'opt': ...}`. Sizes come from the tensors' shapes.

torch is needed only here and is imported lazily (`pip install 'ulmfit-jax[convert]'`).
Files are always read with `torch.load(..., weights_only=True)`: no code in them can run.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ulmfit_jax.atomic_io import atomic_write
from ulmfit_jax.convert import fastai_layout as layout
from ulmfit_jax.convert.fastai_layout import (
    KIND_CLASSIFIER,
    KIND_ENCODER,
    KIND_LM,
    PREFIXES,
    LayoutSizes,
)
from ulmfit_jax.convert.safe_pickle import load_itos, save_itos
from ulmfit_jax.errors import MissingFileError, ModelFileError

# 2018 vocab specials -> fastai v2 names.
OLD_SPECIAL_TOKENS = {"_unk_": "xxunk", "_pad_": "xxpad", "xbos": "xxbos", "xfld": "xxfld"}
# 2018 encoder keys -> fastai v2 names (the LSTM's raw W_hh sat inside its WeightDrop module).
_RENAMED_2018 = {"encoder_with_dropout.embed.weight": "encoder_dp.emb.weight"}
_W_HH_2018 = re.compile(r"rnns\.(\d+)\.module\.weight_hh_l0_raw")


class UnsafeCheckpointError(ModelFileError):
    """torch's `weights_only` loader refused the file: it needs full (unsafe) unpickling."""


@dataclasses.dataclass(frozen=True)
class FastaiCheckpoint:
    """A fastai file normalised to canonical fastai v2 keys, in fastai's order.

    `kind` is `KIND_LM`, `KIND_ENCODER` (keys `encoder.weight`, ..., as `save_encoder` writes
    them) or `KIND_CLASSIFIER`; `layout` is "v2", "v1" or "2018"; `source` names the file;
    `sizes` are read from the shapes.
    """

    state_dict: dict[str, np.ndarray]
    kind: str
    layout: str
    source: str
    sizes: LayoutSizes

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding matrix."""
        return self.sizes.vocab


# ---------------------------------------------------------------------------- torch I/O


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "reading or writing fastai checkpoints needs PyTorch: "
            "pip install 'ulmfit-jax[convert]' (install the torch CPU wheel first)"
        ) from e
    return torch


class _DiscardedObject:
    """Inert stand-in for the few non-tensor globals in fastai's optimizer state.

    `learn.save` writes `{'model': ..., 'opt': opt.state_dict()}` whose hyper-parameters are a
    fastcore `L` of dicts, sometimes holding numpy scalars. Admitting this class under those
    names lets `weights_only=True` read such files; the optimizer state is then dropped, and
    nothing from fastcore or numpy is imported or called.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> _DiscardedObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _optimizer_state_globals() -> list[tuple[Any, str]]:
    names = ["fastcore.foundation.L", "numpy.dtype"]
    for core in ("numpy.core", "numpy._core"):
        names.append(f"{core}.multiarray.scalar")
    dtypes = getattr(np, "dtypes", np).__dict__
    names += [f"numpy.dtypes.{n}" for n in dtypes if n.endswith("DType")]
    return [(_DiscardedObject, name) for name in names]


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `.pth`/`.h5` torch file safely; unwrap `{'model', 'opt'}`; tensors -> numpy.

    Raises `UnsafeCheckpointError` when the file needs full unpickling, `ValueError` naming the
    file when it is not a state dict of tensors.
    """
    torch = _import_torch()
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise MissingFileError(f"no such checkpoint file: {source}")
    try:
        with torch.serialization.safe_globals(_optimizer_state_globals()):
            obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights_only" in str(e) or "Weights only" in str(e):
            found = re.search(r"(Unsupported global|Unsupported operand)[^\n]*", str(e))
            what = found.group(0).split(" was not")[0] if found else "see the chained error"
            raise UnsafeCheckpointError(
                f"{source}: refused by torch.load(weights_only=True); the file holds objects "
                f"other than tensors and plain containers ({what}). If you trust it, re-save "
                "the weights alone (fastai: learn.save(name, with_opt=False))"
            ) from e
        raise ModelFileError(
            f"{source}: not a readable torch checkpoint ({type(e).__name__}: {e})"
        ) from e
    if isinstance(obj, Mapping) and set(obj) == {"model", "opt"}:
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ModelFileError(f"{source}: expected a state dict, got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{source}: {key!r} is {type(value).__name__}, expected a tensor")
        out[str(key)] = value.detach().cpu().numpy()
    return out


def save_torch_state_dict(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """`torch.save` an OrderedDict of torch tensors in `state_dict`'s order (a bare state dict)."""
    torch = _import_torch()
    tensors = collections.OrderedDict(
        (k, torch.from_numpy(np.array(v, copy=True))) for k, v in state_dict.items()
    )
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    atomic_write(path, buffer.getvalue())  # an interrupted export leaves no truncated file


# ---------------------------------------------------------------------------- layouts


def detect_kind(keys: Sequence[str], source: str) -> str:
    """LM, encoder alone or classifier, from the key prefixes."""
    key_set = set(keys)
    if any(k.startswith("0.module.") for k in key_set):
        return KIND_CLASSIFIER
    if any(k.startswith("1.") for k in key_set):
        return KIND_LM
    # `save_encoder` writes bare keys; an LM's encoder alone keeps the `0.` prefix.
    if "encoder.weight" in key_set or "0.encoder.weight" in key_set:
        return KIND_ENCODER
    raise ModelFileError(
        f"{source}: not a fastai AWD-LSTM checkpoint, nor an AWD-QRNN one (no 'encoder.weight', "
        f"'0.encoder.weight' or '0.module.encoder.weight' key; keys: {sorted(key_set)[:6]}...)"
    )


def detect_layout(encoder_sd: Mapping[str, np.ndarray]) -> str:
    """'2018', 'v1' or 'v2' from an encoder's un-prefixed keys."""
    if "encoder_with_dropout.embed.weight" in encoder_sd or any(
        k.endswith("module.weight_hh_l0_raw") for k in encoder_sd
    ):
        return "2018"
    if any(layout.V1_DROPPED_COPY.fullmatch(k) for k in encoder_sd):
        return "v1"
    return "v2"


def _v2_encoder_key(key: str, layout_name: str) -> str | None:
    """The fastai v2 name of an un-prefixed encoder key of `layout_name` (None: drop it)."""
    if layout_name == "2018":
        if key in _RENAMED_2018:
            return _RENAMED_2018[key]
        if m := _W_HH_2018.fullmatch(key):
            return f"rnns.{m.group(1)}.weight_hh_l0_raw"
    if layout_name == "v1" and layout.V1_DROPPED_COPY.fullmatch(key):
        return None  # fastai v1 also saved the dropped-out copy of W_hh: stale, ignore it
    return key


def normalise_state_dict(
    sd: Mapping[str, np.ndarray], source: str = "<state dict>"
) -> FastaiCheckpoint:
    """Any supported layout -> `FastaiCheckpoint` with canonical v2 keys, shapes validated."""
    kind = detect_kind(list(sd), source)
    # `save_encoder` writes bare keys; an LM's encoder alone keeps the `0.` prefix.
    in_prefix = "0." if kind == KIND_ENCODER and "encoder.weight" not in sd else PREFIXES[kind]
    encoder = {k[len(in_prefix):]: v for k, v in sd.items() if k.startswith(in_prefix)}
    layout_name = detect_layout(encoder)
    out = {PREFIXES[kind] + new: v for k, v in encoder.items()
           if (new := _v2_encoder_key(k, layout_name)) is not None}
    out.update({k: v for k, v in sd.items() if not k.startswith(in_prefix)})
    if kind == KIND_LM and layout_name == "2018" and "1.decoder.bias" not in out:
        # The 2018 decoder had no bias; zeros give exactly the 2018 model's logits.
        emb = out["0.encoder.weight"]
        out["1.decoder.bias"] = np.zeros(np.shape(emb)[:1], np.asarray(emb).dtype)
    sizes = layout.validate(out, kind, source)
    ordered = {k: np.asarray(out[k]) for k in layout.expected_shapes(kind, sizes)}
    return FastaiCheckpoint(ordered, kind, layout_name, source, sizes)


# ---------------------------------------------------------------------------- reading


def read_checkpoint(path: str | os.PathLike) -> FastaiCheckpoint:
    """Read a fastai file of any supported layout as canonical v2 keys (see module doc)."""
    return normalise_state_dict(load_torch_state_dict(path), source=os.fspath(path))


def read_vocab(path: str | os.PathLike) -> list[str]:
    """Read an itos pickle safely; 2018 specials (`_unk_`, `_pad_`, `xbos`, `xfld`) renamed."""
    return normalise_special_tokens(load_itos(path))


def normalise_special_tokens(itos: Sequence[str]) -> list[str]:
    """Rename 2018 special tokens to fastai v2's, unless the vocab already uses v2 names."""
    if "xxunk" in itos or "_unk_" not in itos:
        return list(itos)
    return [OLD_SPECIAL_TOKENS.get(t, t) for t in itos]


def read_language_model(
    weights_path: str | os.PathLike,
    itos_path: str | os.PathLike,
    new_vocab: Sequence[str] | None = None,
) -> tuple[FastaiCheckpoint, list[str]]:
    """Read a fastai file of any kind with its vocab; optionally remap onto `new_vocab`.

    Returns the canonical checkpoint (rows in the returned vocab's order) and that vocab.
    """
    ckpt = read_checkpoint(weights_path)
    itos = read_vocab(itos_path)
    check_vocab_matches(ckpt, itos, os.fspath(itos_path))
    if new_vocab is not None:
        ckpt = dataclasses.replace(ckpt, state_dict=remap_vocab(ckpt.state_dict, itos, new_vocab))
        itos = list(new_vocab)
    return ckpt, itos


def check_vocab_matches(ckpt: FastaiCheckpoint, itos: Sequence[str], itos_source: str) -> None:
    """ValueError naming both files when the vocab length differs from the embedding rows."""
    if len(itos) != ckpt.vocab_size:
        key = layout.embedding_key(ckpt.kind)
        shape = tuple(ckpt.state_dict[key].shape)
        raise ModelFileError(
            f"{itos_source} has {len(itos)} tokens but {ckpt.source}: {key} has shape {shape} "
            f"({ckpt.vocab_size} rows); the vocab must be the one the weights were trained with"
        )


# ---------------------------------------------------------------------------- vocab remap


def remap_rows(
    old: np.ndarray, old_itos: Sequence[str], new_itos: Sequence[str]
) -> np.ndarray:
    """Rows of `old` ([old_vocab, ...]) re-ordered for `new_itos`; new words get the mean row.

    A token repeated in `old_itos` (fastai's `xxfake` padding) maps to its last occurrence,
    as in fastai's `match_embeds`.
    """
    if len(old) != len(old_itos):
        raise ModelFileError(f"{len(old_itos)} tokens for a matrix of shape {tuple(old.shape)}")
    index = {tok: i for i, tok in enumerate(old_itos)}
    pos = np.array([index.get(t, -1) for t in new_itos], dtype=np.int64)
    out = np.empty((len(new_itos), *old.shape[1:]), dtype=old.dtype)
    out[pos >= 0] = old[pos[pos >= 0]]
    out[pos < 0] = old.mean(axis=0, dtype=np.float64).astype(old.dtype)
    return out


def remap_vocab(
    state_dict: Mapping[str, np.ndarray], old_itos: Sequence[str], new_itos: Sequence[str]
) -> dict[str, np.ndarray]:
    """Canonical LM/encoder/classifier dict onto `new_itos` (embedding, tied copies, bias)."""
    p = next(p for p in ("0.module.", "0.", "") if p + "encoder.weight" in state_dict)
    out = dict(state_dict)
    emb = remap_rows(np.asarray(state_dict[p + "encoder.weight"]), old_itos, new_itos)
    out[p + "encoder.weight"] = emb
    if p + "encoder_dp.emb.weight" in out:
        out[p + "encoder_dp.emb.weight"] = emb.copy()
    if "1.decoder.weight" in out:
        out["1.decoder.weight"] = emb.copy()
    if "1.decoder.bias" in out:
        out["1.decoder.bias"] = remap_rows(np.asarray(out["1.decoder.bias"]), old_itos, new_itos)
    return out


def remap_vocab_params(
    params: Mapping[str, Any], old_itos: Sequence[str], new_itos: Sequence[str]
) -> dict[str, Any]:
    """The same remap on our parameter tree (`encoder/embedding`, optional `decoder_bias`)."""
    out = dict(params)
    encoder = dict(out["encoder"])
    encoder["embedding"] = remap_rows(np.asarray(encoder["embedding"]), old_itos, new_itos)
    out["encoder"] = encoder
    if "decoder_bias" in out:
        out["decoder_bias"] = remap_rows(np.asarray(out["decoder_bias"]), old_itos, new_itos)
    return out


# ---------------------------------------------------------------------------- writing


def save_language_model(
    state_dict: Mapping[str, np.ndarray],
    itos: Sequence[str],
    weights_path: str | os.PathLike,
    itos_path: str | os.PathLike,
) -> None:
    """Write a `.pth` + itos pickle that fastai's `load_pretrained` and `Learner.load` read.

    `load_pretrained` copies tensors by position, so the keys go in fastai's exact order,
    tied copies included.
    """
    ckpt = normalise_state_dict(state_dict, source="<language model to save>")
    if ckpt.kind != KIND_LM:
        raise ModelFileError(f"expected a language-model state dict, got a {ckpt.kind}")
    check_vocab_matches(ckpt, itos, "<vocab to save>")
    save_torch_state_dict(ckpt.state_dict, weights_path)
    save_itos(itos, itos_path)


def save_encoder(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write the encoder as fastai's `save_encoder` does (keys without the `0.` prefix)."""
    ckpt = normalise_state_dict(state_dict, source="<encoder to save>")
    p = PREFIXES[ckpt.kind]
    keys = layout.encoder_keys(ckpt.sizes.n_layers, encoder_kind=ckpt.sizes.encoder_kind)
    save_torch_state_dict({k: ckpt.state_dict[p + k] for k in keys}, path)


def save_classifier(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write a bare classifier state dict that fastai's `Learner.load` reads.

    fastai's text `Learner.load` accepts a bare state dict (no optimizer state, no warning
    unless `with_opt=True`).
    """
    ckpt = normalise_state_dict(state_dict, source="<classifier to save>")
    if ckpt.kind != KIND_CLASSIFIER:
        raise ModelFileError(f"expected a classifier state dict, got a {ckpt.kind}")
    save_torch_state_dict(ckpt.state_dict, path)
