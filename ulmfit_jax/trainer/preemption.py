"""SIGTERM and SIGINT during training: finish the step, save a checkpoint, stop with a hint.

Colab, preemptible TPU VMs and batch schedulers send SIGTERM shortly before they kill a job;
Ctrl-C sends SIGINT. Inside `handle_preemption()` (held by the training loop while a stage
trains) either signal only sets a flag. The loop checks it after every step: it saves a
checkpoint of that step and `stop_if_requested` raises `Preempted`, which the CLI prints as
one line and turns into exit code 128 + signal (143 for SIGTERM, 130 for SIGINT). Rerunning
the same command resumes from that checkpoint exactly. A second signal stops at once
(`KeyboardInterrupt`), for a user who does not want to wait for the step and the save.
Handlers are only installed from the main thread (Python's rule); elsewhere this is a no-op.
In a multi-process run a signal to any process stops them all after the same step
(`requested_anywhere`), within `SYNC_EVERY` steps.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from ulmfit_jax.errors import Preempted
from ulmfit_jax.trainer import distributed

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SYNC_EVERY = 10  # multi-process: steps between comparisons of the processes' flags
_requested: int | None = None  # the signal received, if any


def _on_signal(signum: int, frame: object) -> None:
    global _requested
    if _requested is not None:
        raise KeyboardInterrupt
    _requested = signum
    print(f"{signal.Signals(signum).name} received: saving a checkpoint after this step "
          "(send it again to stop at once)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def handle_preemption(stage: str) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT set the flag instead of ending the process.

    A signal that arrives after the loop's last check (while the stage's final checkpoint is
    written) still stops the run: `Preempted` is raised on leaving, with that checkpoint saved.
    A signal the process was started to ignore (a background job's SIGINT) stays ignored, as
    Python itself leaves it.
    """
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _requested = None
    for s in SIGNALS:
        if previous[s] is not signal.SIG_IGN:
            signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        late, _requested = _requested, None
    if late is not None:
        raise Preempted(f"stopped by {signal.Signals(late).name}: stage {stage} saved its last "
                        "checkpoint; rerun the same command to resume from it", late)


def requested_anywhere(step: int | None = None) -> bool:
    """A signal arrived here or, in a multi-process run, on any process.

    The processes must stop after the same step (saving is collective), so there they compare
    flags (a small all-gather, called by all together) at every step divisible by
    `SYNC_EVERY`, and at every call without a `step` (epoch ends)."""
    if not distributed.is_multiprocess():
        return _requested is not None
    if step is not None and step % SYNC_EVERY:
        return False
    return distributed.any_process(_requested is not None)


def stop_if_requested(stage: str, step: int) -> None:
    """Raise `Preempted` when `requested_anywhere()`; call it once checkpoint `step` is saved
    (every process together)."""
    if requested_anywhere():
        signum = _requested or signal.SIGTERM
        where = "" if _requested else " on another process"
        raise Preempted(f"stopped by {signal.Signals(signum).name}{where}: stage {stage} saved "
                        f"a checkpoint at step {step}; rerun the same command to resume from it",
                        signum)
