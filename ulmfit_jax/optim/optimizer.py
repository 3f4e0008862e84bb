"""Layer groups, discriminative learning rates, frozen groups and fastai's Adam.

ULMFiT trains each *layer group* with its own learning rate (discriminative fine-tuning) and
unfreezes the groups one by one (gradual unfreezing). Here both are **data** carried in the
optimizer state, so changing them never recompiles a jitted train step:

- `assign_layer_groups` maps every parameter (by its '/'-joined path, regex, first match
  wins) to a group index, and logs a table of the assignment.
- `group_lrs` turns fastai's `lr` argument (float, `slice(lo, hi)`, list) into per-group LRs;
  `discriminative_lrs` is the paper's rule (each group = the one above / 2.6).
- `fastai_adam` is fastai's `Adam(decouple_wd=True)` as an optax transformation whose state
  holds `lr_scale [n_groups]` and `trainable [n_groups]`; `freeze_to`/`freeze`/`unfreeze` and
  `set_lr_scale` return a new state with the same shapes and dtypes.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ulmfit_jax.tree_paths import path_strings  # also reached as `optimizer.path_strings`

logger = logging.getLogger(__name__)

PyTree = Any
# (group name, regex over the '/'-joined parameter path), lowest learning rate first.
GroupSpec = Sequence[tuple[str, str]]

# fastai's `Learner(wd_bn_bias=False)` exempts from weight decay every parameter of a norm
# layer and every module's `.bias` *tensor*. `nn.LSTM.bias` is a bool flag, not a tensor, so
# fastai decays the LSTM biases; the tied embedding is decayed; the decoder bias is not.
FASTAI_NO_DECAY: tuple[str, ...] = (r"decoder_bias", r"(.*/)?batch_norm/.*", r"(.*/)?linear/bias")
# fastai's `Learner(train_bn=True)` keeps norm-layer parameters training inside frozen groups.
FASTAI_FORCE_TRAIN: tuple[str, ...] = (r"(.*/)?batch_norm/.*",)
# Our single LSTM bias stands for fastai's two tensors `bias_ih` + `bias_hh`. Both receive the
# same gradient, so fastai's Adam moves each by the same step and their sum by twice it; the
# global gradient norm also counts that gradient twice. Multiplicity 2 reproduces both.
FASTAI_FUSED_BIAS_MULTIPLICITY: tuple[tuple[str, float], ...] = ((r"encoder/layers/\d+/bias", 2.0),)

# torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6); optax's clip_by_global_norm does not.
_TORCH_CLIP_EPS = 1e-6


def lm_layer_groups(n_layers: int) -> tuple[tuple[str, str], ...]:
    """fastai's `awd_lstm_lm_split`: lstm0 .. lstm{n-1}, then embedding + decoder bias."""
    lstms = tuple((f"lstm{l}", rf"encoder/layers/{l}/.*") for l in range(n_layers))
    return lstms + (("embedding", r"encoder/embedding|decoder_bias"),)


def classifier_layer_groups(n_layers: int) -> tuple[tuple[str, str], ...]:
    """fastai's `awd_lstm_clas_split`: embedding, lstm0 .. lstm{n-1}, head."""
    lstms = tuple((f"lstm{l}", rf"encoder/layers/{l}/.*") for l in range(n_layers))
    return (("embedding", r"encoder/embedding"),) + lstms + (("head", r"head/.*"),)


def _first_match(path: str, patterns: Sequence[str]) -> int | None:
    for index, pattern in enumerate(patterns):
        if re.fullmatch(pattern, path):
            return index
    return None


def match_paths(tree: PyTree, patterns: Sequence[str]) -> PyTree:
    """Bool tree: True where the leaf's path fully matches any of `patterns`."""
    return jax.tree.map(lambda p: _first_match(p, patterns) is not None, path_strings(tree))


def path_values(tree: PyTree, rules: Sequence[tuple[str, float]], default: float) -> PyTree:
    """Float tree: the value of the first rule whose regex fully matches the leaf's path."""
    patterns = [pattern for pattern, _ in rules]

    def value(path: str) -> float:
        index = _first_match(path, patterns)
        return default if index is None else float(rules[index][1])

    return jax.tree.map(value, path_strings(tree))


