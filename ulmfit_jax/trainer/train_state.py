"""Typed train and evaluation states: the pytrees the steps, the loop and checkpoints pass on.

Each is a `flax.struct` dataclass (a pytree whose leaves are arrays), so it goes through
`jax.jit`, `jax.device_put` and orbax as is. A field that holds one row per batch row (the
LM's carried LSTM state) is declared with `batch_field()`: `sharding.state_shardings` splits
those over the `data` mesh axis and replicates every other field.

  params       the model's `nnx.Param` pure dict (ARCHITECTURE.md parameter tree)
  opt_state    the optimizer's state
  step         int32 scalar, number of steps taken in this stage
  hidden       (LM) carried LSTM state, tuple over layers of (h, c) `[batch, hid_l]`
  batch_stats  (classifier) BatchNorm running statistics pure dict
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from flax import struct

BATCH_SHARDED = "batch_sharded"  # field metadata key: the field's arrays are `[batch, ...]`
# A stage's base PRNG key: as jax makes it, or as a checkpoint restores it (raw uint32, numpy).
RngKey = jax.Array | np.ndarray


def batch_field() -> Any:
    """A state field whose arrays have the batch as their first axis (split over devices)."""
    return struct.field(metadata={BATCH_SHARDED: True})


def batch_sharded_fields(state: Any) -> frozenset[str]:
    """Names of the fields of a state dataclass declared with `batch_field()`."""
    return frozenset(f.name for f in dataclasses.fields(state) if f.metadata.get(BATCH_SHARDED))


class TrainState(struct.PyTreeNode):
    """What every stage trains: parameters, optimizer state and the stage's step counter."""

    params: Any
    opt_state: Any
    step: jax.Array


class LMTrainState(TrainState):
    """Language-model training: `TrainState` plus the LSTM state carried across windows."""

    hidden: Any = batch_field()


class ClassifierTrainState(TrainState):
    """Classifier training: `TrainState` plus the head's BatchNorm running statistics."""

    batch_stats: Any


class LMEvalState(struct.PyTreeNode):
    """Language-model evaluation: parameters and the carried LSTM state."""

    params: Any
    hidden: Any = batch_field()


class ClassifierEvalState(struct.PyTreeNode):
    """Classifier evaluation: parameters and BatchNorm running statistics."""

    params: Any
    batch_stats: Any
