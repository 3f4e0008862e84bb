"""fastai v2 state dicts (`str -> np.ndarray`) <-> our parameter trees, both directions, strict.

No torch here: `fastai_files` reads/writes the files and hands over numpy dicts.
Layouts (fastai 2.8.12):
- language model: `0.encoder.weight`, `0.encoder_dp.emb.weight`, per layer l
  `0.rnns.{l}.weight_hh_l0_raw`, `0.rnns.{l}.module.weight_ih_l0`, `.bias_ih_l0`, `.bias_hh_l0`,
  then `1.decoder.weight` (tied), `1.decoder.bias`;
- encoder (`save_encoder`): the same encoder keys without the `0.` prefix;
- classifier: encoder keys under `0.module.`, head under `1.layers.{k}.0.*` (BatchNorm1d) and
  `1.layers.{k}.2.weight` (Linear without bias; index 1 when the block has no Dropout).
fastai's `load_pretrained` copies tensors by position, so the writers keep fastai's key order.
torch keeps two LSTM biases; we keep their sum and write it back as `bias_ih` with a zero
`bias_hh` (the sum, which is all the LSTM uses, is preserved).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from ulmfit_jax.errors import ModelFileError
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig

StateDict = Mapping[str, np.ndarray]
# v1 files also hold DropConnect's dropped copy of W_hh; it is derived data and ignored.
_IGNORED_SUFFIX = ".module.weight_hh_l0"


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _child(tree: Mapping[Any, Any], key: int) -> Any:
    """Sub-tree of a list node whose keys may be ints (nnx) or strings (after a round trip)."""
    return tree[key] if key in tree else tree[str(key)]


def _n_layers(state_dict: StateDict, prefix: str) -> int:
    n = 0
    while f"{prefix}rnns.{n}.weight_hh_l0_raw" in state_dict:
        n += 1
    if n == 0:
        raise ModelFileError(
            f"missing key '{prefix}rnns.0.weight_hh_l0_raw': not an AWD-LSTM state dict"
        )
    return n


def _encoder_config(state_dict: StateDict, prefix: str) -> AWDLSTMConfig:
    """Sizes from the shapes of the embedding and the first LSTM layer."""
    key = f"{prefix}encoder.weight"
    if key not in state_dict:
        raise ModelFileError(f"missing key '{key}' (expected shape [vocab, emb])")
    vocab, emb = np.shape(state_dict[key])
    n_layers = _n_layers(state_dict, prefix)
    hidden = np.shape(state_dict[f"{prefix}rnns.0.weight_hh_l0_raw"])[1] if n_layers > 1 else emb
    return AWDLSTMConfig(vocab_size=int(vocab), emb_size=int(emb), hidden_size=int(hidden),
                         n_layers=n_layers)


def _encoder_shapes(config: AWDLSTMConfig, prefix: str) -> OrderedDict[str, tuple[int, ...]]:
    """fastai's encoder keys, in fastai's order, with their shapes."""
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    emb = (config.vocab_size, config.emb_size)
    shapes[f"{prefix}encoder.weight"] = emb
    shapes[f"{prefix}encoder_dp.emb.weight"] = emb
    for layer, (n_in, n_out) in enumerate(config.layer_sizes()):
        p = f"{prefix}rnns.{layer}."
        shapes[p + "weight_hh_l0_raw"] = (4 * n_out, n_out)
        shapes[p + "module.weight_ih_l0"] = (4 * n_out, n_in)
        shapes[p + "module.bias_ih_l0"] = (4 * n_out,)
        shapes[p + "module.bias_hh_l0"] = (4 * n_out,)
    return shapes


def _check_keys(state_dict: StateDict, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Strict comparison of a state dict against the expected keys and shapes."""
    for key, shape in shapes.items():
        if key not in state_dict:
            raise ModelFileError(f"missing key '{key}' (expected shape {shape})")
        got = tuple(np.shape(state_dict[key]))
        if got != tuple(shape):
            raise ModelFileError(f"wrong shape for key '{key}': expected {tuple(shape)}, got {got}")
    for key in state_dict:
        if key not in shapes and not key.endswith(_IGNORED_SUFFIX):
            raise ModelFileError(
                f"unexpected key '{key}' with shape {tuple(np.shape(state_dict[key]))}"
            )


def _check_tied(state_dict: StateDict, source: str, copies: list[str]) -> None:
    for key in copies:
        if not np.array_equal(_f32(state_dict[key]), _f32(state_dict[source])):
            raise ModelFileError(f"key '{key}' must equal the tied weight '{source}' but differs")


