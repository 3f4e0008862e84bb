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
from collections.abc import Iterator


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
