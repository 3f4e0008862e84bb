"""Prediction batches split over this host's devices, as the trainer splits its batches.

On a host with several GPUs, each takes a slice. On a CPU, jax runs the LSTM's time loop on one
thread per device (see `trainer.cpu_devices`): with one jax device per core
(`ulmfit_jax.use_cpu_cores()`, or predict.py's default), a batch split over them runs one loop
per core. That pays only while the recurrent matmul ([rows, hidden] @ [hidden, 4 hidden] each
step) is too small for XLA's own thread pool: `for_model` splits over CPU devices only for an
AWD-LSTM of hidden size <= CPU_SPLIT_MAX_HIDDEN. Measured on 2 cores (benchmarks/RESULTS.md,
"Prediction over local devices"; `benchmarks/prediction_devices.py`): at hidden 256 a split
batch runs 0.96-1.17x as fast as whole (batch prediction at the quickstart's size 1.4x on an
Intel Xeon), at 400 0.87-1.00x, at 512-1152 and batch 64 0.65-0.78x. A QRNN's matmuls span the
whole sequence and already use every core, so it runs whole.

A batch is split only when its row count is a multiple of the device count; a smaller batch
(one text) runs whole on the first device, which saves the devices' rendezvous where there is
nothing to share. A document's probabilities do not depend on the split (nor on its batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ulmfit_jax.model.config import AWDLSTMConfig

CPU_SPLIT_MAX_HIDDEN = 256  # an AWD-LSTM's hidden size up to which CPU devices share a batch

# forward(ids [rows, time], state) -> outputs [rows, ...]
Forward = Callable[[Any, Any], jax.Array]


class LocalDevices:
    """Runs `forward` on one batch at a time: split over `devices` (default: this process's
    devices) when the batch's rows divide evenly, else whole on the first device.

    The state is copied to every device once, on the first split batch, and again only when
    its arrays change (the module was trained or reloaded since): a server answering many
    small calls pays the copy once.
    """

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        self.devices = list(jax.local_devices() if devices is None else devices)
        # A `data` axis, as the trainer's mesh (trainer/sharding.py, a layer above this one).
        self._mesh = Mesh(np.array(self.devices), ("data",)) if len(self.devices) > 1 else None
        self._copied_from: list[Any] | None = None
        self._copy: Any = None

    @classmethod
    def for_model(cls, config: AWDLSTMConfig) -> LocalDevices:
        """This process's devices, for an encoder of `config`: all of them, except on a CPU,
        where its batches run whole on one device unless they gain from a split (see the
        module's docstring)."""
        devices = jax.local_devices()
        cpu_split = (config.encoder_kind == "awd_lstm"
                     and config.hidden_size <= CPU_SPLIT_MAX_HIDDEN)
        if devices[0].platform == "cpu" and not cpu_split:
            devices = devices[:1]
        return cls(devices)

    @property
    def count(self) -> int:
        """How many devices a batch is split over (the row count must be a multiple of it)."""
        return len(self.devices)

    def splits(self, rows: int) -> bool:
        """Whether a batch of `rows` rows is split over the devices."""
        return self._mesh is not None and rows % self.count == 0

    def run(self, forward: Forward, ids: Any, state: Any) -> jax.Array:
        """`forward(ids, state)`, split over the devices when `splits(len(ids))`."""
        mesh = self._mesh
        if mesh is None or not self.splits(len(ids)):
            return forward(ids, state)
        split_ids = jax.device_put(ids, NamedSharding(mesh, PartitionSpec("data")))
        return forward(split_ids, self._state_on_every_device(state, mesh))

    def _state_on_every_device(self, state: Any, mesh: Mesh) -> Any:
        leaves = jax.tree.leaves(state)
        unchanged = (self._copied_from is not None and len(leaves) == len(self._copied_from)
                     and all(a is b for a, b in zip(leaves, self._copied_from, strict=True)))
        if not unchanged:
            # Holding the source arrays keeps their ids from being reused by others.
            self._copy = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
            self._copied_from = leaves
        return self._copy