def _encoder_params(state_dict: StateDict, config: AWDLSTMConfig, prefix: str) -> dict:
    layers = {}
    for layer in range(config.n_layers):
        p = f"{prefix}rnns.{layer}."
        layers[layer] = {
            "w_ih": _f32(state_dict[p + "module.weight_ih_l0"]).T.copy(),
            "w_hh": _f32(state_dict[p + "weight_hh_l0_raw"]).T.copy(),
            "bias": _f32(state_dict[p + "module.bias_ih_l0"])
            + _f32(state_dict[p + "module.bias_hh_l0"]),
        }
    return {"embedding": _f32(state_dict[f"{prefix}encoder.weight"]).copy(), "layers": layers}


def _encoder_state_dict(encoder: Mapping[str, Any], prefix: str) -> OrderedDict[str, np.ndarray]:
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    embedding = _f32(encoder["embedding"])
    out[f"{prefix}encoder.weight"] = embedding
    out[f"{prefix}encoder_dp.emb.weight"] = embedding.copy()
    layers = encoder["layers"]
    for layer in range(len(layers)):
        weights = _child(layers, layer)
        p = f"{prefix}rnns.{layer}."
        out[p + "weight_hh_l0_raw"] = np.ascontiguousarray(_f32(weights["w_hh"]).T)
        out[p + "module.weight_ih_l0"] = np.ascontiguousarray(_f32(weights["w_ih"]).T)
        out[p + "module.bias_ih_l0"] = _f32(weights["bias"]).copy()
        out[p + "module.bias_hh_l0"] = np.zeros_like(_f32(weights["bias"]))
    return out


def encoder_params_from_fastai(state_dict: StateDict) -> tuple[AWDLSTMConfig, dict]:
    """`save_encoder` layout (keys `encoder.weight`, `rnns.{l}...`) -> (config, encoder params).

    The params are the `encoder/...` subtree: {"embedding", "layers": {l: {w_ih, w_hh, bias}}}.
    """
    config = _encoder_config(state_dict, "")
    _check_keys(state_dict, _encoder_shapes(config, ""))
    _check_tied(state_dict, "encoder.weight", ["encoder_dp.emb.weight"])
    return config, _encoder_params(state_dict, config, "")


def encoder_params_to_fastai(encoder_params: Mapping[str, Any]) -> OrderedDict[str, np.ndarray]:
    """Encoder subtree -> `save_encoder` layout, in fastai's key order."""
    return _encoder_state_dict(encoder_params, "")


def _lm_shapes(config: AWDLSTMConfig) -> OrderedDict[str, tuple[int, ...]]:
    shapes = _encoder_shapes(config, "0.")
    shapes["1.decoder.weight"] = (config.vocab_size, config.emb_size)
    shapes["1.decoder.bias"] = (config.vocab_size,)
    return shapes


def lm_params_from_fastai(state_dict: StateDict) -> tuple[AWDLSTMConfig, dict]:
    """fastai v2 LM state dict -> (AWDLSTMConfig with LM dropouts, params pure dict).

    Sizes come from the shapes; raises ValueError on a missing, unexpected or mis-shaped key.
    """
    config = _encoder_config(state_dict, "0.")
    _check_keys(state_dict, _lm_shapes(config))
    _check_tied(state_dict, "0.encoder.weight", ["0.encoder_dp.emb.weight", "1.decoder.weight"])
    params = {
        "encoder": _encoder_params(state_dict, config, "0."),
        "decoder_bias": _f32(state_dict["1.decoder.bias"]).copy(),
    }
    return config, params


def lm_params_to_fastai(params: Mapping[str, Any]) -> OrderedDict[str, np.ndarray]:
    """LM params pure dict -> fastai's 16-key (3 layers) LM state dict in fastai's order."""
    out = _encoder_state_dict(params["encoder"], "0.")
    out["1.decoder.weight"] = out["0.encoder.weight"].copy()
    out["1.decoder.bias"] = _f32(params["decoder_bias"]).copy()
    return out


