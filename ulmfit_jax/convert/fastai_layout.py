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

An AWD-QRNN (fastai v1's `AWD_LSTM(qrnn=True)`, early fastai v2's `AWD_QRNN`) has the same
embedding, decoder and head keys; each layer l is a one-layer `QRNN` whose linear map sits in
a `WeightDropout`: `rnns.{l}.layers.0.linear.weight_raw` [3h, window * in] (gates z, f, o;
input columns: the current step, then the previous one) and
`rnns.{l}.layers.0.linear.module.bias` [3h]. Layer 0's window (1 or 2) is read from its shape;
later layers have window 1. fastai v1 also kept the dropped copy
`rnns.{l}.layers.0.linear.module.weight`, ignored here as the LSTM's.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from ulmfit_jax.errors import ModelFileError
from ulmfit_jax.model.awd_lstm import KIND as AWD_LSTM
from ulmfit_jax.model.qrnn import KIND as QRNN

KIND_LM = "language_model"
KIND_ENCODER = "encoder"
KIND_CLASSIFIER = "classifier"
PREFIXES = {KIND_LM: "0.", KIND_ENCODER: "", KIND_CLASSIFIER: "0.module."}

LAYER_KEYS = ("weight_hh_l0_raw", "module.weight_ih_l0", "module.bias_ih_l0", "module.bias_hh_l0")
QRNN_LAYER_KEYS = ("layers.0.linear.weight_raw", "layers.0.linear.module.bias")
# Each encoder kind's per-layer keys; the first one's presence in `rnns.0.` tells the kind.
LAYER_KEYS_BY_KIND = {AWD_LSTM: LAYER_KEYS, QRNN: QRNN_LAYER_KEYS}
BATCH_NORM_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# fastai v1's dropped copies of the DropConnect weight (LSTM W_hh, QRNN linear weight).
V1_DROPPED_COPY = re.compile(r"rnns\.\d+\.(module\.weight_hh_l0|layers\.0\.linear\.module\.weight)")
_V1_DROPPED_COPY = re.compile(r"(0\.(module\.)?)?" + V1_DROPPED_COPY.pattern)

