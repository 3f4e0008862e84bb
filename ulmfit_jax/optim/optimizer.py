"""ULMFiT's optimizer: fastai's `Adam(decouple_wd=True)` over layer groups, from optax's parts.

For the phase that `freeze_to(n)` starts, `LayerGroupOptimizer.transform(n)` is

    optax.chain(
        optax.masked(optax.set_to_zero(), frozen),         # frozen grads: out of norm, moments
        optax.inject_hyperparams(schedule_driven)(lr, mom, lr_scale),
        optax.masked(optax.set_to_zero(), frozen))         # frozen updates: no decay either

    schedule_driven(lr, mom, lr_scale) = optax.chain(
        clip_by_global_norm_like_torch(clip_norm, multiplicity),   # if clip_norm
        optax.partition({g: inner(learning_rate=lr * lr_scale[g], b1=mom)}, group labels),
        scale_by_multiplicity(multiplicity),                        # fused LSTM bias
        optax.partition({g: optax.add_decayed_weights(-lr * lr_scale[g] * wd),
                         "no_decay": optax.identity()}, group or no-decay labels))

`inner` is fastai's Adam step by default (`fastai_adam`: `optax.adam` with fastai's b2 and
eps); any optax optimizer taking `learning_rate` and `b1` (`optax.lamb`, say) can stand in.

Schedules are data. The train step writes this step's LR and momentum into the injected
hyperparameters with `set_schedule(opt_state, lr, mom)` and then calls the plain optax
`tx.update(grads, opt_state, params)`; the phase's per-group LR factors are set once with
`set_lr_scale`. Nothing recompiles. `optax.scale_by_adam` de-biases with the injected
(current) b1, as fastai does with the current `mom`.

Frozen groups are fixed at trace time: one transformation, hence one compiled step, per
`freeze_to`. The state's structure does not depend on `n` (the masks are not in it), so one
train state and one checkpoint format serve every phase. fastai's `train_bn` keeps batch-norm
parameters training inside frozen groups.

Step counts: optax's Adam keeps one count per layer group; fastai keeps one per parameter and
skips frozen ones. They agree because fastai's `Learner.freeze_to` clears the optimizer state
and the trainer does the same (`reset_moments`) at every `freeze_to`: from then on every
trainable parameter has taken the same number of steps. (A frozen group's count runs on while
its moments stay zero; unfreezing it without `reset_moments` would de-bias it wrongly.)

Weight decay: fastai multiplies p by (1 - lr_g*wd) before its Adam step; that step does not
read p, so adding -lr_g*wd*p (p before the step) to the Adam update is the same update.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ulmfit_jax.optim.fastai_transforms import (
    clip_by_global_norm_like_torch,
    scale_by_multiplicity,
)
from ulmfit_jax.optim.layer_groups import GroupSpec, LayerGroups, assign_layer_groups, frozen_mask
from ulmfit_jax.tree_paths import match_paths, path_values

PyTree = Any
# inner(learning_rate=..., b1=...) -> the per-group optimizer step (LR applied, sign included).
InnerFactory = Callable[..., optax.GradientTransformation]

# fastai's `Learner(wd_bn_bias=False)` exempts from weight decay every parameter of a norm
# layer and every module's `.bias` *tensor*. `nn.LSTM.bias` is a bool flag, not a tensor, so
# fastai decays the LSTM biases; the tied embedding is decayed; the decoder bias is not.
FASTAI_NO_DECAY: tuple[str, ...] = (r"decoder_bias", r"(.*/)?batch_norm/.*", r"(.*/)?linear/bias")
# fastai's `Learner(train_bn=True)` keeps norm-layer parameters training inside frozen groups.
FASTAI_FORCE_TRAIN: tuple[str, ...] = (r"(.*/)?batch_norm/.*",)
_NO_DECAY_LABEL = "no_decay"


def fastai_adam(sqr_mom: float = 0.99, eps: float = 1e-5) -> InnerFactory:
    """fastai's Adam step (no weight decay) as an `inner`: `optax.adam` with b2 = `sqr_mom`.

    Per parameter: m = b1*m + (1-b1)*g, v = b2*v + (1-b2)*g^2, k += 1,
    update = -lr * (m / (1-b1^k)) / (sqrt(v / (1-b2^k)) + eps).
    """
    return functools.partial(optax.adam, b2=sqr_mom, eps=eps)


@dataclasses.dataclass(frozen=True, eq=False)
class LayerGroupOptimizer:
    """An optimizer over layer groups with fastai's rules; `transform(n)` per `freeze_to(n)`.

    Attributes:
      groups: the layer groups (`assign_layer_groups`).
      decay, force_train: bool trees like the parameters (weight decay; trains when frozen).
      multiplicity: float tree like the parameters (see `fastai_transforms`).
      wd: decoupled weight decay; clip_norm: max global gradient norm or None.
      inner: the per-group step, `inner(learning_rate=..., b1=...)`.
    """

    groups: LayerGroups
    decay: PyTree
    force_train: PyTree
    multiplicity: PyTree
    wd: float
    clip_norm: float | None
    inner: InnerFactory

    def frozen_mask(self, freeze_to: int) -> PyTree:
        """Bool tree like the parameters: True where `freeze_to(freeze_to)` freezes a leaf."""
        return frozen_mask(self.groups, freeze_to, self.force_train)

    def transform(self, freeze_to: int = 0) -> optax.GradientTransformation:
        """The optax transformation for a phase that trains groups [freeze_to:] (module doc)."""
        frozen = self.frozen_mask(freeze_to)
        scheduled = optax.inject_hyperparams(self._schedule_driven, hyperparam_dtype=jnp.float32)
        n = self.groups.n_groups
        return optax.chain(
            optax.masked(optax.set_to_zero(), frozen),
            scheduled(lr=0.0, mom=0.9, lr_scale=np.ones([n], np.float32)),
            optax.masked(optax.set_to_zero(), frozen),
        )

    def init(self, params: PyTree) -> optax.OptState:
        """The optimizer state (the same structure for every `freeze_to`)."""
        return self.transform().init(params)

    def _schedule_driven(self, lr: jax.Array, mom: jax.Array, lr_scale: jax.Array
                         ) -> optax.GradientTransformation:
        """The step for this LR, momentum and [n_groups] LR factors (traced arrays)."""
        names = self.groups.names
        group_lr = {name: lr * lr_scale[g] for g, name in enumerate(names)}
        steps = optax.partition({name: self.inner(learning_rate=group_lr[name], b1=mom)
                                 for name in names}, self.groups.name_labels())
        parts = [steps, scale_by_multiplicity(self.multiplicity)]
        if self.clip_norm is not None:
            parts.insert(0, clip_by_global_norm_like_torch(self.clip_norm, self.multiplicity))
        if self.wd != 0:
            decays = {name: optax.add_decayed_weights(-group_lr[name] * self.wd) for name in names}
            labels = jax.tree.map(lambda name, d: name if d else _NO_DECAY_LABEL,
                                  self.groups.name_labels(), self.decay)
            parts.append(optax.partition({**decays, _NO_DECAY_LABEL: optax.identity()}, labels))
        return optax.chain(*parts)


def ulmfit_optimizer(
    params: PyTree,
    spec: GroupSpec,
    *,
    multiplicity: Sequence[tuple[str, float]],
    wd: float = 0.01,
    clip_norm: float | None = None,
    sqr_mom: float = 0.99,
    eps: float = 1e-5,
    inner: InnerFactory | None = None,
    no_decay: Sequence[str] = FASTAI_NO_DECAY,
    force_train: Sequence[str] = FASTAI_FORCE_TRAIN,
) -> LayerGroupOptimizer:
    """fastai's optimizer over the layer groups of `spec` (logs the assignment table).

    Args:
      params: the parameter tree (shapes only matter).
      spec: `lm_layer_groups(n)`, `classifier_layer_groups(n)` or your own (name, regex) list.
      multiplicity: (regex, factor) rules for fused parameters, e.g. the encoder's
        `fastai_step_multiplicity` (model/encoder.py); `()` for none. Required: no rule is
        assumed.
      wd: decoupled weight decay (applied with each group's LR) to all but `no_decay`.
      clip_norm: torch-style max global gradient norm, or None for no clipping.
      sqr_mom, eps: the default Adam's b2 and eps (ignored when `inner` is given).
      inner: another optax optimizer for every group, e.g. `optax.lamb`; called as
        `inner(learning_rate=..., b1=...)`.
      no_decay, force_train: regexes for parameters without weight decay, and for those that
        train inside frozen groups.
    """
    groups = assign_layer_groups(params, spec)
    return LayerGroupOptimizer(
        groups=groups,
        decay=jax.tree.map(lambda skip: not skip, match_paths(params, no_decay)),
        force_train=match_paths(params, force_train),
        multiplicity=path_values(params, multiplicity, default=1.0),
        wd=wd,
        clip_norm=clip_norm,
        inner=inner if inner is not None else fastai_adam(sqr_mom, eps),
    )


# ---------------------------------------------------------------- the state as data


def _is_ours(x: Any) -> bool:
    return isinstance(x, optax.InjectStatefulHyperparamsState) and "lr_scale" in x.hyperparams


def schedule_state(opt_state: PyTree) -> optax.InjectStatefulHyperparamsState:
    """The injected-hyperparameter state of the `LayerGroupOptimizer` inside `opt_state`
    (which may be wrapped in a chain)."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_ours) if _is_ours(x)]
    if len(found) != 1:
        raise ValueError("the optimizer state must hold exactly one LayerGroupOptimizer state, "
                         f"found {len(found)}")
    return found[0]


def _replace(opt_state: PyTree, fn: Callable[[Any], Any]) -> PyTree:
    schedule_state(opt_state)  # exactly one
    return jax.tree.map(lambda x: fn(x) if _is_ours(x) else x, opt_state, is_leaf=_is_ours)


def _with_hyperparams(opt_state: PyTree, **values: jax.typing.ArrayLike) -> PyTree:
    def apply(state: optax.InjectStatefulHyperparamsState) -> optax.InjectStatefulHyperparamsState:
        new = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
        for k, v in new.items():
            if v.shape != state.hyperparams[k].shape:
                raise ValueError(f"{k} shape {v.shape} != {state.hyperparams[k].shape}")
        return state._replace(hyperparams={**state.hyperparams, **new})

    return _replace(opt_state, apply)


def set_schedule(opt_state: PyTree, lr: jax.typing.ArrayLike, mom: jax.typing.ArrayLike
                 ) -> PyTree:
    """This step's scheduled LR (of the last group) and momentum (Adam's b1), as data."""
    return _with_hyperparams(opt_state, lr=lr, mom=mom)


def set_lr_scale(opt_state: PyTree, scale: Sequence[float] | np.ndarray) -> PyTree:
    """The per-group LR factors [n_groups]: group g trains at lr * scale[g] (discriminative
    fine-tuning; `group_lrs(...) / lr_max`)."""
    return _with_hyperparams(opt_state, lr_scale=jnp.asarray(scale, jnp.float32))


def n_groups(opt_state: PyTree) -> int:
    """Number of layer groups of the `LayerGroupOptimizer` inside `opt_state`."""
    return int(schedule_state(opt_state).hyperparams["lr_scale"].shape[0])


def reset_moments(opt_state: PyTree) -> PyTree:
    """fastai's `Optimizer.clear_state` (which `Learner.freeze_to` calls): zero moments and
    step counts, keep the hyperparameters. Zero is the initial state of Adam, LAMB and the
    other moment-based optax optimizers."""
    def apply(state: optax.InjectStatefulHyperparamsState) -> optax.InjectStatefulHyperparamsState:
        zeros = jax.tree.map(jnp.zeros_like, (state.count, state.inner_state))
        return state._replace(count=zeros[0], inner_state=zeros[1])

    return _replace(opt_state, apply)