@dataclasses.dataclass(frozen=True)
class LayerGroups:
    """Which layer group each parameter belongs to.

    Attributes:
      names: group names, lowest learning rate first.
      labels: a tree like the parameters holding each leaf's group index (Python int).
      table: human-readable assignment (path, shape, group), one row per parameter.
    """

    names: tuple[str, ...]
    labels: PyTree
    table: str

    @property
    def n_groups(self) -> int:
        return len(self.names)


def assign_layer_groups(params: PyTree, spec: GroupSpec) -> LayerGroups:
    """Assigns every parameter to the first group whose regex fully matches its path.

    Raises ValueError naming the path of any parameter no group covers, and naming any group
    that covers no parameter (a sign of a wrong `n_layers`). Logs the assignment table.
    """
    names = tuple(name for name, _ in spec)
    if len(set(names)) != len(names):
        raise ValueError(f"layer group names must be unique, got {names}")
    patterns = [pattern for _, pattern in spec]
    paths = path_strings(params)
    labels = jax.tree.map(lambda p: _first_match(p, patterns), paths)
    flat = list(
        zip(jax.tree.leaves(paths), jax.tree.leaves(params), _leaves_keep_none(labels), strict=True)
    )
    uncovered = [path for path, _, label in flat if label is None]
    if uncovered:
        raise ValueError(f"parameters not covered by any layer group {names}: {uncovered}")
    empty = [names[g] for g in range(len(names)) if all(label != g for _, _, label in flat)]
    if empty:
        raise ValueError(f"layer groups cover no parameter: {empty} (patterns {dict(spec)})")
    table = _format_table(flat, names)
    logger.info("Layer groups (lowest LR first):\n%s", table)
    return LayerGroups(names=names, labels=labels, table=table)


def _leaves_keep_none(tree: PyTree) -> list:
    return jax.tree.leaves(tree, is_leaf=lambda x: x is None)


def _format_table(rows: list, names: tuple[str, ...]) -> str:
    width = max(len(path) for path, _, _ in rows)
    lines = [f"{'parameter':<{width}}  {'shape':<16} group"]
    for path, leaf, label in sorted(rows, key=lambda row: (row[2], row[0])):
        shape = str(tuple(np.shape(leaf)))
        lines.append(f"{path:<{width}}  {shape:<16} {label}:{names[label]}")
    return "\n".join(lines)


def even_mults(lo: float, hi: float, n: int) -> np.ndarray:
    """fastai's `even_mults`: `n` values spaced geometrically from `lo` to `hi` (float64)."""
    if n == 1:
        return np.array([hi], dtype=np.float64)
    step = (hi / lo) ** (1 / (n - 1))
    return np.array([lo * step**i for i in range(n)], dtype=np.float64)


def group_lrs(lr: float | slice | Sequence[float], n_groups: int) -> np.ndarray:
    """Per-group learning rates [n_groups] with fastai's `Optimizer.set_hyper` semantics.

    float -> the same for every group; `slice(lo, hi)` -> `even_mults(lo, hi, n)`;
    `slice(hi)` -> hi/10 for all groups but the last, which gets hi; a sequence -> as given.
    """
    if isinstance(lr, slice):
        if lr.step is not None or lr.stop is None:
            raise ValueError(f"learning-rate slice must be slice(hi) or slice(lo, hi), got {lr}")
        if lr.start:
            return even_mults(float(lr.start), float(lr.stop), n_groups)
        return np.array([lr.stop / 10] * (n_groups - 1) + [lr.stop], dtype=np.float64)
    values = np.atleast_1d(np.asarray(lr, dtype=np.float64))
    if values.shape == (1,):
        return np.repeat(values, n_groups)
    if values.shape != (n_groups,):
        raise ValueError(f"got {values.size} learning rates for {n_groups} layer groups")
    return values


def discriminative_lrs(lr_max: float, n_groups: int, factor: float = 2.6) -> np.ndarray:
    """The paper's rule [n_groups]: group g gets lr_max / factor**(n_groups - 1 - g)."""
    return np.array([lr_max / factor ** (n_groups - 1 - g) for g in range(n_groups)])


