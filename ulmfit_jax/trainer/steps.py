"""Pure step functions `(state, batch, rng, hparams) -> (state, metrics)`.

The states are the typed pytrees of `train_state` (`LMTrainState`, `ClassifierTrainState`,
`LMEvalState`, `ClassifierEvalState`).

`hparams = {"lr", "mom"}` holds this step's scheduled learning rate and momentum as arrays;
the per-group LR factors live in the optimizer state. All are data, not constants, so
schedules never recompile the step. Frozen groups are fixed in the optimizer
(`LayerGroupOptimizer.transform(freeze_to)`): one step per `freeze_to`, compiled once each;
the classifier's (`frozen=`) also skips the backward pass of the frozen layers.
Metrics are sums and counts (`loss_sum`, `correct`, `count`); the host normalises them.
Each step folds its step number into the base rng, then samples the dropout masks from it.
Static pieces (graphdef, model config, optimizer, AR/TAR weights) are bound with
`functools.partial` by `make_*_step`, which also jit with the mesh shardings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ulmfit_jax.inference.classify import classifier_eval
from ulmfit_jax.model.classifier import (
    ActivationSums,
    ClassifierDropoutMasks,
    sample_classifier_masks,
)
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.model.encoder import zero_state
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel, sample_lm_masks
from ulmfit_jax.optim.optimizer import set_schedule
from ulmfit_jax.trainer import sharding
from ulmfit_jax.trainer.train_state import (
    ClassifierEvalState,
    ClassifierTrainState,
    LMEvalState,
    LMTrainState,
    RngKey,
    TrainState,
)


def apply_optimizer(
    optimizer: optax.GradientTransformationExtraArgs, grads: Any, state: TrainState,
    hparams: dict
) -> tuple[Any, Any]:
    """One optimizer update -> (new params, new opt_state).

    `hparams = {"lr": scalar, "mom": scalar}` (arrays) go into the optimizer's injected
    hyperparameters; the group LR factors are already there (`optimizer.set_lr_scale`).
    """
    opt_state = set_schedule(state.opt_state, hparams["lr"], hparams["mom"])
    updates, opt_state = optimizer.update(grads, opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state


def create_lm_state(
    model: AWDLSTMLanguageModel, optimizer: optax.GradientTransformationExtraArgs,
    batch_size: int,
) -> tuple[nnx.GraphDef, LMTrainState]:
    """Split an LM into (graphdef, train state) with a zero carried state for `batch_size` rows."""
    graphdef, param_state = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(param_state)
    state = LMTrainState(params=params, opt_state=optimizer.init(params),
                         step=jnp.zeros([], jnp.int32),
                         hidden=zero_state(model.config, batch_size))
    return graphdef, state


def create_classifier_state(
    model: nnx.Module, optimizer: optax.GradientTransformationExtraArgs
) -> tuple[nnx.GraphDef, ClassifierTrainState]:
    """Split a classifier into (graphdef, train state) with its BatchNorm statistics."""
    # flax types a split by several filters as a variadic tuple; two filters give two states.
    graphdef, param_state, batch_stats = nnx.split(  # type: ignore[misc]
        model, nnx.Param, nnx.BatchStat)
    params = nnx.to_pure_dict(param_state)
    state = ClassifierTrainState(params=params, opt_state=optimizer.init(params),
                                 step=jnp.zeros([], jnp.int32),
                                 batch_stats=nnx.to_pure_dict(batch_stats))
    return graphdef, state


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy in float32: logits `[..., classes]`, targets `[...]` -> `[...]`."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def multi_label_loss_and_correct(logits: jax.Array, targets: jax.Array, threshold: float
                                 ) -> tuple[jax.Array, jax.Array]:
    """Per-document binary cross-entropy with logits and share of correct labels, fastai's
    `BCEWithLogitsLossFlat` and `accuracy_multi` (fastai/losses.py, fastai/metrics.py):
    logits, targets (0/1) `[batch, n_classes]` -> `[batch]`, `[batch]`. Every document has
    n_classes cells, so their means over documents are fastai's means over all cells."""
    logits, targets = logits.astype(jnp.float32), targets.astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1)
    correct = ((jax.nn.sigmoid(logits) > threshold) == (targets > 0.5)).mean(-1)
    return bce, correct.astype(jnp.float32)


