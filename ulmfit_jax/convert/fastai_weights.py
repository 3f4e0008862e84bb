"""fastai v2 state dicts (`str -> np.ndarray`) <-> our parameter trees, both directions, strict.

No torch here: `fastai_files` reads/writes the files and hands over numpy dicts. The keys,
their order and shapes are `fastai_layout`'s; every reader validates through it.
The AWD-LSTM and the AWD-QRNN encoder kinds have a fastai layout (`FASTAI_ENCODER_KINDS`);
the writers refuse a model of another kind with one line (a new kind with a fastai
counterpart adds its own converter and layout, and its entry there).
torch keeps two LSTM biases; we keep their sum and write it back as `bias_ih` with a zero
`bias_hh` (the sum, which is all the LSTM uses, is preserved). A QRNN layer's torch
`Linear` weight [3h, window * in] is our kernel transposed; its bias is ours.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from ulmfit_jax.convert import fastai_layout as layout
from ulmfit_jax.convert.fastai_layout import KIND_CLASSIFIER, KIND_ENCODER, KIND_LM, LayoutSizes
from ulmfit_jax.errors import ModelFileError
from ulmfit_jax.model.awd_lstm import KIND as AWD_LSTM
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.model.qrnn import KIND as QRNN

StateDict = Mapping[str, np.ndarray]
_SOURCE = "<state dict>"


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _child(tree: Mapping[Any, Any], key: int) -> Any:
    """Sub-tree of a list node whose keys may be ints (nnx) or strings (after a round trip)."""
    return tree[key] if key in tree else tree[str(key)]


# Encoder kinds whose parameter tree this module converts (fastai's AWD_LSTM and AWD_QRNN).
FASTAI_ENCODER_KINDS = (AWD_LSTM, QRNN)


def _check_convertible(config: AWDLSTMConfig | None) -> None:
    """Refuse (one line) a model whose encoder kind has no fastai layout here."""
    if config is not None and config.encoder_kind not in FASTAI_ENCODER_KINDS:
        raise ModelFileError(f"encoder kind {config.encoder_kind!r} has no fastai file layout; "
                             f"fastai conversion exists for {FASTAI_ENCODER_KINDS} only")


def _kind_fields(sizes: LayoutSizes) -> dict[str, Any]:
    """The config fields a file's layout fixes beyond the sizes: its encoder kind (and window)."""
    if sizes.encoder_kind == QRNN:
        return {"encoder_kind": QRNN, "qrnn_window": sizes.qrnn_window}
    return {}


def _encoder_config(sizes: LayoutSizes) -> AWDLSTMConfig:
    return AWDLSTMConfig(vocab_size=sizes.vocab, emb_size=sizes.emb, hidden_size=sizes.hidden,
                         n_layers=sizes.n_layers, **_kind_fields(sizes))


def _lstm_layer_params(state_dict: StateDict, p: str) -> dict:
    return {
        "w_ih": _f32(state_dict[p + "module.weight_ih_l0"]).T.copy(),
        "w_hh": _f32(state_dict[p + "weight_hh_l0_raw"]).T.copy(),
        "bias": _f32(state_dict[p + "module.bias_ih_l0"])
        + _f32(state_dict[p + "module.bias_hh_l0"]),
    }


def _qrnn_layer_params(state_dict: StateDict, p: str) -> dict:
    return {"kernel": _f32(state_dict[p + "layers.0.linear.weight_raw"]).T.copy(),
            "bias": _f32(state_dict[p + "layers.0.linear.module.bias"]).copy()}


def _encoder_params(state_dict: StateDict, sizes: LayoutSizes, prefix: str) -> dict:
    read = _qrnn_layer_params if sizes.encoder_kind == QRNN else _lstm_layer_params
    layers = {layer: read(state_dict, f"{prefix}rnns.{layer}.")
              for layer in range(sizes.n_layers)}
    return {"embedding": _f32(state_dict[f"{prefix}encoder.weight"]).copy(), "layers": layers}


def _lstm_layer_state_dict(weights: Mapping[str, Any], p: str) -> dict[str, np.ndarray]:
    return {p + "weight_hh_l0_raw": np.ascontiguousarray(_f32(weights["w_hh"]).T),
            p + "module.weight_ih_l0": np.ascontiguousarray(_f32(weights["w_ih"]).T),
            p + "module.bias_ih_l0": _f32(weights["bias"]).copy(),
            p + "module.bias_hh_l0": np.zeros_like(_f32(weights["bias"]))}


def _qrnn_layer_state_dict(weights: Mapping[str, Any], p: str) -> dict[str, np.ndarray]:
    return {p + "layers.0.linear.weight_raw": np.ascontiguousarray(_f32(weights["kernel"]).T),
            p + "layers.0.linear.module.bias": _f32(weights["bias"]).copy()}


def _encoder_state_dict(encoder: Mapping[str, Any], prefix: str) -> OrderedDict[str, np.ndarray]:
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    embedding = _f32(encoder["embedding"])
    out[f"{prefix}encoder.weight"] = embedding
    out[f"{prefix}encoder_dp.emb.weight"] = embedding.copy()
    layers = encoder["layers"]
    for layer in range(len(layers)):
        weights = _child(layers, layer)
        # A QRNN layer holds `kernel` where an LSTM layer holds `w_ih`, `w_hh`.
        write = _qrnn_layer_state_dict if "kernel" in weights else _lstm_layer_state_dict
        out.update(write(weights, f"{prefix}rnns.{layer}."))
    return out


