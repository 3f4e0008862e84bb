"""fastai checkpoint files: reading the three layouts, vocab remapping, writing `.pth` files.

Every file is normalised to the *canonical* fastai v2 state dict (`dict[str, np.ndarray]`,
the keys and order of a fastai v2 model's `state_dict()`), which `fastai_weights` converts to
our parameter trees. Layouts read (see ULMFIT.md §7):

- fastai v2: `rnns.{l}.weight_hh_l0_raw`; taken as is.
- fastai v1 release: v2 keys plus a dropped copy `rnns.{l}.module.weight_hh_l0`, ignored.
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
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ulmfit_jax.convert.safe_pickle import load_itos, save_itos
from ulmfit_jax.errors import MissingFileError, ModelFileError

KIND_LM = "language_model"
KIND_ENCODER = "encoder"
KIND_CLASSIFIER = "classifier"

# 2018 vocab specials -> fastai v2 names.
OLD_SPECIAL_TOKENS = {"_unk_": "xxunk", "_pad_": "xxpad", "xbos": "xxbos", "xfld": "xxfld"}

_LAYER_KEYS = ("weight_hh_l0_raw", "module.weight_ih_l0", "module.bias_ih_l0", "module.bias_hh_l0")
# Head blocks: BatchNorm at index 0; Linear at 2 (1 when the block's dropout is 0: no Dropout).
_HEAD_KEY = re.compile(r"^1\.layers\.(\d+)\.(0\.(weight|bias|running_mean|running_var|"
                       r"num_batches_tracked)|[12]\.weight)$")
_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class UnsafeCheckpointError(ModelFileError):
    """torch's `weights_only` loader refused the file: it needs full (unsafe) unpickling."""


@dataclasses.dataclass(frozen=True)
class FastaiCheckpoint:
    """A fastai file normalised to canonical fastai v2 keys.

    `kind` is `KIND_LM`, `KIND_ENCODER` (keys `encoder.weight`, ..., as `save_encoder` writes
    them) or `KIND_CLASSIFIER`; `layout` is "v2", "v1" or "2018"; `source` names the file.
    """

    state_dict: dict[str, np.ndarray]
    kind: str
    layout: str
    source: str

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding matrix."""
        return int(self.state_dict[_embedding_key(self.kind)].shape[0])


# ---------------------------------------------------------------------------- canonical keys


def lm_keys(n_layers: int) -> list[str]:
    """fastai v2's 16 (for 3 layers) language-model keys in `state_dict()` order."""
    return [*encoder_keys(n_layers, prefix="0."), "1.decoder.weight", "1.decoder.bias"]


def encoder_keys(n_layers: int, prefix: str = "") -> list[str]:
    """The AWD-LSTM encoder's keys in fastai order, each prefixed with `prefix`."""
    keys = [f"{prefix}encoder.weight", f"{prefix}encoder_dp.emb.weight"]
    for layer in range(n_layers):
        keys += [f"{prefix}rnns.{layer}.{name}" for name in _LAYER_KEYS]
    return keys


def classifier_keys(n_layers: int, linear_index: Sequence[int]) -> list[str]:
    """fastai v2 text classifier keys (`0.module.` encoder, `1.layers.` head) in order.

    `linear_index[k]` is where block k's Linear sits: 2, or 1 when that block has no Dropout.
    """
    keys = encoder_keys(n_layers, prefix="0.module.")
    for block, index in enumerate(linear_index):
        keys += [f"1.layers.{block}.0.{name}" for name in _BN_KEYS]
        keys.append(f"1.layers.{block}.{index}.weight")
    return keys


def _prefix(kind: str) -> str:
    return {KIND_LM: "0.", KIND_ENCODER: "", KIND_CLASSIFIER: "0.module."}[kind]


def _embedding_key(kind: str) -> str:
    return _prefix(kind) + "encoder.weight"


def _linear_index(sd: Mapping[str, Any]) -> list[int]:
    index, block = [], 0
    while f"1.layers.{block}.0.weight" in sd:
        index.append(1 if f"1.layers.{block}.1.weight" in sd else 2)
        block += 1
    return index


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
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Write then rename, so an interrupted export never leaves a truncated file behind.
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------- layouts


def detect_kind(keys: Sequence[str], source: str) -> str:
    """LM, encoder alone or classifier, from the key prefixes."""
    keys = set(keys)
    if any(k.startswith("0.module.") for k in keys):
        return KIND_CLASSIFIER
    if any(k.startswith("1.") for k in keys):
        return KIND_LM
    # `save_encoder` writes bare keys; an LM's encoder alone keeps the `0.` prefix.
    if "encoder.weight" in keys or "0.encoder.weight" in keys:
        return KIND_ENCODER
    raise ModelFileError(
        f"{source}: not a fastai AWD-LSTM checkpoint (no 'encoder.weight', '0.encoder.weight' "
        f"or '0.module.encoder.weight' key; keys: {sorted(keys)[:6]}...)"
    )