def _classifier_loss(logits: jax.Array, labels: jax.Array, multi_label: bool,
                     threshold: float) -> tuple[jax.Array, jax.Array]:
    """Per-document loss and correctness `[batch]`: softmax CE and argmax, or (multi-label)
    `multi_label_loss_and_correct`."""
    if multi_label:
        return multi_label_loss_and_correct(logits, labels, threshold)
    return token_cross_entropy(logits, labels), _top1_correct(logits, labels)


def _top1_correct(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """1.0 where the target is the most likely class, logits `[..., classes]` -> `[...]`."""
    # "target logit is the max" instead of argmax: XLA:CPU's argmax over [tokens, 60k] costs
    # more than the loss itself; they differ only on exact ties.
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return (target_logit >= jnp.max(logits, axis=-1)).astype(jnp.float32)


def _sums(loss: jax.Array, correct: jax.Array, weights: jax.Array) -> dict:
    """Sums and counts of loss and correctness under `weights` (0 for padding rows/tokens)."""
    return {"loss_sum": jnp.sum(loss * weights), "correct": jnp.sum(correct * weights),
            "count": jnp.sum(weights)}


def _sum_metrics(ce: jax.Array, logits: jax.Array, targets: jax.Array, weights: jax.Array) -> dict:
    """Sums and counts of loss and accuracy under `weights` (0 for padding rows/tokens)."""
    return _sums(ce, _top1_correct(logits, targets), weights)


def activation_regularization(
    raw_last: jax.Array, dropped_last: jax.Array, alpha: float, beta: float,
    length: jax.Array | None = None,
) -> jax.Array:
    """AR + TAR (Merity et al.) as fastai's `RNNRegularizer`:
    alpha * mean(dropped^2) + beta * mean((raw_t - raw_{t-1})^2) over `[batch, time, emb]`.

    raw_last, dropped_last: `[batch, time, emb]`, the last LSTM layer's output before and
    after the output dropout (the classifier's are both fastai's undropped `SentenceEncoder`
    outputs). length (int scalar, may be traced): the means run over the first `length` time
    positions only, and the later ones must be zeros; None = all. As fastai, a zero weight
    skips its term and a batch of one row skips TAR (its `len(h) > 1`), as does one time step.
    """
    batch, time, emb = raw_last.shape
    raw = raw_last.astype(jnp.float32)
    diff = jnp.square(raw[:, 1:] - raw[:, :-1])  # [batch, time - 1, emb]: empty for one step
    if length is not None:
        diff = jnp.where(jnp.arange(time - 1)[None, :, None] < length - 1, diff, 0.0)
    sums = ActivationSums(jnp.sum(jnp.square(dropped_last.astype(jnp.float32))), jnp.sum(diff),
                          jnp.asarray(time if length is None else length))
    return regularization_from_sums(sums, batch, emb, alpha, beta)


def regularization_from_sums(sums: ActivationSums, batch: int, emb: int, alpha: float,
                             beta: float) -> jax.Array:
    """AR + TAR of outputs `[batch, sums.length, emb]` from their `ActivationSums` (the
    classifier's: `fastai_activation_sums`; the LM's: `activation_regularization`):
    alpha * squares / (batch * emb * length) + beta * step_differences / (batch * emb *
    (length - 1)). As fastai, a zero weight skips its term and a batch of one row gets no TAR."""
    reg = jnp.zeros([], jnp.float32)
    if alpha:
        reg += alpha * sums.squares / (batch * emb * sums.length)
    if beta and batch > 1:
        # One time step has no differences (fastai skips TAR): the sum is 0 then.
        reg += beta * sums.step_differences / (batch * emb * jnp.maximum(sums.length - 1, 1))
    return reg


def lm_train_step(
    state: LMTrainState,
    batch: dict,
    rng: jax.Array,
    hparams: Any,
    *,
    graphdef: nnx.GraphDef,
    model_config: AWDLSTMConfig,
    optimizer: optax.GradientTransformationExtraArgs,
    alpha: float,
    beta: float,
) -> tuple[LMTrainState, dict]:
    """One LM step on `batch = {"inputs", "targets": [batch, time] int32}` with carried state.

    The loss is the mean token cross-entropy (pad targets included, as fastai) plus AR/TAR;
    reported metrics exclude AR/TAR. The carried state is cut from the gradient.
    """
    rng = jax.random.fold_in(rng, state.step)
    inputs, targets = batch["inputs"], batch["targets"]
    masks = sample_lm_masks(rng, model_config, inputs.shape[0])
    hidden = jax.lax.stop_gradient(state.hidden)

    def loss_fn(params):
        out = nnx.merge(graphdef, params)(inputs, state=hidden, masks=masks)
        ce = token_cross_entropy(out.logits, targets)
        reg = activation_regularization(out.raw_last, out.dropped_last, alpha, beta)
        return jnp.mean(ce) + reg, (ce, out)

    grads, (ce, out) = jax.grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = apply_optimizer(optimizer, grads, state, hparams)
    new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1,
                              hidden=out.state)
    return new_state, _sum_metrics(ce, out.logits, targets, jnp.ones_like(ce))