def encoder_params_from_fastai(
    state_dict: StateDict, source: str = _SOURCE
) -> tuple[AWDLSTMConfig, dict]:
    """`save_encoder` layout (keys `encoder.weight`, `rnns.{l}...`) -> (config, encoder params).

    The params are the `encoder/...` subtree: {"embedding", "layers": {l: {w_ih, w_hh, bias}}}
    (a QRNN's layers: {kernel, bias}).
    """
    sizes = layout.validate(state_dict, KIND_ENCODER, source)
    return _encoder_config(sizes), _encoder_params(state_dict, sizes, "")


def encoder_params_to_fastai(
    encoder_params: Mapping[str, Any], config: AWDLSTMConfig | None = None
) -> OrderedDict[str, np.ndarray]:
    """Encoder subtree -> `save_encoder` layout, in fastai's key order (`config`, when given,
    must be of a convertible encoder kind)."""
    _check_convertible(config)
    return _in_fastai_order(_encoder_state_dict(encoder_params, ""), KIND_ENCODER)


def lm_params_from_fastai(
    state_dict: StateDict, source: str = _SOURCE
) -> tuple[AWDLSTMConfig, dict]:
    """fastai v2 LM state dict -> (AWDLSTMConfig with LM dropouts, params pure dict).

    Sizes and the encoder kind (AWD-LSTM or AWD-QRNN) come from the keys and shapes; raises
    ModelFileError (a ValueError) on a missing, unexpected or mis-shaped key.
    """
    sizes = layout.validate(state_dict, KIND_LM, source)
    params = {
        "encoder": _encoder_params(state_dict, sizes, "0."),
        "decoder_bias": _f32(state_dict["1.decoder.bias"]).copy(),
    }
    return _encoder_config(sizes), params


def lm_params_to_fastai(
    params: Mapping[str, Any], config: AWDLSTMConfig | None = None
) -> OrderedDict[str, np.ndarray]:
    """LM params pure dict -> fastai's 16-key (3 LSTM layers) LM state dict in fastai's order
    (`config`, when given, must be of a convertible encoder kind)."""
    _check_convertible(config)
    out = _encoder_state_dict(params["encoder"], "0.")
    out["1.decoder.weight"] = out["0.encoder.weight"].copy()
    out["1.decoder.bias"] = _f32(params["decoder_bias"]).copy()
    return _in_fastai_order(out, KIND_LM)


def classifier_params_from_fastai(
    state_dict: StateDict, bptt: int = 72, max_len: int = 72 * 20, source: str = _SOURCE
) -> tuple[ClassifierConfig, dict]:
    """fastai v2 classifier state dict -> (ClassifierConfig, state pure dict).

    The returned tree is the classifier's full `nnx.state` pure dict: encoder params plus
    head/blocks/{k}/batch_norm/{scale,bias,mean,var} and head/blocks/{k}/linear/kernel.
    """
    sizes = layout.validate(state_dict, KIND_CLASSIFIER, source)
    enc_config = AWDLSTMConfig.classifier_defaults(
        sizes.vocab, emb_size=sizes.emb, hidden_size=sizes.hidden, n_layers=sizes.n_layers,
        **_kind_fields(sizes))
    config = ClassifierConfig(encoder=enc_config, n_classes=sizes.head[-1][0], bptt=bptt,
                              max_len=max_len, head_sizes=tuple(n for n, _ in sizes.head[:-1]))
    head = {k: _head_block(state_dict, f"1.layers.{k}.", index)
            for k, (_, index) in enumerate(sizes.head)}
    encoder = _encoder_params(state_dict, sizes, "0.module.")
    return config, {"encoder": encoder, "head": {"blocks": head}}


def _head_block(state_dict: StateDict, p: str, index: int) -> dict:
    return {
        "batch_norm": {
            "scale": _f32(state_dict[p + "0.weight"]).copy(),
            "bias": _f32(state_dict[p + "0.bias"]).copy(),
            "mean": _f32(state_dict[p + "0.running_mean"]).copy(),
            "var": _f32(state_dict[p + "0.running_var"]).copy(),
        },
        "linear": {"kernel": np.ascontiguousarray(_f32(state_dict[p + f"{index}.weight"]).T)},
    }


def classifier_params_to_fastai(
    state: Mapping[str, Any], config: ClassifierConfig | None = None
) -> OrderedDict[str, np.ndarray]:
    """Classifier state pure dict -> fastai v2 classifier state dict, in fastai's order.

    With `config`, a head block whose dropout is 0 gets its Linear at index 1 (fastai's
    LinBnDrop has no Dropout layer then); otherwise index 2. num_batches_tracked is written as 0
    (torch ignores it when momentum is set).
    """
    _check_convertible(None if config is None else config.encoder)
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
    return _in_fastai_order(out, KIND_CLASSIFIER)


def _in_fastai_order(state_dict: dict[str, np.ndarray], kind: str) -> OrderedDict[str, np.ndarray]:
    """The converted dict validated against, and ordered as, fastai's layout (fastai's
    `load_pretrained` copies by position)."""
    sizes = layout.validate(state_dict, kind, "<converted parameters>")
    return OrderedDict((key, state_dict[key]) for key in layout.expected_shapes(kind, sizes))