def detect_layout(encoder_sd: Mapping[str, np.ndarray]) -> str:
    """'2018', 'v1' or 'v2' from an encoder's un-prefixed keys."""
    if "encoder_with_dropout.embed.weight" in encoder_sd or any(
        k.endswith("module.weight_hh_l0_raw") for k in encoder_sd
    ):
        return "2018"
    if any(re.fullmatch(r"rnns\.\d+\.module\.weight_hh_l0", k) for k in encoder_sd):
        return "v1"
    return "v2"


def _split_prefix(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _n_layers(encoder_sd: Mapping[str, np.ndarray], source: str) -> int:
    layers = {int(m.group(1)) for k in encoder_sd if (m := re.match(r"rnns\.(\d+)\.", k))}
    if not layers or layers != set(range(max(layers) + 1)):
        raise ModelFileError(
            f"{source}: LSTM layers must be numbered 0..n-1, found {sorted(layers)}")
    return max(layers) + 1


def _normalise_encoder(enc: Mapping[str, np.ndarray], source: str, prefix: str) -> tuple[dict, str]:
    """Un-prefixed encoder keys of any layout -> canonical v2 encoder dict with `prefix`."""
    layout = detect_layout(enc)
    n_layers = _n_layers(enc, source)
    dp_key = "encoder_with_dropout.embed.weight" if layout == "2018" else "encoder_dp.emb.weight"
    renamed = {"encoder.weight": "encoder.weight", "encoder_dp.emb.weight": dp_key}
    for layer in range(n_layers):
        for name in _LAYER_KEYS:
            old = name
            if layout == "2018" and name == "weight_hh_l0_raw":
                old = "module.weight_hh_l0_raw"
            renamed[f"rnns.{layer}.{name}"] = f"rnns.{layer}.{old}"
    ignored = set()
    if layout == "v1":  # fastai v1 also saved the dropped-out copy of W_hh: stale, ignore it.
        ignored = {f"rnns.{layer}.module.weight_hh_l0" for layer in range(n_layers)}
    _check_keys(set(enc) - ignored, set(renamed.values()), source, prefix)
    out = {}
    for new, old in renamed.items():
        out[prefix + new] = enc[old]
    return out, layout


def _check_keys(found: set[str], expected: set[str], source: str, prefix: str) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing:
        raise ModelFileError(f"{source}: missing key {prefix}{missing[0]} (missing: {missing})")
    if extra:
        raise ModelFileError(f"{source}: unexpected key {prefix}{extra[0]} (unexpected: {extra})")


def normalise_state_dict(
    sd: Mapping[str, np.ndarray], source: str = "<state dict>"
) -> FastaiCheckpoint:
    """Any supported layout -> `FastaiCheckpoint` with canonical v2 keys, shapes validated."""
    kind = detect_kind(list(sd), source)
    if kind == KIND_ENCODER:
        enc = sd if "encoder.weight" in sd else _split_prefix(sd, "0.")
        out, layout = _normalise_encoder(enc, source, prefix="")
    elif kind == KIND_LM:
        out, layout = _normalise_encoder(_split_prefix(sd, "0."), source, prefix="0.")
        out.update(_normalise_decoder(sd, out, source, layout))
    else:
        out, layout = _normalise_encoder(_split_prefix(sd, "0.module."), source, "0.module.")
        out.update(_normalise_head(sd, source))
    ckpt = FastaiCheckpoint({k: np.asarray(v) for k, v in out.items()}, kind, layout, source)
    validate_shapes(ckpt)
    return ckpt


def _normalise_decoder(sd: Mapping, enc: Mapping, source: str, layout: str) -> dict:
    extra = sorted(k for k in sd if k.startswith("1.") and k not in {"1.decoder.weight",
                                                                      "1.decoder.bias"})
    if extra:
        raise ModelFileError(f"{source}: unexpected key {extra[0]} (unexpected: {extra})")
    if "1.decoder.weight" not in sd:
        raise ModelFileError(f"{source}: missing key 1.decoder.weight")
    bias = sd.get("1.decoder.bias")
    if bias is None:
        if layout != "2018":
            raise ModelFileError(f"{source}: missing key 1.decoder.bias")
        # The 2018 decoder had no bias; zeros give exactly the 2018 model's logits.
        bias = np.zeros(enc["0.encoder.weight"].shape[:1], enc["0.encoder.weight"].dtype)
    return {"1.decoder.weight": sd["1.decoder.weight"], "1.decoder.bias": bias}


def _normalise_head(sd: Mapping, source: str) -> dict:
    head = {k: v for k, v in sd.items() if not k.startswith("0.module.")}
    bad = sorted(k for k in head if not _HEAD_KEY.match(k))
    if bad:
        raise ModelFileError(f"{source}: unexpected key {bad[0]} (unexpected: {bad})")
    blocks = {int(_HEAD_KEY.match(k).group(1)) for k in head}
    if not blocks or blocks != set(range(max(blocks) + 1)):
        raise ModelFileError(
            f"{source}: head blocks must be numbered 0..n-1, found {sorted(blocks)}")
    index = [1 if f"1.layers.{b}.1.weight" in head else 2 for b in range(max(blocks) + 1)]
    expected = set(classifier_keys(0, index)) - set(encoder_keys(0, "0.module."))
    _check_keys(set(head), expected, source, "")
    return head


def validate_shapes(ckpt: FastaiCheckpoint) -> None:
    """Check every tensor's shape against the sizes implied by the embedding and layers."""
    sd, src = ckpt.state_dict, ckpt.source
    p = _prefix(ckpt.kind)
    vocab, emb = _expect_ndim(sd, p + "encoder.weight", 2, src)
    _expect(sd, p + "encoder_dp.emb.weight", (vocab, emb), src)
    n_layers = _n_layers(_split_prefix(sd, p), src)
    n_in = emb
    for layer in range(n_layers):
        four_h, hid = _expect_ndim(sd, f"{p}rnns.{layer}.weight_hh_l0_raw", 2, src)
        if four_h != 4 * hid:
            raise ModelFileError(f"{src}: {p}rnns.{layer}.weight_hh_l0_raw has shape "
                             f"{(four_h, hid)}, expected (4 * hidden, hidden)")
        _expect(sd, f"{p}rnns.{layer}.module.weight_ih_l0", (4 * hid, n_in), src)
        _expect(sd, f"{p}rnns.{layer}.module.bias_ih_l0", (4 * hid,), src)
        _expect(sd, f"{p}rnns.{layer}.module.bias_hh_l0", (4 * hid,), src)
        n_in = hid
    if n_in != emb:
        raise ModelFileError(f"{src}: the last LSTM layer is {n_in} wide but the embedding is "
                             f"{emb}; the tied decoder needs them equal")
    _check_tied(sd, p, src)
    if ckpt.kind == KIND_LM:
        _expect(sd, "1.decoder.weight", (vocab, emb), src)
        _expect(sd, "1.decoder.bias", (vocab,), src)
    elif ckpt.kind == KIND_CLASSIFIER:
        _validate_head(sd, 3 * emb, src)


def _validate_head(sd: Mapping, n_in: int, src: str) -> None:
    for block, index in enumerate(_linear_index(sd)):
        bn = f"1.layers.{block}.0."
        for name in ("weight", "bias", "running_mean", "running_var"):
            _expect(sd, bn + name, (n_in,), src)
        _expect(sd, bn + "num_batches_tracked", (), src)
        linear = f"1.layers.{block}.{index}.weight"
        n_out, _ = _expect_ndim(sd, linear, 2, src)
        _expect(sd, linear, (n_out, n_in), src)
        n_in = n_out


def _check_tied(sd: Mapping, p: str, src: str) -> None:
    # fastai ties these to one tensor; differing copies mean an edited file we can't interpret.
    emb = sd[p + "encoder.weight"]
    for key in (p + "encoder_dp.emb.weight", "1.decoder.weight"):
        if key in sd and not np.array_equal(sd[key], emb):
            raise ModelFileError(f"{src}: {key} differs from {p}encoder.weight; fastai ties them")


def _expect_ndim(sd: Mapping, key: str, ndim: int, src: str) -> tuple[int, ...]:
    shape = tuple(np.shape(sd[key]))
    if len(shape) != ndim:
        raise ModelFileError(f"{src}: {key} has shape {shape}, expected {ndim} dimensions")
    return shape


def _expect(sd: Mapping, key: str, shape: tuple[int, ...], src: str) -> None:
    if key not in sd:
        raise ModelFileError(f"{src}: missing key {key}")
    if tuple(np.shape(sd[key])) != tuple(shape):
        raise ModelFileError(f"{src}: {key} has shape {tuple(np.shape(sd[key]))}, expected {shape}")


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
        key = _embedding_key(ckpt.kind)
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
    n_layers = _n_layers(_split_prefix(ckpt.state_dict, "0."), ckpt.source)
    save_torch_state_dict({k: ckpt.state_dict[k] for k in lm_keys(n_layers)}, weights_path)
    save_itos(itos, itos_path)


def save_encoder(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write the encoder as fastai's `save_encoder` does (keys without the `0.` prefix)."""
    ckpt = normalise_state_dict(state_dict, source="<encoder to save>")
    p = _prefix(ckpt.kind)
    n_layers = _n_layers(_split_prefix(ckpt.state_dict, p), ckpt.source)
    save_torch_state_dict({k: ckpt.state_dict[p + k] for k in encoder_keys(n_layers)}, path)


def save_classifier(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write a bare classifier state dict that fastai's `Learner.load` reads.

    fastai's text `Learner.load` accepts a bare state dict (no optimizer state, no warning
    unless `with_opt=True`).
    """
    ckpt = normalise_state_dict(state_dict, source="<classifier to save>")
    if ckpt.kind != KIND_CLASSIFIER:
        raise ModelFileError(f"expected a classifier state dict, got a {ckpt.kind}")
    sd = ckpt.state_dict
    n_layers = _n_layers(_split_prefix(sd, "0.module."), ckpt.source)
    keys = classifier_keys(n_layers, _linear_index(sd))
    save_torch_state_dict({k: sd[k] for k in keys}, path)