def lm_eval_step(
    state: LMEvalState, batch: dict, *, graphdef: nnx.GraphDef
) -> tuple[LMEvalState, dict]:
    """LM evaluation window -> (state with the new carried hidden state, sums)."""
    model = nnx.merge(graphdef, state.params)
    out = model(batch["inputs"], state=state.hidden, masks=None)
    ce = token_cross_entropy(out.logits, batch["targets"])
    weights = batch.get("weights", jnp.ones_like(ce))
    return state.replace(hidden=out.state), _sum_metrics(ce, out.logits, batch["targets"], weights)


def classifier_objective(
    params: Any,
    batch_stats: Any,
    inputs: jax.Array,
    labels: jax.Array,
    masks: ClassifierDropoutMasks,
    *,
    graphdef: nnx.GraphDef,
    alpha: float,
    beta: float,
    multi_label: bool = False,
    threshold: float = 0.5,
    frozen: Any = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, Any]]:
    """The classifier's training loss, what its step differentiates, with its by-products.

    Mean loss over the documents (`_classifier_loss`) plus fastai's AR/TAR over its
    `SentenceEncoder` outputs (`AWDLSTMClassifier.forward`), in training mode with `masks`.
    `frozen` (a bool tree like the params) marks parameters held constant: their gradient
    is zero and the backward pass stops above them. Returns (loss, (per-document loss
    [batch], correct [batch], new BatchNorm statistics)).
    """
    if frozen is not None:
        params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
    model = nnx.merge(graphdef, params, batch_stats)
    if alpha or beta:
        out = model.forward(inputs, masks=masks, train=True)
        logits = out.logits
        reg = regularization_from_sums(out.activation_sums, inputs.shape[0],
                                       model.config.encoder.emb_size, alpha, beta)
    else:
        logits, reg = model(inputs, masks=masks, train=True), jnp.zeros([], jnp.float32)
    ce, correct = _classifier_loss(logits, labels, multi_label, threshold)
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return jnp.mean(ce) + reg, (ce, correct, stats)


