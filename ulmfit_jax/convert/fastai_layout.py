"""fastai v2's AWD-LSTM state-dict layout: the one place that knows its keys, order and shapes.

Keys of a fastai 2.8 `state_dict()` (fastai/text/models/awdlstm.py, core.py), in order:
- encoder: `encoder.weight` [vocab, emb], its dropout copy `encoder_dp.emb.weight` (tied), then
  per LSTM layer l: `rnns.{l}.weight_hh_l0_raw` [4h, h], `rnns.{l}.module.weight_ih_l0`
  [4h, in], `rnns.{l}.module.bias_ih_l0` [4h], `rnns.{l}.module.bias_hh_l0` [4h]; every layer
  is `hidden` wide except the last, which is `emb` wide so that the decoder can be tied;
- language model: the encoder under `0.`, then `1.decoder.weight` (tied) and `1.decoder.bias`;
- encoder saved alone (`learn.save_encoder`): the encoder keys without a prefix;
- classifier: the encoder under `0.module.`, then per head block k the BatchNorm1d
  `1.layers.{k}.0.{weight,bias,running_mean,running_var,num_batches_tracked}` and the Linear
  (no bias) `1.layers.{k}.2.weight`, or `.1.weight` when the block has no Dropout (p = 0).
fastai's `load_pretrained` copies tensors by position, so writers must keep this order.
fastai v1 files also hold DropConnect's dropped copy `rnns.{l}.module.weight_hh_l0`: derived
data, ignored here.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from ulmfit_jax.errors import ModelFileError

KIND_LM = "language_model"
KIND_ENCODER = "encoder"
KIND_CLASSIFIER = "classifier"
PREFIXES = {KIND_LM: "0.", KIND_ENCODER: "", KIND_CLASSIFIER: "0.module."}

LAYER_KEYS = ("weight_hh_l0_raw", "module.weight_ih_l0", "module.bias_ih_l0", "module.bias_hh_l0")
BATCH_NORM_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_V1_DROPPED_COPY = re.compile(r"(0\.(module\.)?)?rnns\.\d+\.module\.weight_hh_l0")

Shapes = OrderedDict[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class LayoutSizes:
    """Sizes read from a state dict's shapes.

    head: (n_out, linear index) per classifier head block; empty for LMs and encoders.
    """

    vocab: int
    emb: int
    hidden: int
    n_layers: int
    head: tuple[tuple[int, int], ...] = ()

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(input width, hidden width) of each LSTM layer; the last one is `emb` wide."""
        widths = [self.hidden] * (self.n_layers - 1) + [self.emb]
        return list(zip([self.emb, *widths[:-1]], widths, strict=True))


def embedding_key(kind: str) -> str:
    """The embedding matrix's key in a state dict of `kind`."""
    return PREFIXES[kind] + "encoder.weight"


def encoder_keys(n_layers: int, prefix: str = "") -> list[str]:
    """The AWD-LSTM encoder's keys in fastai order, each prefixed with `prefix`."""
    keys = [f"{prefix}encoder.weight", f"{prefix}encoder_dp.emb.weight"]
    for layer in range(n_layers):
        keys += [f"{prefix}rnns.{layer}.{name}" for name in LAYER_KEYS]
    return keys


def lm_keys(n_layers: int) -> list[str]:
    """fastai v2's 16 (for 3 layers) language-model keys in `state_dict()` order."""
    return [*encoder_keys(n_layers, prefix="0."), "1.decoder.weight", "1.decoder.bias"]


def classifier_keys(n_layers: int, linear_index: Sequence[int]) -> list[str]:
    """fastai v2 text classifier keys (`0.module.` encoder, `1.layers.` head) in order.

    `linear_index[k]` is where block k's Linear sits: 2, or 1 when that block has no Dropout.
    """
    keys = encoder_keys(n_layers, prefix="0.module.")
    for block, index in enumerate(linear_index):
        keys += [f"1.layers.{block}.0.{name}" for name in BATCH_NORM_KEYS]
        keys.append(f"1.layers.{block}.{index}.weight")
    return keys


def expected_shapes(kind: str, sizes: LayoutSizes) -> Shapes:
    """Every key of a `kind` state dict with `sizes`, in fastai's order, with its shape."""
    p = PREFIXES[kind]
    shapes: Shapes = OrderedDict()
    shapes[f"{p}encoder.weight"] = shapes[f"{p}encoder_dp.emb.weight"] = (sizes.vocab, sizes.emb)
    for layer, (n_in, n_out) in enumerate(sizes.layer_sizes()):
        for name, shape in zip(LAYER_KEYS, [(4 * n_out, n_out), (4 * n_out, n_in),
                                            (4 * n_out,), (4 * n_out,)], strict=True):
            shapes[f"{p}rnns.{layer}.{name}"] = shape
    if kind == KIND_LM:
        shapes["1.decoder.weight"] = (sizes.vocab, sizes.emb)
        shapes["1.decoder.bias"] = (sizes.vocab,)
    n_in = 3 * sizes.emb  # concat pooling
    for block, (n_out, index) in enumerate(sizes.head):
        for name in BATCH_NORM_KEYS:
            shapes[f"1.layers.{block}.0.{name}"] = () if name == "num_batches_tracked" else (n_in,)
        shapes[f"1.layers.{block}.{index}.weight"] = (n_out, n_in)
        n_in = n_out
    return shapes