def _head_layout(state_dict: StateDict) -> list[tuple[int, int, int]]:
    """(n_in, n_out, linear index) per head block, from the BatchNorm and Linear shapes."""
    blocks = []
    k = 0
    while f"1.layers.{k}.0.weight" in state_dict:
        index = 2 if f"1.layers.{k}.2.weight" in state_dict else 1
        key = f"1.layers.{k}.{index}.weight"
        if key not in state_dict:
            raise ModelFileError(f"missing key '1.layers.{k}.2.weight' (Linear of head block {k})")
        n_out, n_in = np.shape(state_dict[key])
        blocks.append((int(n_in), int(n_out), index))
        k += 1
    if not blocks:
        raise ModelFileError("missing key '1.layers.0.0.weight': no classifier head in state dict")
    return blocks


def _head_shapes(blocks: list[tuple[int, int, int]]) -> OrderedDict[str, tuple[int, ...]]:
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    for k, (n_in, n_out, index) in enumerate(blocks):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"1.layers.{k}.0.{name}"] = (n_in,)
        shapes[f"1.layers.{k}.0.num_batches_tracked"] = ()
        shapes[f"1.layers.{k}.{index}.weight"] = (n_out, n_in)
    return shapes


def classifier_params_from_fastai(
    state_dict: StateDict, bptt: int = 72, max_len: int = 72 * 20
) -> tuple[ClassifierConfig, dict]:
    """fastai v2 classifier state dict -> (ClassifierConfig, state pure dict).

    The returned tree is the classifier's full `nnx.state` pure dict: encoder params plus
    head/blocks/{k}/batch_norm/{scale,bias,mean,var} and head/blocks/{k}/linear/kernel.
    """
    enc_config = _encoder_config(state_dict, "0.module.")
    enc_config = AWDLSTMConfig.classifier_defaults(
        enc_config.vocab_size, emb_size=enc_config.emb_size,
        hidden_size=enc_config.hidden_size, n_layers=enc_config.n_layers,
    )
    blocks = _head_layout(state_dict)
    shapes = _encoder_shapes(enc_config, "0.module.")
    shapes.update(_head_shapes(blocks))
    _check_keys(state_dict, shapes)
    _check_tied(state_dict, "0.module.encoder.weight", ["0.module.encoder_dp.emb.weight"])
    if blocks[0][0] != 3 * enc_config.emb_size:
        raise ModelFileError(
            f"wrong shape for key '1.layers.0.0.weight': expected ({3 * enc_config.emb_size},), "
            f"got ({blocks[0][0]},)"
        )
    config = ClassifierConfig(encoder=enc_config, n_classes=blocks[-1][1], bptt=bptt,
                              max_len=max_len, head_sizes=tuple(b[1] for b in blocks[:-1]))
    head = {}
    for k, (_, _, index) in enumerate(blocks):
        p = f"1.layers.{k}."
        head[k] = {
            "batch_norm": {
                "scale": _f32(state_dict[p + "0.weight"]).copy(),
                "bias": _f32(state_dict[p + "0.bias"]).copy(),
                "mean": _f32(state_dict[p + "0.running_mean"]).copy(),
                "var": _f32(state_dict[p + "0.running_var"]).copy(),
            },
            "linear": {"kernel": np.ascontiguousarray(_f32(state_dict[p + f"{index}.weight"]).T)},
        }
    encoder = _encoder_params(state_dict, enc_config, "0.module.")
    return config, {"encoder": encoder, "head": {"blocks": head}}


def classifier_params_to_fastai(
    state: Mapping[str, Any], config: ClassifierConfig | None = None
) -> OrderedDict[str, np.ndarray]:
    """Classifier state pure dict -> fastai v2 classifier state dict, in fastai's order.

    With `config`, a head block whose dropout is 0 gets its Linear at index 1 (fastai's
    LinBnDrop has no Dropout layer then); otherwise index 2. num_batches_tracked is written as 0
    (torch ignores it when momentum is set).
    """
    out = _encoder_state_dict(state["encoder"], "0.module.")
    blocks = state["head"]["blocks"]
    for k in range(len(blocks)):
        block = _child(blocks, k)
        bn, p = block["batch_norm"], f"1.layers.{k}."
        out[p + "0.weight"] = _f32(bn["scale"]).copy()
        out[p + "0.bias"] = _f32(bn["bias"]).copy()
        out[p + "0.running_mean"] = _f32(bn["mean"]).copy()
        out[p + "0.running_var"] = _f32(bn["var"]).copy()
        out[p + "0.num_batches_tracked"] = np.array(0, dtype=np.int64)
        index = 1 if config is not None and config.head_dropouts[k] == 0 else 2
        out[p + f"{index}.weight"] = np.ascontiguousarray(_f32(block["linear"]["kernel"]).T)
    return out
