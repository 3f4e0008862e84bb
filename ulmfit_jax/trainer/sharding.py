"""Data parallelism: one `data` mesh axis, batch sharded on its first axis, state replicated.

Every device holds the full parameters and optimizer state; each device gets `batch / n_devices`
rows, of the batch and of the state fields declared per row (`train_state.batch_field`).
Steps are compiled once by `jax.jit` with explicit in/out shardings and the train state
donated, so XLA inserts the gradient all-reduce itself (no `pmap`).

Multi-process (`trainer.distributed`): each process feeds only its own contiguous block of
rows (the batchers take `process_index` and `process_count`) and `shard_batch` assembles the
global array with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ulmfit_jax.errors import ConfigError
from ulmfit_jax.trainer import train_state

DATA_AXIS = "data"


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named `data` over `devices` (default: every device of every host).

    Axis type `Auto` so that plain `jax.jit` sharding propagation works (explicit axes would
    require sharding-in-types annotations everywhere).
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters, optimizer state, rng and scalars: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of anything whose first axis is the batch: rows split over `data`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raise a clear error when the global batch does not split evenly over the devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(
            f"batch size {batch_size} is not divisible by the {n} devices of the `data` mesh; "
            f"choose a multiple of {n}"
        )


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Host arrays (this host's rows) -> global `jax.Array`s sharded over `data` on axis 0."""
    sharding = batch_sharding(mesh)

    def put(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, local_batch)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """Sharding pytree for a typed state (`train_state`): the fields declared with
    `batch_field()` (the LM's carried hidden state, `[batch, hidden]` per layer) are split like
    the batch, every other field is replicated."""
    rep, rows = replicated_sharding(mesh), batch_sharding(mesh)
    batch_fields = train_state.batch_sharded_fields(state)
    return state.replace(**{
        f.name: jax.tree.map(lambda _, s=(rows if f.name in batch_fields else rep): s,
                             getattr(state, f.name))
        for f in dataclasses.fields(state)
    })


def place_state(state: Any, mesh: Mesh) -> Any:
    """Put a typed state on the mesh with `state_shardings`."""
    return jax.device_put(state, state_shardings(state, mesh))


def jit_sharded_step(
    step_fn: Callable[..., tuple[Any, Any]],
    mesh: Mesh,
    state_example: Any,
    n_replicated_args: int = 1,
) -> Callable[..., tuple[Any, Any]]:
    """`jax.jit` a step `(state, batch, *replicated) -> (state, metrics)` for the `data` mesh.

    The state keeps its `state_shardings`, the batch is split on its first axis, every further
    argument (rng, this step's learning rate and momentum: data, so they never trigger a
    recompile) and the metrics are replicated. The input state is donated: its buffers are
    reused for the output.
    """
    s_state = state_shardings(state_example, mesh)
    rep = replicated_sharding(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(s_state, batch_sharding(mesh), *([rep] * n_replicated_args)),
        out_shardings=(s_state, rep),
        donate_argnums=(0,),
    )