def count_layers(state_dict: Mapping[str, object], prefix: str, source: str) -> int:
    """Number of LSTM layers (`{prefix}rnns.{l}.*` keys, numbered 0..n-1)."""
    pattern = re.compile(re.escape(prefix) + r"rnns\.(\d+)\.")
    layers = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    if not layers:
        raise ModelFileError(f"{source}: missing key '{prefix}rnns.0.weight_hh_l0_raw': "
                         "not an AWD-LSTM state dict")
    if layers != set(range(max(layers) + 1)):
        raise ModelFileError(
            f"{source}: LSTM layers must be numbered 0..n-1, found {sorted(layers)}")
    return max(layers) + 1


def linear_index(state_dict: Mapping[str, object]) -> list[int]:
    """Where each head block's Linear sits (1 or 2), for blocks 0, 1, ... present."""
    index, block = [], 0
    while f"1.layers.{block}.0.weight" in state_dict:
        index.append(1 if f"1.layers.{block}.1.weight" in state_dict else 2)
        block += 1
    return index


def read_sizes(state_dict: Mapping[str, np.ndarray], kind: str, source: str) -> LayoutSizes:
    """Vocab, widths, layers and head blocks from the shapes (checked by `validate`)."""
    p = PREFIXES[kind]
    vocab, emb = _shape(state_dict, f"{p}encoder.weight", "[vocab, emb]", source, ndim=2)
    n_layers = count_layers(state_dict, p, source)
    hidden = emb
    if n_layers > 1:
        hidden = _shape(state_dict, f"{p}rnns.0.weight_hh_l0_raw", "[4 * hidden, hidden]",
                        source, ndim=2)[1]
    head: tuple[tuple[int, int], ...] = ()
    if kind == KIND_CLASSIFIER:
        head = tuple((_shape(state_dict, f"1.layers.{k}.{i}.weight", "[n_out, n_in]", source,
                             ndim=2)[0], i) for k, i in enumerate(linear_index(state_dict)))
        if not head:
            raise ModelFileError(f"{source}: missing key '1.layers.0.0.weight': no classifier head")
    return LayoutSizes(vocab, emb, hidden, n_layers, head)


def validate(state_dict: Mapping[str, np.ndarray], kind: str, source: str) -> LayoutSizes:
    """Strict check of a canonical `kind` state dict: every key present with its shape, no
    unexpected key (v1's dropped W_hh copies aside), tied copies equal. Returns its sizes."""
    sizes = read_sizes(state_dict, kind, source)
    shapes = expected_shapes(kind, sizes)
    for key, shape in shapes.items():
        if key not in state_dict:
            raise ModelFileError(f"{source}: missing key '{key}' (expected shape {shape})")
        got = tuple(np.shape(state_dict[key]))
        if got != shape:
            raise ModelFileError(f"{source}: '{key}' has shape {got}, expected {shape}")
    for key in state_dict:
        if key not in shapes and not _V1_DROPPED_COPY.fullmatch(key):
            raise ModelFileError(f"{source}: unexpected key '{key}' with shape "
                             f"{tuple(np.shape(state_dict[key]))}")
    check_tied(state_dict, kind, source)
    return sizes


def check_tied(state_dict: Mapping[str, np.ndarray], kind: str, source: str) -> None:
    """fastai ties the embedding, its dropout copy and the LM decoder to one tensor; copies
    that differ mean an edited file we cannot interpret."""
    emb_key = embedding_key(kind)
    copies = [PREFIXES[kind] + "encoder_dp.emb.weight"] + (["1.decoder.weight"]
                                                          if kind == KIND_LM else [])
    for key in copies:
        if not np.array_equal(state_dict[key], state_dict[emb_key]):
            raise ModelFileError(f"{source}: '{key}' differs from '{emb_key}'; fastai ties them")


def _shape(state_dict: Mapping[str, np.ndarray], key: str, expected: str, source: str,
           ndim: int) -> tuple[int, ...]:
    if key not in state_dict:
        raise ModelFileError(f"{source}: missing key '{key}' (expected shape {expected})")
    shape = tuple(int(n) for n in np.shape(state_dict[key]))
    if len(shape) != ndim:
        raise ModelFileError(f"{source}: '{key}' has shape {shape}, expected {expected}")
    return shape
