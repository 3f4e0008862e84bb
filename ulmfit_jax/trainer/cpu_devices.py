"""On a CPU, one jax device per core, so that data parallelism uses every core.

XLA's CPU backend runs the LSTM's time loop on one thread: the per-step recurrent matmul
([batch, hid] @ [hid, 4*hid]) is too small for its intra-op thread pool, so the other cores
idle through the recurrence while PyTorch's fused LSTM uses them all. Splitting each batch over
several CPU devices (the trainer's `data` mesh, as on a multi-GPU host) runs one loop per core.
Measured on 2 cores at the quickstart's size (benchmarks/RESULTS.md): classifier training
steps 1.4x faster, LM steps 1.1x. At WT103 size (hidden 1152) the matmul is large enough for
the thread pool and a classifier training step takes as long on 1 device as on 2; prediction
there runs whole (`inference.local_devices`).

`cpu_devices` in the run config: 0 = auto (one device per core, lowered to the largest count
that divides every batch size the run uses), N = exactly N. It only matters where the run's
devices are CPUs, and it must be set before jax starts its backends: a notebook or test that
has already run jax keeps the devices it has (the trainer says so at debug level), and so does
a run whose XLA_FLAGS set `--xla_force_host_platform_device_count`. The count changes the
order of float32 sums (results agree within 1e-5 of one device's); a run resumes bitwise on
the same count.
"""

from __future__ import annotations

import os
import warnings

import jax
import ml_collections
from absl import logging

FORCED_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run_batch_sizes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Every global batch size the run's stages shard over the `data` mesh."""
    return (config.lm.batch_size, config.classifier.batch_size,
            config.classifier.eval_batch_size)


def auto_device_count(cores: int, batch_sizes: tuple[int, ...]) -> int:
    """The largest count <= `cores` that divides every batch size (1 at worst)."""
    return max(n for n in range(1, max(cores, 1) + 1)
               if all(size % n == 0 for size in batch_sizes))


def requested_device_count(config: ml_collections.ConfigDict) -> int:
    """How many CPU devices the config asks for (`cpu_devices`, 0 = auto)."""
    if config.cpu_devices:
        return config.cpu_devices
    return auto_device_count(available_cores(), run_batch_sizes(config))


def set_cpu_device_count(count: int) -> bool:
    """Give jax's CPU backend `count` devices, unless the user's XLA_FLAGS or
    JAX_NUM_CPU_DEVICES already set the count, or jax's backends have already started.
    True when the count was set."""
    if _count_set_by_environment():
        logging.debug("cpu_devices: XLA_FLAGS sets the CPU device count; keeping it")
        return False
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # jax already ran in this process: its devices stay as they are
        logging.debug("cpu_devices: jax's backends already started; %d CPU device(s) not set",
                      count)
        return False
    return True


def use_cpu_cores(count: int | None = None) -> None:
    """One jax CPU device per core this process may run on (or `count`), so that
    `TextClassifier.predict_proba`, `Ensemble` and your own sharded code split their batches
    over every core: on a CPU, jax runs an LSTM's time loop on one thread per device.

    Call it first, before anything runs jax (in a notebook: the first cell). jax starts with
    one CPU device; train.py and predict.py ask for one per core themselves. A count set by
    XLA_FLAGS (`--xla_force_host_platform_device_count`) or JAX_NUM_CPU_DEVICES is kept.
    Called too late, it warns and changes nothing.
    """
    count = available_cores() if count is None else count
    if count < 1:
        raise ValueError(f"use_cpu_cores: count must be >= 1, got {count}")
    if not set_cpu_device_count(count) and not _count_set_by_environment():
        warnings.warn(f"use_cpu_cores({count}): jax has already started, with "
                      f"{jax.local_device_count('cpu')} CPU device(s); call it before anything "
                      "runs jax (restart the notebook's kernel)", stacklevel=2)


def _count_set_by_environment() -> bool:
    return (FORCED_DEVICES_FLAG in os.environ.get("XLA_FLAGS", "")
            or "JAX_NUM_CPU_DEVICES" in os.environ)
