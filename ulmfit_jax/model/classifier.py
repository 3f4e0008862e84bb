"""AWD-LSTM classifier: BPT3C over chunks, masked concat pooling and the pooling head.

The encoder is whichever kind `config.encoder.encoder_kind` names (`model.encoder`): the chunk
loop only carries its state and passes its masks and the leading-padding `step_mask`.

Each document's result equals fastai's result for that document run alone (batch of one):
- leading padding (before a document's first real token) leaves its state at zero, which is
  what fastai's shrinking `real_bs` achieves in the layouts where it is batch-consistent;
- a document keeps (for pooling and gradients) its chunks whose start `i`, counted from its
  first real token, satisfies `length - i <= max_len` (fastai's rule applied to the document);
- pooling counts non-pad tokens only; the "last" output is fastai's `-last_lens-1` position.
fastai itself can skip a short document in a batch whose padded length is not a multiple of
`bptt`; we give the single-document answer there.

`AWDLSTMClassifier.forward` also returns what fastai's `PoolingLinearClassifier` hands its
`RNNRegularizer` (AR/TAR in training): the `SentenceEncoder` outputs, rebuilt in fastai's
positions (`fastai_sentence_outputs`), so the regularizer sees the same values whatever
bucketed width our batch is padded to.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from ulmfit_jax.model.batch_norm import BatchNorm
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.model.dropout import dropout_mask
from ulmfit_jax.model.encoder import (
    EncoderMasks,
    EncoderState,
    EncoderWeights,
    build_encoder,
    encoder_class,
    stop_gradient_weights,
    zero_state,
)
from ulmfit_jax.model.precision import matmul_precision


@struct.dataclass
class ClassifierDropoutMasks:
    """Masks for one classifier forward call: the encoder's and the head's.

    The encoder masks are drawn once per call and shared by all BPT3C chunks (fastai redraws
    them per chunk). head: tuple over head blocks of [batch, features_k].
    """

    encoder: EncoderMasks
    head: tuple[jax.Array, ...]


def sample_classifier_masks(
    key: jax.Array, config: ClassifierConfig, batch_size: int
) -> ClassifierDropoutMasks:
    """Draw the encoder masks and one [batch, features_k] mask per head block."""
    encoder_key, head_key = jax.random.split(key)
    encoder = encoder_class(config.encoder).sample_masks(encoder_key, config.encoder, batch_size)
    features = config.head_features[:-1]
    keys = jax.random.split(head_key, len(features))
    head = tuple(
        dropout_mask(k, (batch_size, n), p)
        for k, n, p in zip(keys, features, config.head_dropouts, strict=True)
    )
    return ClassifierDropoutMasks(encoder=encoder, head=head)


class HeadBlock(nnx.Module):
    """BatchNorm -> Dropout -> Linear (no bias): batch_norm/{scale,bias,mean,var}, linear/kernel."""

    def __init__(self, n_in: int, n_out: int, *, rngs: nnx.Rngs):
        self.batch_norm = BatchNorm(n_in)
        # torch's nn.Linear init: U(-1/sqrt(n_in), 1/sqrt(n_in)).
        init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        self.linear = nnx.Linear(n_in, n_out, use_bias=False, kernel_init=init, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None, train: bool) -> jax.Array:
        """x [batch, n_in] -> [batch, n_out]; mask [batch, n_in] scaled dropout mask or None."""
        x = self.batch_norm(x, train=train)
        if mask is not None:
            x = x * mask
        return self.linear(x)


class PoolingHead(nnx.Module):
    """Blocks `features[k] -> features[k+1]` with ReLU between them (not after the last)."""

    def __init__(self, features: tuple[int, ...], *, rngs: nnx.Rngs):
        self.blocks = nnx.List(
            [HeadBlock(i, o, rngs=rngs) for i, o in zip(features[:-1], features[1:], strict=True)]
        )

    def __call__(
        self, x: jax.Array, masks: tuple[jax.Array, ...] | None, train: bool
    ) -> jax.Array:
        """x [batch, 3*emb] pooled features -> logits [batch, n_classes]."""
        for k, block in enumerate(self.blocks):
            x = block(x, None if masks is None else masks[k], train)
            if k != len(self.blocks) - 1:
                x = jax.nn.relu(x)
        return x


class ActivationSums(NamedTuple):
    """What fastai's `RNNRegularizer` sums over the `SentenceEncoder` outputs `h`
    [batch, length, emb] of a batch (`fastai_activation_sums`): `squares` = sum(h^2) (AR),
    `step_differences` = sum((h[:, 1:] - h[:, :-1])^2) (TAR), and `length` (int32 scalar).
    float32 scalars."""

    squares: jax.Array
    step_differences: jax.Array
    length: jax.Array


class ClassifierOutput(NamedTuple):
    """logits [batch, n_classes]; sentence_outputs [batch, window, emb] and sentence_length
    (int32 scalar): fastai's `SentenceEncoder` outputs for this batch in their first
    `sentence_length` positions, zeros after them (`fastai_sentence_outputs`); activation_sums:
    fastai's AR/TAR sums over those outputs (`fastai_activation_sums`), which a training step
    uses instead of the outputs (under jit, whichever is unused is not computed)."""

    logits: jax.Array
    sentence_outputs: jax.Array
    sentence_length: jax.Array
    activation_sums: ActivationSums


class AWDLSTMClassifier(nnx.Module):
    """Parameters: encoder/... (as the LM's) and head/blocks/{k}/..."""

    def __init__(self, config: ClassifierConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = build_encoder(config.encoder, rngs=rngs)
        self.head = PoolingHead(config.head_features, rngs=rngs)

    def __call__(
        self,
        ids: jax.Array,
        masks: ClassifierDropoutMasks | None = None,
        train: bool = False,
    ) -> jax.Array:
        """ids [batch, time] padded in fastai layout -> logits [batch, n_classes].

        masks None = no dropout; train=True uses batch statistics in BatchNorm and updates
        its running statistics.
        """
        with matmul_precision(self.config.encoder.matmul_precision):
            encoded = bpt3c_encode(self.encoder.weights(), self.config, ids, masks)
            return self._classify(encoded, masks, train)

    def forward(
        self,
        ids: jax.Array,
        masks: ClassifierDropoutMasks | None = None,
        train: bool = False,
    ) -> ClassifierOutput:
        """`__call__`'s logits and what fastai's `PoolingLinearClassifier` also returns for
        its `RNNRegularizer` (AR/TAR in training): the `SentenceEncoder` outputs."""
        with matmul_precision(self.config.encoder.matmul_precision):
            encoded = bpt3c_encode(self.encoder.weights(), self.config, ids, masks)
            logits = self._classify(encoded, masks, train)
        outputs, length = fastai_sentence_outputs(encoded, self.config)
        return ClassifierOutput(logits, outputs, length,
                                fastai_activation_sums(encoded, self.config))

    def _classify(self, encoded: EncodedChunks, masks: ClassifierDropoutMasks | None,
                  train: bool) -> jax.Array:
        pooled = bpt3c_pool(encoded, self.config)
        return self.head(pooled, None if masks is None else masks.head, train)


class _FastaiRows(NamedTuple):
    """Where each row of a batch sits in fastai's `SentenceEncoder` output (see
    `fastai_sentence_outputs`): the output's `length` (int32 scalar), each row's text span
    [start, end) in its positions, and `shift` [batch] (its position p holds our window
    position p + shift)."""

    length: jax.Array
    start: jax.Array
    end: jax.Array
    shift: jax.Array


def _fastai_rows(encoded: EncodedChunks, config: ClassifierConfig) -> _FastaiRows:
    bptt = config.bptt
    first, last = _document_layout(encoded.ids, config.encoder.pad_id)
    n_tokens = jnp.maximum(last - first + 1, 0)
    width = jnp.max(n_tokens)
    kept = jnp.maximum(0, -((config.max_len - width) // bptt)) * bptt  # fastai: ceil, chunks
    row_start = (width - n_tokens) // bptt * bptt
    row_end = jnp.minimum(width, row_start + -(-n_tokens // bptt) * bptt)
    start = jnp.maximum(row_start, kept) - kept
    end = jnp.maximum(row_end - kept, start)
    return _FastaiRows((width - kept).astype(jnp.int32), start, end,
                       first + kept - row_start - encoded.start)


def _document_layout(ids: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
    """First and last real-token index of each row, [batch] each (a row with no real token
    gets first = time, last = -1)."""
    time = ids.shape[1]
    real = ids != pad_id
    positions = jnp.arange(time)
    first = jnp.min(jnp.where(real, positions, time), axis=1)
    last = jnp.max(jnp.where(real, positions, -1), axis=1)
    return first, last


def pooling_mask(
    ids: jax.Array, config: ClassifierConfig, window_start: int
) -> tuple[jax.Array, jax.Array]:
    """Which positions each document pools over, and its "last" position.

    ids [batch, time]. Returns mask [batch, time] (non-pad tokens inside the document's kept
    chunks, at or after `window_start`) and last_index [batch]: fastai's
    `length - 1 - (pads among the last bptt tokens)`, in padded-row coordinates.
    """
    pad, bptt = config.encoder.pad_id, config.bptt
    first, last = _document_layout(ids, pad)
    positions = jnp.arange(ids.shape[1])[None, :]
    length = (last - first + 1)[:, None]
    chunk_start = ((positions - first[:, None]) // bptt) * bptt
    in_doc = (positions >= first[:, None]) & (positions <= last[:, None])
    kept = in_doc & (length - chunk_start <= config.max_len) & (positions >= window_start)
    is_pad = ids == pad
    tail = in_doc & (positions > last[:, None] - bptt)
    last_index = last - jnp.sum(tail & is_pad, axis=1)
    return kept & ~is_pad, last_index


def masked_concat_pool(
    outputs: jax.Array, mask: jax.Array, last_index: jax.Array
) -> jax.Array:
    """outputs [batch, time, emb], mask [batch, time] bool, last_index [batch] ->
    [batch, 3*emb] = [output at last_index, max over mask, mean over mask]."""
    m = mask[..., None]
    count = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1).astype(outputs.dtype)
    mean = jnp.sum(jnp.where(m, outputs, 0.0), axis=1) / count
    max_pool = jnp.max(jnp.where(m, outputs, -jnp.inf), axis=1)
    # A row without real tokens would give -inf and NaN logits; give it zeros instead.
    max_pool = jnp.where(jnp.any(mask, axis=1, keepdims=True), max_pool, 0.0)
    last = jnp.take_along_axis(outputs, last_index[:, None, None], axis=1)[:, 0]
    return jnp.concatenate([last, max_pool, mean], axis=-1)


def first_kept_chunk(time: int, config: ClassifierConfig) -> int:
    """Index of the first chunk any document can keep.

    fastai keeps chunk start i of a document ending at e iff e - i <= max_len. Our batches
    (`pad_bucketed`) end a document up to 2 * bptt - 2 positions before `time` (fastai's
    layout, r < bptt, plus the bucket's remainder, r < bptt), so we keep i iff
    time - i < max_len + 2 * bptt - 1: one chunk more than a document may need, whose outputs
    the pooling mask then leaves out. A symbolic `time` (a `jax.export` with polymorphic
    shapes) gives 0: every chunk is run with outputs kept, which changes no result (the pooling
    mask still applies max_len).
    """
    if jax.export.is_symbolic_dim(time):
        return 0
    bptt = config.bptt
    return max(0, -(-(time - config.max_len - 2 * bptt + 2) // bptt))


class EncodedChunks(NamedTuple):
    """The encoder run over BPT3C chunks: `ids` [batch, n_chunks * bptt] (the input padded at
    the end to whole chunks) and the raw last-layer `outputs` [batch, window, emb] of its
    positions from `start` on (a multiple of bptt: the first chunk any document keeps)."""

    ids: jax.Array
    outputs: jax.Array
    start: int


def bpt3c_encode(
    weights: EncoderWeights,
    config: ClassifierConfig,
    ids: jax.Array,
    masks: ClassifierDropoutMasks | None = None,
) -> EncodedChunks:
    """Run the encoder over the bptt chunks of ids [batch, time] (fastai layout).

    The state is carried between chunks with its gradient cut at every boundary (fastai
    detaches it); the chunks before the kept window run without any backward. A row's steps
    run from its first real token to the batch's last one (fastai runs a row's trailing pads
    up to the batch's width); steps no row takes are skipped where the encoder can.
    """
    enc_cfg, bptt = config.encoder, config.bptt
    encoder_masks = None if masks is None else masks.encoder
    batch, time = ids.shape
    n_chunks = -(-time // bptt)
    padded = jnp.pad(ids, ((0, 0), (0, n_chunks * bptt - time)), constant_values=enc_cfg.pad_id)
    first, last = _document_layout(ids, enc_cfg.pad_id)
    positions = jnp.arange(n_chunks * bptt)[None, :]
    active = (positions >= first[:, None]) & (positions <= jnp.max(last))
    c0 = first_kept_chunk(time, config)
    state = zero_state(enc_cfg, batch)
    if c0 > 0:
        frozen = stop_gradient_weights(weights)
        state, _ = _scan_chunks(frozen, enc_cfg, padded[:, : c0 * bptt],
                                active[:, : c0 * bptt], state, encoder_masks, bptt,
                                keep_outputs=False)
        state = jax.lax.stop_gradient(state)
    _, outputs = _scan_chunks(weights, enc_cfg, padded[:, c0 * bptt:], active[:, c0 * bptt:],
                              state, encoder_masks, bptt, keep_outputs=True)
    assert outputs is not None  # keep_outputs=True
    return EncodedChunks(padded, outputs, c0 * bptt)


def bpt3c_pool(encoded: EncodedChunks, config: ClassifierConfig) -> jax.Array:
    """Masked concat pooling of the encoded chunks -> [batch, 3*emb]."""
    start = encoded.start
    mask, last_index = pooling_mask(encoded.ids, config, start)
    return masked_concat_pool(encoded.outputs, mask[:, start:], last_index - start)


def fastai_sentence_outputs(
    encoded: EncodedChunks, config: ClassifierConfig
) -> tuple[jax.Array, jax.Array]:
    """fastai's `SentenceEncoder` output for this batch, rebuilt from ours.

    fastai pads a batch to its longest document, `width` tokens (`pad_input_chunk`: a row's
    whole chunks of padding first, the remainder last, so its text starts on a chunk boundary
    `row_start`), runs chunk i only on the rows whose token i is real (the others get zero
    rows) and keeps the chunks with `width - i <= max_len`. So from its first kept chunk on,
    fastai's position p of a row holds our output of the row's text position p - row_start
    (text, then the trailing pads of its last chunk) up to the end of that chunk, and zeros
    elsewhere; our bucketed width and extra kept chunk do not show. Returns the outputs
    [batch, window, emb] in fastai's `length = width - first kept position` positions, zeros
    after them, and `length` (int32 scalar). Exact where fastai's shrinking `real_bs` runs
    just those rows (the batch-consistent layouts, as for `bpt3c_pool`).
    """
    rows = _fastai_rows(encoded, config)
    window = encoded.outputs.shape[1]
    position = jnp.arange(window)[None, :]
    inside = (position >= rows.start[:, None]) & (position < rows.end[:, None])
    source = jnp.clip(position + rows.shift[:, None], 0, window - 1)
    gathered = jnp.take_along_axis(encoded.outputs, source[..., None], axis=1)
    return jnp.where(inside[..., None], gathered, 0.0), rows.length


def fastai_activation_sums(encoded: EncodedChunks, config: ClassifierConfig) -> ActivationSums:
    """fastai's AR and TAR sums over its `SentenceEncoder` outputs (`fastai_sentence_outputs`),
    read from ours where they lie, without building fastai's layout.

    A row's text span in fastai's positions is a run of consecutive positions of ours, so
    its squares and the differences between its neighbours are ours; each end of the span
    that borders fastai's zeros inside [0, length) adds the square of its output (its
    difference with a zero). Avoiding the gather (and its scatter in the backward pass)
    is what makes AR/TAR cheap on a CPU.
    """
    rows = _fastai_rows(encoded, config)
    outputs = encoded.outputs.astype(jnp.float32)
    # Position of fastai's output that each position q of our window fills, per row.
    fastai_position = jnp.arange(outputs.shape[1])[None, :] - rows.shift[:, None]
    inside = ((fastai_position >= rows.start[:, None])
              & (fastai_position < rows.end[:, None]))
    squares = jnp.sum(jnp.square(outputs), axis=-1)  # [batch, window]
    steps = jnp.sum(jnp.square(outputs[:, 1:] - outputs[:, :-1]), axis=-1)
    opens_after_zero = fastai_position == rows.start[:, None]
    opens_after_zero &= (rows.start > 0)[:, None]
    closes_before_zero = fastai_position == rows.end[:, None] - 1
    closes_before_zero &= (rows.end < rows.length)[:, None]
    edges = inside & opens_after_zero, inside & closes_before_zero
    step_differences = (jnp.sum(jnp.where(inside[:, 1:] & inside[:, :-1], steps, 0.0))
                        + sum(jnp.sum(jnp.where(edge, squares, 0.0)) for edge in edges))
    return ActivationSums(jnp.sum(jnp.where(inside, squares, 0.0)), step_differences,
                          rows.length)


def _scan_chunks(
    weights: EncoderWeights,
    config: AWDLSTMConfig,
    ids: jax.Array,
    active: jax.Array,
    state: EncoderState,
    masks: EncoderMasks | None,
    bptt: int,
    keep_outputs: bool,
) -> tuple[EncoderState, jax.Array | None]:
    """Scan the encoder over consecutive bptt chunks of ids [batch, n*bptt].

    Returns the final state and, if keep_outputs, outputs [batch, n*bptt, emb].
    """
    batch = ids.shape[0]
    ids_c = jnp.swapaxes(ids.reshape(batch, -1, bptt), 0, 1)
    active_c = jnp.swapaxes(active.reshape(batch, -1, bptt), 0, 1)
    encode = encoder_class(config).encode

    def step(carry: EncoderState, xs: tuple[jax.Array, jax.Array]):
        chunk_ids, chunk_active = xs
        out, new_state = encode(weights, config, chunk_ids, jax.lax.stop_gradient(carry),
                                masks, chunk_active)
        return new_state, (out if keep_outputs else None)

    state, outs = jax.lax.scan(step, state, (ids_c, active_c))
    if not keep_outputs:
        return state, None
    return state, jnp.swapaxes(outs, 0, 1).reshape(batch, -1, outs.shape[-1])
