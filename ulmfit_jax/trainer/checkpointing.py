"""Checkpoints with orbax's `CheckpointManager` (`args=` API), and the exact-resume contract.

One checkpoint directory per training stage (`<workdir>/checkpoints/<stage>`), each step a
composite of
  * `state`: `StandardSave` of the typed train state (`train_state`: params, opt_state, step,
    carried LM hidden state or BatchNorm statistics), restored with the mesh shardings of a
    template state;
  * `meta`: `JsonSave` of host-side values: `format` (`CHECKPOINT_FORMAT`), `step`, `rng` (the
    base key as a list of ints), `data` (the data iterator's `get_state()`), `config` (the
    run's config as a dict) and any extra bookkeeping (epoch, phase, best metric).

The state's tree changes when the train state or the optimizer does; `CHECKPOINT_FORMAT`
counts those changes. A checkpoint of another format is refused before its state is read
(`CheckpointFormatError`, one line suggesting `--fresh` or the version that wrote it), never
taken for a damaged one.

Saves are atomic: orbax writes into a temporary directory and renames it once complete, so a
run killed at any moment leaves only whole checkpoints (`latest_step` never sees a partial one).
We keep the last `keep` checkpoints plus the best one by `best_metric`. A checkpoint proven
damaged on disk afterwards (metadata that does not parse, array data that does not decode, a
file of its own missing: `is_damaged`) is skipped by `restore_latest`, which logs its step,
restores the newest intact one and moves the bad ones to `<stage>.damaged/`, naming the step
resumed from; with none readable it raises `WorkdirError` suggesting `--fresh`. Any other error
while reading (permission denied, an I/O error of the storage, out of memory) says nothing about
the files: `CheckpointReadError` in one line, and nothing is moved. A full disk raises
`DiskFullError`, leaving the earlier checkpoints intact. With several processes every one of them
saves and restores (orbax coordinates the writes); only process 0 moves damaged checkpoints aside.

Resume order (the only place this is written down; `trainer.loop.run_stage` follows it):
  1. build the config, mesh, model and optimizer exactly as for a fresh run (same seed);
  2. create the data iterators, untouched;
  3. `restore_latest` -> (state, meta): the train state with its shardings, then
     `rng = key_from_list(meta["rng"])` (the stage's base key; each step folds its step
     number in), `iterator.set_state(meta["data"])` and the metric accumulators of the
     current epoch and log interval from `meta["metrics"]`;
  4. truncate the host logs to rows with step <= meta["step"] (later rows are replayed);
  5. continue the loop at step `meta["step"]`; learning rates and unfreezing phases are pure
     functions of the step, so nothing else needs saving.

A non-finite loss raises `NonFiniteLossError` naming the stage and step; the checkpoint of a
step is written only after its loss (and all earlier ones) were checked, so the last good
checkpoint is never replaced by a diverged one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_managers

from ulmfit_jax.errors import WorkdirError, disk_full_is_clear
from ulmfit_jax.trainer import distributed
from ulmfit_jax.trainer.train_state import RngKey

logger = logging.getLogger(__name__)
# 1 (no `format` key): dict train states and the hand-written fastai Adam state;
# 2: typed train states (`train_state`) and the optimizer built from optax's parts.
CHECKPOINT_FORMAT = 2


class CheckpointFormatError(WorkdirError):
    """A checkpoint written by another ulmfit_jax version, whose state tree differs."""


def check_format(meta: dict, where: str) -> None:
    """Raise `CheckpointFormatError` unless `meta` was saved in `CHECKPOINT_FORMAT`."""
    found = meta.get("format", 1)
    if found == CHECKPOINT_FORMAT:
        return
    age, fix = (("an older", "finish it with the ulmfit_jax version that started it")
                if isinstance(found, int) and found < CHECKPOINT_FORMAT
                else ("a newer", "finish it with that newer ulmfit_jax"))
    raise CheckpointFormatError(
        f"{where} was written by {age} ulmfit_jax (checkpoint format {found}; this version "
        f"reads format {CHECKPOINT_FORMAT}); rerun with --fresh to start this run over, or {fix}")


class CheckpointReadError(WorkdirError):
    """A checkpoint that could not be read for a reason other than damage; nothing was moved."""


# tensorstore's status codes for array data that does not decode, a file shorter than its
# index says, and a file that is missing.
_DAMAGE_CODES = ("DATA_LOSS:", "OUT_OF_RANGE:", "NOT_FOUND:")
# Its other codes (PERMISSION_DENIED, UNAVAILABLE, RESOURCE_EXHAUSTED, UNKNOWN...) come from the
# storage or the machine, not from the files' content.
_STATUS_CODE = re.compile(r"^[A-Z_]+: ")


def is_damaged(error: BaseException, step_dir: Path) -> bool:
    """Whether `error`, raised while reading the checkpoint in `step_dir`, proves it damaged:
    metadata that does not parse, array data that does not decode, or a file of its own
    missing. A permission, I/O or memory error proves nothing about the files."""
    if isinstance(error, json.JSONDecodeError | UnicodeDecodeError):
        return True
    names_it = f"{step_dir}{os.sep}" in str(error)
    if isinstance(error, FileNotFoundError):
        return names_it
    return type(error) is ValueError and str(error).startswith(_DAMAGE_CODES) and names_it


def _read_error(error: BaseException, step_dir: Path) -> CheckpointReadError | None:
    """The one-line error for a checkpoint that the storage or the machine could not read
    (None: neither, so a bug keeps its traceback)."""
    text = _one_line(error)
    coded = type(error) is ValueError and _STATUS_CODE.match(text) is not None
    if not (isinstance(error, OSError | MemoryError) or coded):
        return None
    if isinstance(error, PermissionError) or text.startswith("PERMISSION_DENIED"):
        fix = "check that this user may read it"
    elif isinstance(error, MemoryError) or text.startswith("RESOURCE_EXHAUSTED"):
        fix = "free some memory"
    else:
        fix = "check the storage (an I/O error may pass)"
    return CheckpointReadError(
        f"checkpoint {step_dir} cannot be read ({type(error).__name__}: {text}); it is not "
        f"known to be damaged, so nothing was moved: {fix}, then rerun the same command")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss is NaN or Inf; the message names the stage and step."""