def lr_scales(lr: float | slice | Sequence[float], n_groups: int) -> tuple[float, np.ndarray]:
    """Splits `group_lrs(lr)` into (peak LR for the schedule, per-group factors [n_groups]).

    Schedules are proportional to the peak, so `schedule(lr_max)(t) * factor[g]` equals
    fastai's per-group schedule `schedule(lr_g)(t)`.
    """
    lrs = group_lrs(lr, n_groups)
    lr_max = float(lrs[-1])
    if lr_max <= 0:
        raise ValueError(f"the last group's learning rate must be positive, got {lrs}")
    return lr_max, lrs / lr_max


class FastaiAdamState(NamedTuple):
    """Optimizer state; every field is data, so changing it never recompiles.

    count: int32 scalar per parameter, fastai's per-parameter `step` (frozen ones don't count).
    grad_avg, sqr_avg: Adam's first and second moments, like the parameters.
    lr_scale: [n_groups] float32 multipliers of the scheduled LR (discriminative LRs).
    trainable: [n_groups] float32, 1 for trained groups and 0 for frozen ones.
    """

    count: PyTree
    grad_avg: PyTree
    sqr_avg: PyTree
    lr_scale: jax.Array
    trainable: jax.Array


def fastai_adam(
    groups: LayerGroups,
    *,
    sqr_mom: float = 0.99,
    eps: float = 1e-5,
    wd: float = 0.01,
    decay_mask: PyTree | None = None,
    force_train: PyTree | None = None,
    multiplicity: PyTree | None = None,
    clip_norm: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """fastai's `Adam(decouple_wd=True)` over layer groups, plus optional gradient clipping.

    `update(grads, state, params, *, lr, mom)` takes the scheduled LR (scalar, or [n_groups])
    and beta1 (`mom`) as arrays, so schedules never recompile. Per parameter of group g:
    ``lr_g = lr * lr_scale[g]``; ``p *= 1 - lr_g*wd`` (if decayed); moments
    ``m = mom*m + (1-mom)*g``, ``v = sqr_mom*v + (1-sqr_mom)*g^2``; step counter k += 1;
    ``p -= lr_g/(1-mom^k) * m / (sqrt(v/(1-sqr_mom^k)) + eps)`` (times `multiplicity`).
    Frozen parameters (group trainable 0 and not `force_train`) get exactly zero update and keep
    their moments and counter, as fastai's `requires_grad=False` parameters do; they are also
    left out of the clipping norm (torch's `clip_grad_norm_` formula, max_norm/(norm+1e-6)).

    Built by hand rather than from `optax.multi_transform` + `optax.scale_by_adam`: those fix
    the partition and masking at trace time and keep one global step count, whereas frozen
    groups must be runtime data and fastai debiases with each parameter's own step count and
    the *current* beta1.

    Args:
      groups: from `assign_layer_groups`.
      decay_mask: bool tree, True where weight decay applies (None: all decayed).
      force_train: bool tree, True where a parameter trains even in a frozen group.
      multiplicity: float tree multiplying the Adam step and the gradient's weight in the
        clipping norm (see FASTAI_FUSED_BIAS_MULTIPLICITY; None: all 1).
      clip_norm: max global gradient norm, or None for no clipping.
    """
    labels = groups.labels

    def init(params: PyTree) -> FastaiAdamState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return FastaiAdamState(
            count=jax.tree.map(lambda _: jnp.zeros([], jnp.int32), params),
            grad_avg=zeros,
            sqr_avg=jax.tree.map(jnp.zeros_like, params),
            lr_scale=jnp.ones([groups.n_groups], jnp.float32),
            trainable=jnp.ones([groups.n_groups], jnp.float32),
        )

    def update(grads, state, params=None, *, lr, mom, **unused_extra_args):
        if params is None:
            raise ValueError("fastai_adam needs `params` (decoupled weight decay)")
        like = _Defaults(params, decay_mask, force_train, multiplicity)
        active = jax.tree.map(
            lambda g, force: jnp.logical_or(state.trainable[g] > 0, force), labels, like.force
        )
        grads = jax.tree.map(lambda g, a: jnp.where(a, g, 0.0), grads, active)
        if clip_norm is not None:
            grads = _clip_like_torch(grads, like.mult, clip_norm)
        group_lr = jnp.asarray(lr, jnp.float32) * state.lr_scale
        mom = jnp.asarray(mom, jnp.float32)

        def per_param(g, p, m, v, k, a, label, decayed, mult):
            return _adam_leaf(g, p, m, v, k, a, group_lr[label], mom, decayed, mult)

        out = jax.tree.map(
            per_param, grads, params, state.grad_avg, state.sqr_avg, state.count, active,
            labels, like.decay, like.mult,
        )
        updates, grad_avg, sqr_avg, count = (
            jax.tree.map(lambda _, o, i=i: o[i], params, out) for i in range(4)
        )
        return updates, state._replace(grad_avg=grad_avg, sqr_avg=sqr_avg, count=count)

    def _adam_leaf(g, p, m, v, k, active, lr_g, mom_t, decayed, mult):
        m_new = mom_t * m + (1 - mom_t) * g
        v_new = sqr_mom * v + (1 - sqr_mom) * g * g
        k_new = k + 1
        debias1 = 1 - mom_t ** k_new.astype(jnp.float32)
        debias2 = 1 - jnp.float32(sqr_mom) ** k_new.astype(jnp.float32)
        step = -(lr_g / debias1) * m_new / (jnp.sqrt(v_new / debias2) + eps) * mult
        decay = -lr_g * wd * p if (decayed and wd != 0) else jnp.zeros_like(p)
        update = jnp.where(active, decay + step, 0.0).astype(p.dtype)
        return (
            update,
            jnp.where(active, m_new, m),
            jnp.where(active, v_new, v),
            jnp.where(active, k_new, k),
        )

    return optax.GradientTransformationExtraArgs(init, update)


class _Defaults:
    """Fills unspecified per-parameter option trees with their neutral values."""

    def __init__(self, params, decay_mask, force_train, multiplicity):
        self.decay = _or_constant(decay_mask, params, True)
        self.force = _or_constant(force_train, params, False)
        self.mult = _or_constant(multiplicity, params, 1.0)


def _or_constant(tree: PyTree | None, like: PyTree, value: Any) -> PyTree:
    return tree if tree is not None else jax.tree.map(lambda _: value, like)


def _clip_like_torch(grads: PyTree, mult: PyTree, max_norm: float) -> PyTree:
    """torch's `clip_grad_norm_`: g *= min(1, max_norm / (norm + 1e-6))."""
    squares = jax.tree.map(lambda g, k: k * jnp.sum(jnp.square(g)), grads, mult)
    norm = jnp.sqrt(sum(jax.tree.leaves(squares)))
    coef = jnp.minimum(max_norm / (norm + _TORCH_CLIP_EPS), 1.0)
    return jax.tree.map(lambda g: g * coef, grads)


def ulmfit_adam(
    params: PyTree,
    spec: GroupSpec,
    *,
    sqr_mom: float = 0.99,
    eps: float = 1e-5,
    wd: float = 0.01,
    clip_norm: float | None = None,
    no_decay: Sequence[str] = FASTAI_NO_DECAY,
    force_train: Sequence[str] = FASTAI_FORCE_TRAIN,
    multiplicity: Sequence[tuple[str, float]] = FASTAI_FUSED_BIAS_MULTIPLICITY,
) -> tuple[optax.GradientTransformationExtraArgs, LayerGroups]:
    """`fastai_adam` with layer groups and fastai's decay / train_bn / fused-bias rules.

    Use `lm_layer_groups(n)` or `classifier_layer_groups(n)` as `spec`. Returns the
    transformation and the `LayerGroups` (whose `table` was logged).
    """
    groups = assign_layer_groups(params, spec)
    decay = jax.tree.map(lambda skip: not skip, match_paths(params, no_decay))
    tx = fastai_adam(
        groups,
        sqr_mom=sqr_mom,
        eps=eps,
        wd=wd,
        decay_mask=decay,
        force_train=match_paths(params, force_train),
        multiplicity=path_values(params, multiplicity, default=1.0),
        clip_norm=clip_norm,
    )
    return tx, groups


def trainable_groups(n_groups: int, n: int) -> np.ndarray:
    """fastai's `freeze_to(n)` as a [n_groups] float32 mask: groups [n:] train, [:n] frozen."""
    frozen_idx = n if n >= 0 else n_groups + n
    if not 0 <= frozen_idx <= n_groups:
        raise ValueError(f"freeze_to({n}) is out of range for {n_groups} layer groups")
    return (np.arange(n_groups) >= frozen_idx).astype(np.float32)


def frozen_mask(params: PyTree, groups: LayerGroups, freeze_to: int,
                force_train: Sequence[str] = FASTAI_FORCE_TRAIN) -> PyTree:
    """A bool tree like `params`: True where fastai's `freeze_to(freeze_to)` leaves a parameter
    without a gradient (its group is frozen and `force_train` does not match it)."""
    trained = trainable_groups(groups.n_groups, freeze_to)
    return jax.tree.map(lambda label, force: not (trained[label] or force), groups.labels,
                        match_paths(params, force_train))


def clear_state(state: FastaiAdamState) -> FastaiAdamState:
    """fastai's `Optimizer.clear_state`: zero moments and step counters, keep LRs and mask."""
    return state._replace(
        count=jax.tree.map(jnp.zeros_like, state.count),
        grad_avg=jax.tree.map(jnp.zeros_like, state.grad_avg),
        sqr_avg=jax.tree.map(jnp.zeros_like, state.sqr_avg),
    )


def _adam_states(opt_state: PyTree) -> list[FastaiAdamState]:
    leaves = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, FastaiAdamState))
    return [x for x in leaves if isinstance(x, FastaiAdamState)]


