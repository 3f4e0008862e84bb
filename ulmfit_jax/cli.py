"""What every command-line entry point shares: user errors as one line, bugs as tracebacks.

    from ulmfit_jax.cli import run_cli
    if __name__ == "__main__":
        run_cli(main)          # instead of absl's app.run(main)

`run_cli` runs an absl `main(argv)` and defines the `--verbose` flag. A `UserError` (bad data,
bad config value, missing file, busy workdir...; see `ulmfit_jax.errors`) and a bad flag
(an unknown `--config.key`, a value of the wrong type, a config file that does not load) are
printed as one line `error: <message>` on stderr with exit code 2; `--verbose` adds the
traceback. `Preempted` prints its one-line resume hint and exits with `128 + signal`
(143 for SIGTERM, 130 for SIGINT); Ctrl-C elsewhere prints `interrupted`, exit 130. Anything
else is a bug and keeps its traceback (exit 1). In a multi-process run an error exits at once,
without jax's graceful shutdown (see `_exit`).

What a run logs reaches stderr through one policy (`show_warnings`): every warning of the
package (and of jax, numpy...) as one line `warning: <message>`, once, informational messages
not at all, and the loggers in `QUIET_LOGGERS` only from their errors up.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import NoReturn, TextIO

from absl import app, flags
from ml_collections import config_flags

from ulmfit_jax.errors import Preempted, UserError

USER_ERROR_EXIT_CODE = 2
# Loggers shown only from ERROR up. orbax logs through absl's logger: a line for every file of
# every checkpoint, and warnings about its own options ("Requested `tracked_metric`; did not
# provide metrics") that say nothing a user can act on.
QUIET_LOGGERS = {"absl": logging.ERROR}

_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of user errors too.")


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


class OneLineHandler(logging.Handler):
    """Each record as one line `<level>: <message>` (`warning: ...`), without absl's prefix
    of level letter, time, thread and file; loggers in `QUIET_LOGGERS` only from their level."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".", 1)[0]
        return record.levelno >= QUIET_LOGGERS.get(top, logging.NOTSET)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"{record.levelname.lower()}: {one_line(record.getMessage())}",
                  file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


def _warning_as_log(message: Warning | str, category: type[Warning], filename: str,
                    lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    """`warnings.showwarning` as one log line (Python's own prints the source line too)."""
    logging.getLogger("py.warnings").warning("%s (%s, %s:%d)", message, category.__name__,
                                             os.path.basename(filename), lineno)


def show_warnings() -> None:
    """The command line's logging: warnings and errors of every logger as one line each on
    stderr (`OneLineHandler`) in place of absl's handler, info hidden, `QUIET_LOGGERS` quiet.

    Called once absl has set up its handler (`app.run`); absl's own policy, `set_verbosity`,
    sets the ROOT logger's level, which would hide every package's warnings too."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(OneLineHandler())
    root.setLevel(logging.WARNING)
    warnings.showwarning = _warning_as_log


def _exit(code: int) -> NoReturn:
    """`sys.exit(code)`; in a multi-process jax run, leave at once instead: a graceful exit
    would wait (up to jax's shutdown timeout) for processes that are still training, while
    a process that is gone makes the others stop within their heartbeat timeout."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _fail(message: str, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    print(f"error: {one_line(message)}", file=sys.stderr)
    _exit(USER_ERROR_EXIT_CODE)


def _flag_message(e: BaseException) -> str:
    """ml_collections reports an unknown key as a KeyError wrapped in an AttributeError."""
    while isinstance(e, KeyError | AttributeError) and e.args and isinstance(e.args[0],
                                                                             BaseException):
        e = e.args[0]
    if isinstance(e, KeyError | AttributeError):
        return f"unknown config key {e.args[0] if e.args else e}"
    return str(e)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every flag error (config keys included) as one line."""
    verbose = "--verbose" in argv
    try:
        rest = flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        _fail(_flag_message(e), verbose)
    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        parser_is_config = isinstance(flag.parser, config_flags.config_flags.ConfigFileFlagParser)
        if parser_is_config and flag.present and flag.value is not None:
            try:
                flag.value.keys()  # a config file that failed to load raises its OSError here
            except OSError as e:
                _fail(f"--{name}: {e.__cause__ or e}", verbose)
    return rest


def _guarded(main: Callable[[list[str]], object]) -> Callable[[list[str]], None]:
    def run(argv: list[str]) -> None:
        show_warnings()
        try:
            main(argv)
        except UserError as e:
            _fail(str(e), _VERBOSE.value)
        except Preempted as e:
            print(one_line(str(e)), file=sys.stderr)
            sys.exit(128 + e.signum)
        except KeyboardInterrupt:  # Ctrl-C outside training (e.g. tokenizing): nothing to save
            if _VERBOSE.value:
                traceback.print_exc()
            print("interrupted", file=sys.stderr)
            _exit(128 + signal.SIGINT)
        except Exception:  # a bug: its traceback, then the exit that does not wait
            traceback.print_exc()
            _exit(1)

    return run


def run_cli(main: Callable[[list[str]], object]) -> None:
    """`absl.app.run(main)` with user errors and bad flags as one line, exit code 2."""
    app.run(_guarded(main), flags_parser=_parse_flags)
