"""Model hyper-parameters as frozen dataclasses (the model's side of the config boundary).

Dropout probabilities are stored as fastai's *base* values; the effective probability used by
the model is `base * drop_mult`, exactly as fastai's `get_language_model` / `get_text_classifier`
multiply every `*_p` entry of their config by `drop_mult`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from ulmfit_jax.errors import ConfigError
from ulmfit_jax.model.lstm_impl import LSTM_IMPLS
from ulmfit_jax.model.precision import MATMUL_PRECISIONS

# fastai's classifier encoder dropouts (`awd_lstm_clas_config`; `awd_qrnn_clas_config` has the
# same), before drop_mult.
CLASSIFIER_DROPOUTS: dict[str, Any] = dict(embed_p=0.05, input_p=0.4, weight_p=0.5, hidden_p=0.3,
                                           output_p=0.4)


@dataclasses.dataclass(frozen=True)
class AWDLSTMConfig:
    """Sizes and dropouts of an AWD-LSTM (defaults: fastai's `awd_lstm_lm_config`).

    `encoder_kind` names the recurrent encoder (`model.encoder`'s registry: "awd_lstm" or
    "qrnn"); the sizes and AWD dropouts apply to every kind, as fastai's AWD_LSTM config does
    to its LSTM and QRNN. The `qrnn_*` fields are the QRNN's own (fastai's `AWD_QRNN`
    defaults); other kinds ignore them.
    """

    vocab_size: int
    emb_size: int = 400
    hidden_size: int = 1152
    n_layers: int = 3
    pad_id: int = 1
    embed_p: float = 0.02
    input_p: float = 0.25
    weight_p: float = 0.2
    hidden_p: float = 0.15
    output_p: float = 0.1
    drop_mult: float = 1.0
    # Precision of the whole model: parameters stay float32; every matmul (encoder, decoder,
    # head) runs in this dtype.
    compute_dtype: Any = jnp.float32
    # The AWD-LSTM encoder's LSTM kernel (model/lstm_impl.py): "scan" (lax.scan per layer, any
    # backend), "wavefront" (one loop advancing every layer), "cudnn" (cuDNN's fused LSTM, CUDA,
    # float32) or "auto" (the one measured fastest on the device).
    lstm_impl: str = "auto"
    encoder_kind: str = "awd_lstm"
    # How float32 matmuls run on GPUs/TPUs: "default" (jax's: TF32 / bf16 passes), "high" or
    # "highest" (full float32); see model/precision.py.
    matmul_precision: str = "default"
    # The QRNN's convolution window over the input of its first layer (1 or 2; later layers
    # see one step), its zoneout probability (dropout on the forget gate, training only; not
    # scaled by drop_mult) and whether the first layer keeps the previous window's last input
    # across calls (fastai's `save_prev_x`).
    qrnn_window: int = 2
    qrnn_zoneout: float = 0.0
    qrnn_save_prev_x: bool = True

    def __post_init__(self) -> None:
        if self.vocab_size <= 0 or self.emb_size <= 0 or self.hidden_size <= 0:
            raise ConfigError(f"sizes must be positive, got {self}")
        if self.n_layers < 1:
            raise ConfigError(f"n_layers must be >= 1, got {self.n_layers}")
        if self.lstm_impl not in LSTM_IMPLS:
            raise ConfigError(f"lstm_impl={self.lstm_impl!r}; expected one of {LSTM_IMPLS}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(f"matmul_precision={self.matmul_precision!r}; expected one of "
                              f"{MATMUL_PRECISIONS}")
        if self.lstm_impl == "cudnn" and jnp.dtype(self.compute_dtype) != jnp.float32:
            raise ConfigError("lstm_impl='cudnn' runs in float32 only (cuDNN's LSTM in jax has "
                              f"no {jnp.dtype(self.compute_dtype).name}); use 'scan' or 'auto'")
        if self.qrnn_window not in (1, 2):
            raise ConfigError(f"qrnn_window={self.qrnn_window!r}; expected 1 or 2 (fastai's QRNN)")
        if not 0.0 <= self.qrnn_zoneout < 1.0:
            raise ConfigError(f"qrnn_zoneout={self.qrnn_zoneout} must be in [0, 1)")
        for name in ("embed_p", "input_p", "weight_p", "hidden_p", "output_p"):
            p = getattr(self, name) * self.drop_mult
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"{name} * drop_mult = {p} must be in [0, 1)")

    @classmethod
    def lm_defaults(
        cls, vocab_size: int, drop_mult: float = 1.0, **overrides: Any
    ) -> AWDLSTMConfig:
        """fastai's language-model config (`awd_lstm_lm_config`)."""
        return cls(vocab_size=vocab_size, drop_mult=drop_mult, **overrides)

    @classmethod
    def classifier_defaults(
        cls, vocab_size: int, drop_mult: float = 1.0, **overrides: Any
    ) -> AWDLSTMConfig:
        """fastai's classifier encoder config (`awd_lstm_clas_config`, `awd_qrnn_clas_config`)."""
        values: dict[str, Any] = dict(CLASSIFIER_DROPOUTS)
        values.update(overrides)
        return cls(vocab_size=vocab_size, drop_mult=drop_mult, **values)

    def for_classifier(self, drop_mult: float) -> AWDLSTMConfig:
        """This encoder with fastai's classifier dropouts times `drop_mult` (stage 3 of ULMFiT:
        the fine-tuned LM's encoder under a new head); every other field is kept."""
        return dataclasses.replace(self, drop_mult=drop_mult, **CLASSIFIER_DROPOUTS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (`compute_dtype` by its name, e.g. "bfloat16")."""
        d = dataclasses.asdict(self)
        d["compute_dtype"] = jnp.dtype(self.compute_dtype).name
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AWDLSTMConfig:
        """The config `to_dict` wrote."""
        d = dict(d)
        # jnp's scalar types (jnp.float32, jnp.bfloat16), as the defaults use.
        d["compute_dtype"] = getattr(jnp, d["compute_dtype"])
        return cls(**d)

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(input width, hidden width) of each LSTM layer; the last one is `emb_size` wide."""
        sizes = []
        for layer in range(self.n_layers):
            n_in = self.emb_size if layer == 0 else self.hidden_size
            n_out = self.emb_size if layer == self.n_layers - 1 else self.hidden_size
            sizes.append((n_in, n_out))
        return sizes

    @property
    def embed_dropout(self) -> float:
        """Effective embedding-row dropout probability."""
        return self.embed_p * self.drop_mult

    @property
    def input_dropout(self) -> float:
        """Effective variational dropout on the embedding output."""
        return self.input_p * self.drop_mult

    @property
    def weight_dropout(self) -> float:
        """Effective DropConnect probability on each LSTM's W_hh (each QRNN layer's weight)."""
        return self.weight_p * self.drop_mult

    @property
    def hidden_dropout(self) -> float:
        """Effective variational dropout between LSTM layers."""
        return self.hidden_p * self.drop_mult

    @property
    def output_dropout(self) -> float:
        """Effective dropout on the last layer's output (LM) / first head dropout (classifier)."""
        return self.output_p * self.drop_mult


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """AWD-LSTM classifier: encoder config, BPT3C chunking and the pooling head."""

    encoder: AWDLSTMConfig
    n_classes: int
    bptt: int = 72
    max_len: int = 72 * 20
    head_sizes: tuple[int, ...] = (50,)
    # fastai's `ps` for the blocks after the first (default 0.1 each); not scaled by drop_mult.
    head_ps: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.n_classes < 1 or self.bptt < 1 or self.max_len < 1:
            raise ConfigError(f"n_classes, bptt and max_len must be positive, got {self}")
        if self.head_ps is not None and len(self.head_ps) != len(self.head_sizes):
            raise ValueError(
                f"head_ps has {len(self.head_ps)} entries, head_sizes {len(self.head_sizes)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, the encoder's as `AWDLSTMConfig.to_dict`."""
        return {**dataclasses.asdict(self), "encoder": self.encoder.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassifierConfig:
        """The config `to_dict` wrote (JSON lists back to tuples)."""
        d = dict(d)
        d["encoder"] = AWDLSTMConfig.from_dict(d["encoder"])
        d["head_sizes"] = tuple(d["head_sizes"])
        if d.get("head_ps") is not None:
            d["head_ps"] = tuple(d["head_ps"])
        return cls(**d)

    @property
    def head_features(self) -> tuple[int, ...]:
        """Widths through the head: (3 * emb, *head_sizes, n_classes)."""
        return (3 * self.encoder.emb_size, *self.head_sizes, self.n_classes)

    @property
    def head_dropouts(self) -> tuple[float, ...]:
        """Dropout before each head Linear: [output_p * drop_mult, 0.1, ...] as fastai."""
        rest = self.head_ps if self.head_ps is not None else (0.1,) * len(self.head_sizes)
        return (self.encoder.output_dropout, *rest)