def _replace_adam_state(opt_state: PyTree, fn: Any) -> PyTree:
    """`opt_state` with its one `FastaiAdamState` replaced by `fn(it)`. The state may be
    wrapped (e.g. `optax.chain(optax.add_noise(...), fastai_adam(...))`), so it is found by
    type wherever it sits."""
    adam_state(opt_state)  # exactly one
    return jax.tree.map(lambda x: fn(x) if isinstance(x, FastaiAdamState) else x, opt_state,
                        is_leaf=lambda x: isinstance(x, FastaiAdamState))


def adam_state(opt_state: PyTree) -> FastaiAdamState:
    """The `FastaiAdamState` inside `opt_state` (itself, or inside a chain or wrapper)."""
    found = _adam_states(opt_state)
    if len(found) != 1:
        raise ValueError(f"the optimizer state must hold exactly one FastaiAdamState, "
                         f"found {len(found)}")
    return found[0]


def n_groups(opt_state: PyTree) -> int:
    """Number of layer groups of the fastai Adam inside `opt_state`."""
    return int(adam_state(opt_state).lr_scale.shape[0])


def freeze_to(opt_state: PyTree, n: int, *, reset_moments: bool = True) -> PyTree:
    """fastai's `Learner.freeze_to(n)`: train groups [n:] only (negative n counts from the end).

    `Learner.freeze_to` also clears the whole optimizer state (moments and step counts);
    `reset_moments=False` gives the bare `Optimizer.freeze_to`, which keeps them. `opt_state`
    is a `FastaiAdamState` or any optax state holding one (the same structure comes back).
    """
    def apply(state: FastaiAdamState) -> FastaiAdamState:
        mask = trainable_groups(state.trainable.shape[0], n)
        state = state._replace(trainable=jnp.asarray(mask, jnp.float32))
        return clear_state(state) if reset_moments else state

    return _replace_adam_state(opt_state, apply)


def freeze(opt_state: PyTree, *, reset_moments: bool = True) -> PyTree:
    """fastai's `freeze`: train only the last group."""
    return freeze_to(opt_state, -1, reset_moments=reset_moments)


def unfreeze(opt_state: PyTree, *, reset_moments: bool = True) -> PyTree:
    """fastai's `unfreeze`: train every group."""
    return freeze_to(opt_state, 0, reset_moments=reset_moments)


def set_lr_scale(opt_state: PyTree, scale: Sequence[float] | np.ndarray) -> PyTree:
    """Sets the per-group LR multipliers [n_groups] (e.g. the second output of `lr_scales`)
    of the fastai Adam inside `opt_state`."""
    scale = jnp.asarray(scale, jnp.float32)

    def apply(state: FastaiAdamState) -> FastaiAdamState:
        if scale.shape != state.lr_scale.shape:
            raise ValueError(f"lr scale shape {scale.shape} != groups {state.lr_scale.shape}")
        return state._replace(lr_scale=scale)

    return _replace_adam_state(opt_state, apply)
