"""Several processes, one run: start-up, who writes, and waiting for each other.

`initialize(config.distributed)` starts `jax.distributed` before anything else touches jax.
The cluster comes from, in this order: the config's `coordinator_address`, `num_processes`
and `process_id`; the environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`); or jax's own detection (Cloud TPU, Slurm, Open MPI, Kubernetes).

Every process computes; only process 0 (`is_primary()`) writes the workdir's shared files:
run config and lock, vocab, token cache, metrics, TensorBoard, plots, saved models. The others
wait at a `barrier` where they next read what it wrote. Checkpoints are written by orbax
collectively (every process calls save; orbax coordinates). The workdir must therefore be on
storage that every process sees, as orbax requires for its checkpoints.

A process that dies stops the others: jax's coordination service misses its heartbeats for
`heartbeat_timeout_s` and ends every other process with "Terminating process because the JAX
distributed service detected fatal errors ... another task died".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np

from ulmfit_jax.errors import ConfigError, UserError

T = TypeVar("T")
ENV_KEYS = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
            "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
_OK = "ok"


def cluster_settings(settings: ml_collections.ConfigDict) -> dict[str, Any]:
    """`jax.distributed.initialize` keywords from the config, then the environment; what is
    still unset is left to jax's cluster detection."""
    unset = {"coordinator_address": "", "num_processes": 0, "process_id": -1}
    found: dict[str, Any] = {}  # config values: str or int, per `unset`
    for key, empty in unset.items():
        value = settings[key]
        if value == empty and os.environ.get(ENV_KEYS[key]):
            value = _from_env(ENV_KEYS[key], type(empty))
        if value != empty:
            found[key] = value
    return found


def _from_env(name: str, kind: type) -> object:
    try:
        return kind(os.environ[name])
    except ValueError:
        raise ConfigError(f"environment variable {name}={os.environ[name]!r} is not "
                          f"{'an integer' if kind is int else 'valid'}") from None


def initialize(settings: ml_collections.ConfigDict) -> None:
    """Start the multi-process runtime when `settings.enabled` (once per process)."""
    if not settings.enabled or jax.distributed.is_initialized():
        return
    cluster = cluster_settings(settings)
    # jax aborts the process (no Python exception) when the coordinator cannot be reached in
    # time: this line says what it was waiting for.
    print(f"joining the run's processes ({_describe(cluster)}), waiting up to "
          f"{settings.initialization_timeout_s} s", file=sys.stderr, flush=True)
    jax.distributed.initialize(
        **cluster,
        initialization_timeout=int(settings.initialization_timeout_s),
        heartbeat_timeout_seconds=int(settings.heartbeat_timeout_s),
    )


def _describe(cluster: dict[str, object]) -> str:
    if not cluster:
        return "cluster from jax's detection"
    return ", ".join(f"{key} {value}" for key, value in cluster.items())


def is_multiprocess() -> bool:
    """More than one process takes part in this run."""
    # Without jax.distributed, answer without starting jax's backend: a single-process run
    # forks its tokenizer workers before jax starts any thread.
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_primary() -> bool:
    """This process writes the run's shared files (process 0)."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op in a single process).

    `name` must be unique within the run (orbax's rule for its barriers)."""
    if is_multiprocess():
        from orbax.checkpoint import multihost

        multihost.sync_global_processes(f"ulmfit:{name}")


def primary_first(name: str, work: Callable[[], T], timeout_s: int) -> T:
    """Run `work` on process 0 first; the others run it once process 0 has succeeded.

    For work that writes shared files the first time and only reads them after (data
    preparation: vocab and token cache). When process 0 fails with a `UserError` (bad data,
    bad config), the others raise one naming it instead of waiting; a process 0 that dies is
    handled by jax's heartbeats."""
    if not is_multiprocess():
        return work()
    from orbax.checkpoint import multihost

    client = multihost.get_jax_distributed_client()
    key = f"ulmfit:{name}"
    if is_primary():
        try:
            result = work()
        except UserError as e:
            client.key_value_set(key, f"{type(e).__name__}: {e}")
            # Process 0 hosts the key-value store: it leaves only once every process has read.
            barrier(f"{name} outcome read")
            raise
        client.key_value_set(key, _OK)
        barrier(f"{name} outcome read")
        return result
    outcome = client.blocking_key_value_get(key, timeout_s * 1000)
    barrier(f"{name} outcome read")
    if outcome != _OK:
        raise UserError(f"process 0 failed ({name}): {outcome}")
    return work()


def any_process(flag: bool) -> bool:
    """True when `flag` is true on any process (every process must call this together)."""
    if not is_multiprocess():
        return flag
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))
    return bool(np.asarray(flags).any())