Shapes = OrderedDict[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class LayoutSizes:
    """Sizes read from a state dict's shapes.

    head: (n_out, linear index) per classifier head block; empty for LMs and encoders.
    encoder_kind: "awd_lstm" or "qrnn"; qrnn_window: a QRNN's first-layer window (1 or 2).
    """

    vocab: int
    emb: int
    hidden: int
    n_layers: int
    head: tuple[tuple[int, int], ...] = ()
    encoder_kind: str = AWD_LSTM
    qrnn_window: int = 2

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(input width, hidden width) of each layer; the last one is `emb` wide."""
        widths = [self.hidden] * (self.n_layers - 1) + [self.emb]
        return list(zip([self.emb, *widths[:-1]], widths, strict=True))

    def layer_shapes(self) -> list[tuple[tuple[int, ...], ...]]:
        """Per layer, the shapes of its keys in `LAYER_KEYS_BY_KIND[encoder_kind]` order."""
        if self.encoder_kind == QRNN:
            windows = [self.qrnn_window] + [1] * (self.n_layers - 1)
            return [((3 * n_out, window * n_in), (3 * n_out,))
                    for (n_in, n_out), window in zip(self.layer_sizes(), windows, strict=True)]
        return [((4 * n_out, n_out), (4 * n_out, n_in), (4 * n_out,), (4 * n_out,))
                for n_in, n_out in self.layer_sizes()]


def embedding_key(kind: str) -> str:
    """The embedding matrix's key in a state dict of `kind`."""
    return PREFIXES[kind] + "encoder.weight"


def encoder_keys(n_layers: int, prefix: str = "", encoder_kind: str = AWD_LSTM) -> list[str]:
    """The encoder's keys in fastai order, each prefixed with `prefix`."""
    keys = [f"{prefix}encoder.weight", f"{prefix}encoder_dp.emb.weight"]
    for layer in range(n_layers):
        keys += [f"{prefix}rnns.{layer}.{name}" for name in LAYER_KEYS_BY_KIND[encoder_kind]]
    return keys


def lm_keys(n_layers: int, encoder_kind: str = AWD_LSTM) -> list[str]:
    """fastai v2's 16 (for 3 LSTM layers) language-model keys in `state_dict()` order."""
    return [*encoder_keys(n_layers, "0.", encoder_kind), "1.decoder.weight", "1.decoder.bias"]


def classifier_keys(n_layers: int, linear_index: Sequence[int],
                    encoder_kind: str = AWD_LSTM) -> list[str]:
    """fastai v2 text classifier keys (`0.module.` encoder, `1.layers.` head) in order.

    `linear_index[k]` is where block k's Linear sits: 2, or 1 when that block has no Dropout.
    """
    keys = encoder_keys(n_layers, "0.module.", encoder_kind)
    for block, index in enumerate(linear_index):
        keys += [f"1.layers.{block}.0.{name}" for name in BATCH_NORM_KEYS]
        keys.append(f"1.layers.{block}.{index}.weight")
    return keys


def expected_shapes(kind: str, sizes: LayoutSizes) -> Shapes:
    """Every key of a `kind` state dict with `sizes`, in fastai's order, with its shape."""
    p = PREFIXES[kind]
    shapes: Shapes = OrderedDict()
    shapes[f"{p}encoder.weight"] = shapes[f"{p}encoder_dp.emb.weight"] = (sizes.vocab, sizes.emb)
    names = LAYER_KEYS_BY_KIND[sizes.encoder_kind]
    for layer, layer_shapes in enumerate(sizes.layer_shapes()):
        for name, shape in zip(names, layer_shapes, strict=True):
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
    """Number of recurrent layers (`{prefix}rnns.{l}.*` keys, numbered 0..n-1)."""
    pattern = re.compile(re.escape(prefix) + r"rnns\.(\d+)\.")
    layers = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    if not layers:
        raise ModelFileError(f"{source}: missing key '{prefix}rnns.0.weight_hh_l0_raw': "
                         "not an AWD-LSTM (or AWD-QRNN) state dict")
    if layers != set(range(max(layers) + 1)):
        raise ModelFileError(
            f"{source}: recurrent layers must be numbered 0..n-1, found {sorted(layers)}")
    return max(layers) + 1


def encoder_kind(state_dict: Mapping[str, object], prefix: str) -> str:
    """"qrnn" when layer 0 is a QRNN (`rnns.0.layers.0.linear.weight_raw`), else "awd_lstm"."""
    return QRNN if f"{prefix}rnns.0.{QRNN_LAYER_KEYS[0]}" in state_dict else AWD_LSTM


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
    kind_of_encoder = encoder_kind(state_dict, p)
    hidden, window = emb, 2
    if kind_of_encoder == QRNN:
        rows, cols = _shape(state_dict, f"{p}rnns.0.{QRNN_LAYER_KEYS[0]}",
                            "[3 * hidden, window * emb]", source, ndim=2)
        hidden = rows // 3 if n_layers > 1 else emb
        window = 1 if cols == emb else 2  # another width fails `validate` with both shapes
    elif n_layers > 1:
        hidden = _shape(state_dict, f"{p}rnns.0.weight_hh_l0_raw", "[4 * hidden, hidden]",
                        source, ndim=2)[1]
    head: tuple[tuple[int, int], ...] = ()
    if kind == KIND_CLASSIFIER:
        head = tuple((_shape(state_dict, f"1.layers.{k}.{i}.weight", "[n_out, n_in]", source,
                             ndim=2)[0], i) for k, i in enumerate(linear_index(state_dict)))
        if not head:
            raise ModelFileError(f"{source}: missing key '1.layers.0.0.weight': no classifier head")
    return LayoutSizes(vocab, emb, hidden, n_layers, head, kind_of_encoder, window)


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
