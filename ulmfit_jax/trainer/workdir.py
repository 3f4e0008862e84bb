"""A workdir belongs to one run: one config, one process at a time.

`claim(workdir, config, stage, fresh)` is held for the whole run:
  1. the lock: `<workdir>/.lock`, an exclusive `fcntl.lockf` lock with the holder's pid and
     host written inside. The kernel drops it when the process ends, however it ends, so a
     lock left by a killed run is simply taken over; a live holder is reported by pid and host.
     (POSIX record locks rather than `flock`: tokenizer workers forked by the run do not
     inherit them, so an orphaned worker never keeps the workdir locked.)
  2. `fresh`: delete what a run produced (`FRESH_REMOVES`; the token cache is kept, it is keyed
     by content fingerprints) and start over;
  3. the run config: the first run writes its resolved config to `<workdir>/run_config.json`;
     a later run whose config differs in a key that changes results is refused, naming the
     keys. `RESULT_FREE_KEYS` lists the keys that may differ. `--stage lr_find` writes no
     training results, so it fixes and compares only the data keys (`DATA_KEYS`): an LR sweep
     may come before the real run's learning rates are chosen.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import ml_collections

from ulmfit_jax.atomic_io import atomic_write
from ulmfit_jax.errors import WorkdirError
from ulmfit_jax.trainer.config import PHASE_KEYS

logger = logging.getLogger(__name__)

LOCK_FILE, RUN_CONFIG = ".lock", "run_config.json"
# Keys that never change what a run computes (display, logging, checkpoint cadence on disk,
# where and how fast data is tokenized, multi-host start-up; how many devices share a batch
# changes only the order of float32 sums). A key is matched exactly or, ending in ".", as a
# prefix. Everything else must match the stored run config.
RESULT_FREE_KEYS = (
    "progress", "log_every_steps", "tensorboard", "predict_examples",
    "distributed", "distributed.",  # (a bool before the multi-process settings)
    "cpu_devices",
    "checkpoint.keep", "checkpoint.async_save", "checkpoint.every_steps",
    "data.workers", "data.cache_dir", "lr_find.",
)
# What vocab.json and the token cache depend on: all `--stage lr_find` fixes in a workdir.
DATA_KEYS = ("seed", "data.", "model.max_vocab", "model.min_freq")
# Everything a run writes, except the token cache (`cache/`) and the lock.
FRESH_REMOVES = ("checkpoints", "models", "tensorboard", "metrics.csv", "metrics.json",
                 "throughput.jsonl", "confusion_matrix.png", "classification_report.json",
                 "top_losses.csv", "loss_curve.png", "vocab.json", "tokenizer", RUN_CONFIG,
                 "lr_find_*")


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def flat_config(config: ml_collections.ConfigDict) -> dict[str, object]:
    """`{"lm.lr": 0.002, ...}`: every leaf by its dotted key, as JSON values (tuples -> lists)."""
    def walk(d: dict, prefix: str) -> Iterator[tuple[str, object]]:
        for k, v in d.items():
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v
    return json.loads(json.dumps(dict(walk(config.to_dict(), ""))))


def _named_phases(stored: dict) -> dict:
    """A stored flat config with the classifier phases of ulmfit_jax before named phases
    (`[freeze_to, epochs, lr_max, lr_div]` lists) as today's dicts, so the same recipe
    compares equal (its checkpoints are refused by their format, its finished models kept)."""
    phases = stored.get("classifier.phases")
    if not isinstance(phases, list) or not all(isinstance(p, list) and len(p) == len(PHASE_KEYS)
                                               for p in phases):
        return stored
    return {**stored, "classifier.phases": [dict(zip(PHASE_KEYS, p, strict=True))
                                            for p in phases]}


def differing_keys(stored: dict, current: dict, scope: tuple[str, ...] | None) -> list[str]:
    """Result-changing keys whose values differ (within `scope`'s keys when given)."""
    keys = sorted(set(stored) | set(current))
    keys = [k for k in keys if not _matches(k, RESULT_FREE_KEYS)]
    if scope is not None:
        keys = [k for k in keys if _matches(k, scope)]
    return [k for k in keys if stored.get(k, "<unset>") != current.get(k, "<unset>")]


def _check_run_config(workdir: Path, config: ml_collections.ConfigDict, stage: str) -> None:
    """Refuse a config that differs from the stored one; store it if there is none yet."""
    path = workdir / RUN_CONFIG
    current = flat_config(config)
    data_only = stage == "lr_find"
    if path.exists():
        try:
            stored = json.loads(path.read_text("utf-8"))
            stored_config, stored_data_only = _named_phases(stored["config"]), stored["data_only"]
        except (ValueError, KeyError, TypeError) as e:
            raise WorkdirError(f"{path}: unreadable ({e}); rerun with --fresh to start over "
                               "in this workdir") from None
        scope = DATA_KEYS if data_only or stored_data_only else None
        diff = differing_keys(stored_config, current, scope)
        if diff:
            shown = "; ".join(f"{k}: {stored_config.get(k, '<unset>')!r} -> "
                              f"{current.get(k, '<unset>')!r}" for k in diff)
            raise WorkdirError(
                f"{workdir} holds a run with a different config ({shown}); use another "
                "--workdir, the same config, or --fresh to start over in this one")
        if data_only or not stored_data_only:
            return
    atomic_write(path, json.dumps({"data_only": data_only, "config": current}, indent=1))


def forget_run(workdir: Path) -> None:
    """Delete what runs wrote in `workdir` (`FRESH_REMOVES`): it holds no run afterwards."""
    for pattern in FRESH_REMOVES:
        for path in workdir.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _lock(workdir: Path) -> int:
    """Take `<workdir>/.lock` or raise `WorkdirError` naming the holder; returns its fd."""
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        os.close(fd)
        who = f"pid {holder[0]} on host {holder[1]}" if len(holder) >= 2 else "another process"
        raise WorkdirError(f"workdir {workdir} is in use by {who}; wait for that run to end or "
                           "choose another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def claim(workdir: str | Path, config: ml_collections.ConfigDict, stage: str,
          fresh: bool = False) -> Iterator[bool]:
    """Hold `workdir` for one run of `config` (see the module docstring); yields True when
    the workdir held nothing of an earlier run (so `forget_run` removes only this run's files)."""
    workdir = Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create workdir {workdir}: {e.strerror}") from None
    fd = _lock(workdir)
    try:
        if fresh:
            forget_run(workdir)
            logger.warning("%s: starting afresh (checkpoints, models, vocab, metrics removed)",
                           workdir)
        first_run = not any(any(workdir.glob(pattern)) for pattern in FRESH_REMOVES)
        _check_run_config(workdir, config, stage)
        yield first_run
    finally:
        os.close(fd)  # closing the only descriptor releases the lock
