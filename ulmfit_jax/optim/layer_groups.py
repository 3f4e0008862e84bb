"""Layer groups: which parameters share a learning rate and are frozen together.

ULMFiT trains each *layer group* with its own learning rate (discriminative fine-tuning) and
unfreezes the groups one by one (gradual unfreezing, fastai's `freeze_to`).

- `lm_layer_groups` / `classifier_layer_groups` are fastai's AWD-LSTM splits as regex specs.
- `assign_layer_groups` maps every parameter (by its '/'-joined path, regex, first match
  wins) to a group index and logs a table of the assignment.
- `group_lrs` turns fastai's `lr` argument (float, `slice(lo, hi)`, list) into per-group LRs.
- `trainable_groups` / `frozen_mask` say what `freeze_to(n)` trains.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ulmfit_jax.tree_paths import first_match, path_strings

logger = logging.getLogger(__name__)

PyTree = Any
# (group name, regex over the '/'-joined parameter path), lowest learning rate first.
GroupSpec = Sequence[tuple[str, str]]


def lm_layer_groups(n_layers: int) -> tuple[tuple[str, str], ...]:
    """fastai's `awd_lstm_lm_split`: lstm0 .. lstm{n-1}, then embedding + decoder bias."""
    lstms = tuple((f"lstm{l}", rf"encoder/layers/{l}/.*") for l in range(n_layers))
    return lstms + (("embedding", r"encoder/embedding|decoder_bias"),)


def classifier_layer_groups(n_layers: int) -> tuple[tuple[str, str], ...]:
    """fastai's `awd_lstm_clas_split`: embedding, lstm0 .. lstm{n-1}, head."""
    lstms = tuple((f"lstm{l}", rf"encoder/layers/{l}/.*") for l in range(n_layers))
    return (("embedding", r"encoder/embedding"),) + lstms + (("head", r"head/.*"),)


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

    def name_labels(self) -> PyTree:
        """A tree like the parameters holding each leaf's group name."""
        return jax.tree.map(lambda g: self.names[g], self.labels)


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
    labels = jax.tree.map(lambda p: first_match(p, patterns), paths)
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
    The paper's rule (each group's LR = the one above / 2.6) is `slice(lr / 2.6**(n-1), lr)`.
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


def trainable_groups(n_groups: int, n: int) -> np.ndarray:
    """fastai's `freeze_to(n)` as a [n_groups] bool mask: groups [n:] train, [:n] are frozen
    (negative n counts from the end)."""
    frozen_idx = n if n >= 0 else n_groups + n
    if not 0 <= frozen_idx <= n_groups:
        raise ValueError(f"freeze_to({n}) is out of range for {n_groups} layer groups")
    return np.arange(n_groups) >= frozen_idx


def frozen_mask(groups: LayerGroups, freeze_to: int, force_train: PyTree) -> PyTree:
    """A bool tree like the parameters: True where fastai's `freeze_to(freeze_to)` leaves a
    parameter without a gradient (its group is frozen and `force_train`, a bool tree, is
    False there: fastai's `train_bn` keeps norm layers training)."""
    trained = trainable_groups(groups.n_groups, freeze_to)
    return jax.tree.map(lambda label, force: not (bool(trained[label]) or bool(force)),
                        groups.labels, force_train)
