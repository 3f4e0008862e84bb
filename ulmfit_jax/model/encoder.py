"""The encoder seam: what an encoder kind provides, and the registry that names the kinds.

The LM (`language_model.py`) and the classifier (`classifier.py`) reach their encoder only
through this module, so a new recurrent encoder is one module of its own that registers
itself here, plus, if it has a fastai counterpart, its converter in `convert/`.
`AWDLSTMConfig.encoder_kind` picks the kind: "awd_lstm" (default, `awd_lstm.AWDLSTMEncoder`)
or "qrnn" (`qrnn.QRNNEncoder`); the sizes and the AWD dropout probabilities of that config
apply to every kind.

An encoder kind is an `nnx.Module` class satisfying `Encoder`. Its parameters sit under
`encoder/` in the model's tree with these paths, which the optimizer's layer groups, the
checkpoints and the fastai converters rely on:
  encoder/embedding       [vocab, emb]   the LM's decoder is tied to it
  encoder/layers/{l}/...  layer l's parameters (one optimizer layer group per layer)
The last layer is `emb` wide (tied decoder; the classifier pools 3 * emb features).
"""
from __future__ import annotations

from typing import Any, ClassVar, Protocol

import jax
from flax import nnx

from ulmfit_jax.errors import ConfigError
from ulmfit_jax.model.awd_lstm import KIND as AWD_LSTM
from ulmfit_jax.model.awd_lstm import AWDLSTMEncoder
from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.model.qrnn import KIND as QRNN
from ulmfit_jax.model.qrnn import QRNNEncoder

# Pytrees whose structure belongs to the encoder kind; every array of a state or of a
# variational mask has the batch on its first axis.
EncoderWeights = Any  # plain arrays of the parameters (traceable, differentiable)
EncoderState = Any  # the carried recurrent state, e.g. per layer (h, c) [batch, hid_l]
EncoderMasks = Any  # one forward call's dropout masks
# (regex over the '/'-joined parameter path, multiplicity): the optimizer multiplies the Adam
# step of a matching parameter, and its gradient's weight in the clipping norm, by this.
StepMultiplicity = tuple[tuple[str, float], ...]


class Encoder(Protocol):
    """An encoder kind: an `nnx.Module` class holding the `encoder/...` parameters.

    `fastai_step_multiplicity` tells the optimizer how fastai's Adam steps these parameters
    when one of ours stands for several of fastai's (the AWD-LSTM's fused bias); `()` for
    none. The training stages pass it to the optimizer.
    The static functions are pure and traceable (jit, grad, scan over BPT3C chunks):
    - `encode(weights, config, ids, state, masks, step_mask)`: ids [batch, time] int; state
      as `zero_state` gives (None = zeros); masks from `sample_masks` (None = eval);
      step_mask [batch, time] bool or None, False leaves the state untouched (the
      classifier's leading padding, the generator's right padding). Returns the raw
      (undropped) last-layer output [batch, time, emb] and the new state. Output dropout
      is the caller's (the LM decoder's, the classifier head's), as in fastai.
    - `zero_state(config, batch_size)`: the all-zero state for `batch_size` rows.
    - `sample_masks(key, config, batch_size)`: the encoder's dropout masks for one call.
    """

    fastai_step_multiplicity: ClassVar[StepMultiplicity]
    config: AWDLSTMConfig
    embedding: nnx.Param

    def __init__(self, config: AWDLSTMConfig, *, rngs: nnx.Rngs) -> None: ...

    def weights(self) -> EncoderWeights:
        """The parameters as plain arrays, the first argument of `encode`."""
        ...

    def __call__(
        self, ids: jax.Array, state: EncoderState | None = None,
        masks: EncoderMasks | None = None, step_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, EncoderState]:
        """`encode` on this module's own weights."""
        ...

    @staticmethod
    def encode(
        weights: EncoderWeights, config: AWDLSTMConfig, ids: jax.Array,
        state: EncoderState | None = None, masks: EncoderMasks | None = None,
        step_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, EncoderState]: ...

    @staticmethod
    def zero_state(config: AWDLSTMConfig, batch_size: int) -> EncoderState: ...

    @staticmethod
    def sample_masks(key: jax.Array, config: AWDLSTMConfig, batch_size: int) -> EncoderMasks: ...


# mypy reads `encode = staticmethod(encode)` in a class body as an instance attribute, not
# the static method the protocol declares; the class has every member.
ENCODERS: dict[str, type[Encoder]] = {
    AWD_LSTM: AWDLSTMEncoder,  # type: ignore[dict-item]
    QRNN: QRNNEncoder,  # type: ignore[dict-item]
}


def register_encoder(kind: str, encoder: type[Encoder]) -> type[Encoder]:
    """Make `encoder` the class of `AWDLSTMConfig(encoder_kind=kind)`; returns it."""
    if ENCODERS.get(kind, encoder) is not encoder:
        raise ValueError(f"encoder kind {kind!r} is already {ENCODERS[kind].__name__}")
    ENCODERS[kind] = encoder
    return encoder


def encoder_class(config: AWDLSTMConfig) -> type[Encoder]:
    """The registered class of `config.encoder_kind` (`ConfigError` for an unknown kind)."""
    try:
        return ENCODERS[config.encoder_kind]
    except KeyError:
        raise ConfigError(f"encoder_kind={config.encoder_kind!r}; expected one of "
                          f"{sorted(ENCODERS)}") from None


def build_encoder(config: AWDLSTMConfig, *, rngs: nnx.Rngs) -> Encoder:
    """A freshly initialised encoder module of `config.encoder_kind`."""
    return encoder_class(config)(config, rngs=rngs)


def zero_state(config: AWDLSTMConfig, batch_size: int) -> EncoderState:
    """The all-zero carried state of `config`'s encoder for `batch_size` rows."""
    return encoder_class(config).zero_state(config, batch_size)


def fastai_step_multiplicity(config: AWDLSTMConfig) -> StepMultiplicity:
    """What the optimizer must multiply to step `config`'s encoder as fastai does."""
    return encoder_class(config).fastai_step_multiplicity


def stop_gradient_weights(weights: EncoderWeights) -> EncoderWeights:
    """The same weights with gradients cut (for the BPT3C prefix that gets no backward)."""
    return jax.tree_util.tree_map(jax.lax.stop_gradient, weights)