def classifier_train_step(
    state: ClassifierTrainState,
    batch: dict,
    rng: jax.Array,
    hparams: Any,
    *,
    graphdef: nnx.GraphDef,
    model_config: ClassifierConfig,
    optimizer: optax.GradientTransformationExtraArgs,
    alpha: float,
    beta: float,
    multi_label: bool = False,
    threshold: float = 0.5,
    frozen: Any = None,
) -> tuple[ClassifierTrainState, dict]:
    """One classifier step on `batch = {"inputs": [batch, time], "labels": [batch]}`
    (multi-label: multi-hot labels `[batch, n_classes]`, sigmoid and binary cross-entropy).

    The loss is `classifier_objective` (AR/TAR weighted by alpha and beta, as fastai's
    `TextLearner`); reported metrics exclude AR/TAR.
    BatchNorm running statistics are updated (training mode); dropout masks come from `rng`
    folded with the step. `frozen` (a bool tree like the params, `optimizer.frozen_mask`)
    marks parameters to differentiate as constants: the optimizer gives them no update
    anyway, and the backward pass then stops above the frozen layers, as torch's does for
    fastai's `requires_grad=False` parameters (head-only: no backward through the encoder,
    so AR/TAR then add to the loss but not to any gradient, as in fastai).
    """
    rng = jax.random.fold_in(rng, state.step)
    inputs, labels = batch["inputs"], batch["labels"]
    masks = sample_classifier_masks(rng, model_config, inputs.shape[0])
    objective = functools.partial(classifier_objective, graphdef=graphdef, alpha=alpha,
                                  beta=beta, multi_label=multi_label, threshold=threshold,
                                  frozen=frozen)
    grads, (ce, correct, batch_stats) = jax.grad(objective, has_aux=True)(
        state.params, state.batch_stats, inputs, labels, masks)
    params, opt_state = apply_optimizer(optimizer, grads, state, hparams)
    new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1,
                              batch_stats=batch_stats)
    return new_state, _sums(ce, correct, jnp.ones_like(ce))


def classifier_eval_step(state: ClassifierEvalState, batch: dict, *, graphdef: nnx.GraphDef,
                         multi_label: bool = False, threshold: float = 0.5) -> dict:
    """Evaluation -> sums plus per-row `probs`.

    `batch["weights"]` (optional, `[batch]`) is 0 for padding rows added to fill the batch.
    """
    logits, probs = classifier_eval(graphdef, batch["inputs"], state.params,
                                    state.batch_stats, multi_label=multi_label)
    ce, correct = _classifier_loss(logits, batch["labels"], multi_label, threshold)
    metrics = _sums(ce, correct, batch.get("weights", jnp.ones_like(ce)))
    metrics["probs"] = probs
    return metrics


def make_train_step(
    step_fn: Callable[..., tuple[TrainState, dict]], mesh: jax.sharding.Mesh, state: TrainState,
    **static: Any,
) -> Callable[[TrainState, dict, RngKey, Any], tuple[TrainState, dict]]:
    """Bind the static arguments of `step_fn` and jit it for `mesh` (state donated)."""
    return sharding.jit_sharded_step(
        functools.partial(step_fn, **static), mesh, state, n_replicated_args=2
    )


def make_lm_eval_step(
    mesh: jax.sharding.Mesh, state: LMEvalState, graphdef: nnx.GraphDef
) -> Callable[[LMEvalState, dict], tuple[LMEvalState, dict]]:
    """Jit `lm_eval_step` for `mesh` (hidden sharded by row; nothing donated: the evaluator
    starts every pass from the same zero state)."""
    s_state = sharding.state_shardings(state, mesh)
    return jax.jit(
        functools.partial(lm_eval_step, graphdef=graphdef),
        in_shardings=(s_state, sharding.batch_sharding(mesh)),
        out_shardings=(s_state, sharding.replicated_sharding(mesh)),
    )


def make_classifier_eval_step(
    mesh: jax.sharding.Mesh, graphdef: nnx.GraphDef, multi_label: bool = False,
    threshold: float = 0.5,
) -> Callable[[ClassifierEvalState, dict], dict]:
    """Jit `classifier_eval_step` for `mesh` (probabilities come back sharded by row)."""
    rep, rows = sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)
    return jax.jit(
        functools.partial(classifier_eval_step, graphdef=graphdef, multi_label=multi_label,
                          threshold=threshold),
        in_shardings=(rep, rows),
        out_shardings={"loss_sum": rep, "correct": rep, "count": rep, "probs": rows},
    )
