"""The errors a user can cause and fix: bad data, bad config, a busy workdir, unusable files.

Every one derives from `UserError`, which the command-line entry points (`ulmfit_jax.cli`)
print as one line, `error: <message>`, with exit code 2 and no traceback; any other exception
is a bug and keeps its traceback. Each class also derives from the builtin that callers caught
before it existed (`DataError` is a `ValueError`, `MissingFileError` a `FileNotFoundError`...),
so `except ValueError` keeps working. Messages name the file (line, column), key or value at
fault and what is allowed.

This module imports nothing from the package, so every layer may raise these.
"""

from __future__ import annotations

import contextlib
import errno
import re
from collections.abc import Iterator, Mapping


class UserError(Exception):
    """A mistake in the user's input or environment; printed as one line, exit code 2."""


class DataError(UserError, ValueError):
    """Bad or unusable input data; the message names the file (line, column) or split."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key, the value and what is allowed."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the run needs does not exist."""


class ModelFileError(UserError, ValueError):
    """A model, weights or vocab file that cannot be used (corrupt, unsafe, wrong kind)."""


class WorkdirError(UserError, RuntimeError):
    """The workdir cannot be used: held by another run, made by another config, unreadable."""


class DiskFullError(UserError, OSError):
    """No space left while writing; what was there before is intact."""


class DeviceMemoryError(UserError, MemoryError):
    """The accelerator ran out of memory; the message names the stage, the memory asked and
    the batch sizes to lower. The checkpoints written before are intact."""


class Preempted(Exception):
    """SIGTERM or SIGINT stopped training after a checkpoint was saved (not an error).

    `signum` is the signal; the CLI exits with `128 + signum` (143 for SIGTERM, 130 for SIGINT),
    the shell's code for a process ended by that signal, so schedulers see a preemption.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def disk_full_is_clear(what: str) -> Iterator[None]:
    """Turn `OSError(ENOSPC)` raised inside into a `DiskFullError` naming `what` was written."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC or isinstance(e, DiskFullError):
            raise
        error = DiskFullError(f"no space left on device while writing {what}; the previous "
                              "files are intact: free some space and rerun the same command")
        error.errno = errno.ENOSPC
        raise error from e


@contextlib.contextmanager
def device_memory_is_clear(stage: str, batch_sizes: Mapping[str, int],
                           checkpointed: bool = True) -> Iterator[None]:
    """Turn XLA's out-of-memory error (a `JaxRuntimeError` saying RESOURCE_EXHAUSTED) raised
    inside into a `DeviceMemoryError` naming `stage`, the memory asked and the config keys in
    `batch_sizes` (`{"lm.batch_size": 64}`) to lower; `checkpointed`: the stage resumes from
    its checkpoints (whose config a changed batch size no longer matches)."""
    try:
        yield
    except RuntimeError as e:
        if isinstance(e, UserError) or not is_out_of_device_memory(e):
            raise
        settings = ", ".join(f"--config.{key}={value}" for key, value in batch_sizes.items())
        lower = f"lower {'it' if len(batch_sizes) == 1 else 'them'}"
        fix = (f"{lower} and rerun in another --workdir or with --fresh (a batch size is part "
               "of the run's config), or rerun the same command once the device has that "
               "memory free: the checkpoints so far are intact") if checkpointed else \
            f"{lower} and rerun"
        raise DeviceMemoryError(f"out of device memory in stage {stage} at {settings} "
                                f"({memory_asked(str(e))}); {fix}") from e


def is_out_of_device_memory(error: BaseException) -> bool:
    """Whether `error` is XLA's out-of-memory error (compiling or running)."""
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower())


def memory_asked(message: str) -> str:
    """How much memory an XLA out-of-memory message says was asked for, in words."""
    found = (re.search(r"allocat\w* (\d+) bytes", message)
             or re.search(r"\((\d+)B\)", message))
    if found:
        return f"XLA asked for {_size(int(found.group(1)))}"
    found = re.search(r"Used ([\d.]+[KMGT]i?B?) of ([\d.]+[KMGT]i?B?)", message)
    if found:
        return f"XLA needs {found.group(1)} of {found.group(2)}"
    return "XLA did not say how much it asked for"


def _size(n_bytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes} bytes"