def check_finite_loss(loss: float, stage: str, step: int) -> None:
    """Raise `NonFiniteLossError` if `loss` is NaN or Inf."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite training loss ({loss}) at step {step} of stage '{stage}'; stopping. "
            "The last good checkpoint is kept; lower the learning rate or raise clipping."
        )


def key_to_list(key: RngKey) -> list[int]:
    """A PRNG key (raw uint32 or typed) -> JSON-friendly list of ints."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(v) for v in np.asarray(key).ravel()]


def key_from_list(values: list[int]) -> np.ndarray:
    """Inverse of `key_to_list` for raw uint32 keys (`jax.random.PRNGKey`)."""
    return np.asarray(values, dtype=np.uint32)


class Checkpointer:
    """A stage's checkpoints: save, restore the latest, keep the last N and the best."""

    def __init__(
        self,
        directory: str | Path,
        keep: int = 2,
        best_metric: str | None = None,
        best_mode: str = "max",
        async_save: bool = True,
    ):
        policies: list[Any] = [ocp_managers.LatestN(keep)]
        if best_metric is not None:
            policies.append(
                ocp_managers.BestN(
                    get_metric_fn=lambda m: m[best_metric],
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            # best_fn only lets `best_step` rank checkpoints; the policies decide what is kept.
            best_fn=(lambda m: m[best_metric]) if best_metric else None,
            best_mode=best_mode,
            preservation_policy=ocp_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "meta"), options=options
        )

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of every complete checkpoint still kept."""
        return list(self._manager.all_steps())

    def save(
        self, step: int, state: Any, meta: dict, metrics: dict[str, float] | None = None
    ) -> None:
        """Save `state` (arrays) and `meta` (JSON) as checkpoint `step` (asynchronously)."""
        # A deep copy: orbax may serialise the JSON in its own thread after this returns, while
        # the caller keeps mutating what `meta` refers to (the loop's metric accumulators).
        meta = copy.deepcopy({**meta, "step": int(step), "format": CHECKPOINT_FORMAT})
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        with disk_full_is_clear(f"checkpoint step {step} in {self.directory}"):
            self._manager.save(step, args=args, metrics=metrics, force=True)

    def restore(self, step: int, state_template: Any) -> tuple[Any, dict]:
        """Restore checkpoint `step` with the shapes, dtypes and shardings of `state_template`;
        `CheckpointFormatError` when its `meta` names another format (the state is not read)."""
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        check_format(meta["meta"], f"checkpoint {self.directory}/{step}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        return restored["state"], meta["meta"]

    def restore_latest(self, state_template: Any) -> tuple[Any, dict] | None:
        """`restore` of the newest readable checkpoint, or None when there is none.

        A checkpoint proven damaged (`is_damaged`) is logged and the next older one is tried;
        once one restores, the damaged newer ones are moved to `<directory>.damaged/` so
        training can write those steps again. When none can be read, `WorkdirError` (nothing
        is moved). Any other error stops at once and moves nothing: `CheckpointReadError` when
        the storage or the machine failed (permissions, I/O, memory), the error itself
        otherwise. A checkpoint of another format is not damaged: `CheckpointFormatError`."""
        bad: list[int] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                restored = self.restore(step, state_template)
            except CheckpointFormatError:
                raise
            except Exception as e:  # orbax, tensorstore and json raise many types here
                step_dir = self.directory / str(step)
                if not is_damaged(e, step_dir):
                    read_error = _read_error(e, step_dir)
                    if read_error is None:
                        raise
                    raise read_error from e
                logger.warning("checkpoint %s cannot be read, it is damaged (%s: %s); trying an "
                               "older one", step_dir, type(e).__name__, _one_line(e))
                bad.append(step)
                continue
            self._set_aside(bad, resumed_from=step)
            return restored
        if bad:
            raise WorkdirError(f"{self.directory}: no checkpoint can be read (steps {bad}); "
                               "rerun with --fresh to start this run over")
        return None

    def _set_aside(self, steps: list[int], resumed_from: int) -> None:
        if not steps:
            return
        aside = self.directory.with_name(self.directory.name + ".damaged")
        if distributed.is_primary():  # every process found the same steps damaged
            for step in steps:
                aside.mkdir(exist_ok=True)
                os.replace(self.directory / str(step), aside / f"{step}-{uuid.uuid4().hex[:8]}")
                logger.warning("moved damaged checkpoint %s/%d to %s; resuming from step %d",
                               self.directory, step, aside, resumed_from)
        distributed.barrier(f"set aside {self.directory} {steps}")
        self._manager.reload()

    def best_step(self) -> int | None:
        """The kept step with the best metric (None without metrics)."""
        return self._manager.best_step()

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        with disk_full_is_clear(f"a checkpoint in {self.directory}"):
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        try:
            self.wait()
        finally:
            self._manager.close()
