"""The resumable-iterator protocol shared by `LMStream` and `ClassifierBatches`.

An iterator walks epochs of batches; its position is `(epoch, step)`: the next batch is batch
`step` of epoch `epoch`. Every epoch is a pure function of `(seed, epoch)`, so the position
alone resumes exactly. `get_state()` is JSON-serialisable (it goes into checkpoints) and also
records what identifies the data (`identity()`), so that a state saved for other data or
another batch size is refused instead of silently resuming the wrong stream.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

import numpy as np

Batch = dict[str, np.ndarray]


class ResumableBatches(abc.ABC):
    """Base class: subclasses set `epoch`/`step` to 0 in `__init__` and implement
    `batch`, `num_batches` and `identity`."""

    epoch: int
    step: int

    @abc.abstractmethod
    def batch(self, epoch: int, step: int) -> Batch:
        """Batch `step` of `epoch` (this host's rows)."""

    @abc.abstractmethod
    def num_batches(self, epoch: int | None = None) -> int:
        """Batches in `epoch` (default: the current one)."""

    @abc.abstractmethod
    def identity(self) -> dict:
        """JSON-serialisable facts a saved state must match (seed, batch size, data size)."""

    def __len__(self) -> int:
        return self.num_batches()

    def get_state(self) -> dict:
        """JSON-serialisable position: the next batch is batch `step` of epoch `epoch`."""
        return {"epoch": self.epoch, "step": self.step, **self.identity()}

    def set_state(self, state: dict) -> None:
        """Resumes at `state` (from `get_state`); refuses a state from another iterator."""
        for key, mine in self.identity().items():
            if key in state and state[key] != mine:
                raise ValueError(f"iterator state {key}={state[key]!r} does not match this "
                                 f"{type(self).__name__} ({key}={mine!r})")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch; afterwards the state points at the next epoch."""
        while self.step < self.num_batches():
            batch = self.batch(self.epoch, self.step)
            self.step += 1
            yield batch
        self.epoch, self.step = self.epoch + 1, 0
