"""Preemption (SIGTERM/SIGINT -> checkpoint at the next step, then exit), damaged checkpoints
(fall back to the newest intact one) and a full disk while checkpointing: each ends with
bitwise the result of an uninterrupted run."""

import errno
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_trainer import (
    ROOT,
    CountingIterator,
    ToyStage,
    _env,
    _train_cmd,
    assert_bitwise_same_result,
    toy_state,
)
from ulmfit_jax.errors import DiskFullError, Preempted, UserError, WorkdirError
from ulmfit_jax.trainer.checkpointing import Checkpointer, CheckpointReadError
from ulmfit_jax.trainer.config import base_config
from ulmfit_jax.trainer.loop import Phase, run_stage_with_checkpoints
from ulmfit_jax.trainer.metric_logger import MetricLogger


class SignallingIterator(CountingIterator):
    """Sends `signum` to this process while handing out global batch `at` (once)."""

    def __init__(self, n: int, at: int, signum: int):
        super().__init__(n)
        self.at, self.signum, self.handed = at, signum, 0

    def batch(self, epoch, step):
        self.handed += 1
        if self.handed == self.at:
            os.kill(os.getpid(), self.signum)
        return {}


@pytest.fixture(autouse=True)
def default_signal_handlers():
    """Python's defaults for SIGINT and SIGTERM, whatever the shell that launched pytest set
    (a background job starts with SIGINT ignored)."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def _default_signals_in_child() -> None:
    """train.py subprocesses get the default handlers too (see `default_signal_handlers`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@jax.jit
def noisy_step(state, batch, rng, hp):
    """Parameters and loss depend on the step's rng, the LR and every earlier step."""
    noise = jax.random.uniform(jax.random.fold_in(rng, state.step), (3,))
    w = state.params["w"] * 0.9 + hp["lr"] * noise
    new = state.replace(params={"w": w}, step=state.step + 1)
    return new, {"loss_sum": jnp.sum(w), "correct": jnp.float32(0), "count": jnp.float32(1)}


def train(workdir: Path, iterator=None) -> dict:
    """Two epochs of five steps, a checkpoint every two steps (keep 2 + the best)."""
    state = toy_state({"w": jnp.zeros(3)})
    stage = ToyStage(
        name="lm_fwd", phases=[Phase(epochs=2, lr_max=0.1)],
        iterator=iterator or CountingIterator(5), step=noisy_step,
        evaluate=lambda s: {"loss": float(jnp.sum(s.params["w"])), "accuracy": 0.5},
        summarize=lambda sums: {"loss": sums["loss_sum"] / sums["count"]},
        schedule_kind="one_cycle",
    )
    config = base_config()
    config.checkpoint.update(every_steps=2, keep=2, async_save=False)
    config.update(progress=False, log_every_steps=1)
    log = MetricLogger(workdir, tensorboard=False)
    try:
        final, _ = run_stage_with_checkpoints(stage, state, config, workdir, log, seed_offset=0)
    finally:
        log.close()
    return jax.device_get(final)


def assert_same_run(a: Path, b: Path, final_a: dict, final_b: dict) -> None:
    for x, y in zip(jax.tree.leaves(final_a), jax.tree.leaves(final_b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()


def steps_on_disk(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints" / "lm_fwd").iterdir()
                  if p.name.isdigit())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_the_next_step_and_the_rerun_resumes_bitwise(tmp_path, signum):
    straight = train(tmp_path / "straight")
    with pytest.raises(Preempted, match="checkpoint at step 7; rerun the same command") as e:
        train(tmp_path / "resumed", SignallingIterator(5, at=7, signum=signum))
    assert e.value.signum == signum
    assert steps_on_disk(tmp_path / "resumed")[-1] == 7  # not a multiple of every_steps
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert_same_run(tmp_path / "straight", tmp_path / "resumed", straight,
                    train(tmp_path / "resumed"))


def _truncate_largest_state_file(step_dir: Path) -> None:
    largest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def _garble_meta(step_dir: Path) -> None:
    for f in (step_dir / "meta").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\xff\xfe garbage \x00" * 3)


def _garble_largest_state_file(step_dir: Path) -> None:
    largest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    largest.write_bytes(bytes(b ^ 0xFF for b in largest.read_bytes()))


def _delete_meta(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").unlink()


@pytest.mark.parametrize("damage", [_truncate_largest_state_file, _garble_meta,
                                    _garble_largest_state_file, _delete_meta])
def test_a_damaged_newest_checkpoint_falls_back_and_ends_bitwise_equal(tmp_path, caplog, damage):
    straight = train(tmp_path / "straight")
    resumed = tmp_path / "resumed"
    with pytest.raises(Preempted):
        train(resumed, SignallingIterator(5, at=7, signum=signal.SIGTERM))
    assert steps_on_disk(resumed) == [5, 6, 7]  # the last two and the best (end of epoch 1)
    damage(resumed / "checkpoints" / "lm_fwd" / "7")
    with caplog.at_level(logging.WARNING, logger="ulmfit_jax.trainer.checkpointing"):
        final = train(resumed)
    assert "lm_fwd/7 cannot be read, it is damaged" in caplog.text
    assert "resuming from step 6" in caplog.text
    assert len(list((resumed / "checkpoints" / "lm_fwd.damaged").iterdir())) == 1
    assert_same_run(tmp_path / "straight", resumed, straight, final)


def test_no_readable_checkpoint_is_a_clear_error_suggesting_fresh(tmp_path):
    with pytest.raises(Preempted):
        train(tmp_path, SignallingIterator(5, at=3, signum=signal.SIGTERM))
    for step in steps_on_disk(tmp_path):
        _garble_meta(tmp_path / "checkpoints" / "lm_fwd" / str(step))
    with pytest.raises(WorkdirError, match=r"no checkpoint can be read \(steps \[3, 2\]\); "
                                           r"rerun with --fresh"):
        train(tmp_path)
    assert steps_on_disk(tmp_path) == [2, 3]  # nothing moved or deleted


def test_disk_full_while_checkpointing_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "ck", keep=3, async_save=False)
    state = {"w": jnp.arange(3.0)}
    ckpt.save(1, state, {"rng": [0]})
    ckpt.wait()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt._manager, "save", no_space)
    with pytest.raises(DiskFullError, match=r"while writing checkpoint step 2 in .*ck; the "
                                            r"previous files are intact"):
        ckpt.save(2, {"w": jnp.zeros(3)}, {"rng": [0]})
    monkeypatch.undo()
    restored, meta = ckpt.restore_latest(state)
    ckpt.close()
    assert meta["step"] == 1
    np.testing.assert_array_equal(np.asarray(restored["w"]), [0.0, 1.0, 2.0])


# --------------------------------------------------------------------------- train.py


def _signal_after_checkpoint(workdir: Path, stage: str, signum: int) -> subprocess.Popen:
    """Start train.py, send `signum` once a checkpoint of `stage` appears, wait for the exit."""
    ckpt_dir = workdir / "checkpoints" / stage
    before = {p.name for p in ckpt_dir.iterdir()} if ckpt_dir.exists() else set()
    proc = subprocess.Popen(_train_cmd(workdir), cwd=ROOT, env=_env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=_default_signals_in_child)
    deadline = time.time() + 300
    while not (ckpt_dir.exists() and {p.name for p in ckpt_dir.iterdir()
                                      if p.name.isdigit()} - before):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"train.py ended (rc {proc.returncode}) before a {stage} checkpoint")
        time.sleep(0.05)
    proc.send_signal(signum)
    proc.wait(timeout=300)
    return proc


@pytest.mark.slow
def test_train_py_sigterm_and_sigint_save_exit_with_a_hint_and_resume_bitwise(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    reference = subprocess.Popen(_train_cmd(straight), cwd=ROOT, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for stage, signum in (("lm_fwd", signal.SIGTERM), ("classifier_fwd", signal.SIGINT)):
        proc = _signal_after_checkpoint(resumed, stage, signum)
        assert proc.returncode == 128 + signum, proc.stderr.read()[-3000:]
        received, stopped = proc.stderr.read().strip().splitlines()  # all the user sees
        name = signal.Signals(signum).name
        assert received == (f"{name} received: saving a checkpoint after this step (send it "
                            "again to stop at once)")
        assert stopped.startswith(f"stopped by {name}: stage {stage} saved")
        assert "rerun the same command to resume" in stopped
    subprocess.run(_train_cmd(resumed), cwd=ROOT, env=_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out.decode()[-3000:]
    assert_bitwise_same_result(straight, resumed)


def test_a_signal_after_the_last_check_still_stops_the_run():
    from ulmfit_jax.trainer import preemption

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match=r"stopped by SIGTERM: stage lm_fwd saved its last") as e, \
            preemption.handle_preemption("lm_fwd"):
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. while the final checkpoint is written
        time.sleep(0.1)
    assert e.value.signum == signal.SIGTERM
    assert not preemption.requested_anywhere() and signal.getsignal(signal.SIGTERM) is before


def test_a_signal_the_process_ignores_stays_ignored():
    from ulmfit_jax.trainer import preemption

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job starts
    with preemption.handle_preemption("lm_fwd"):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # still handled
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
    assert not preemption.requested_anywhere()  # nothing was recorded: no Preempted either


def _restore_fails_with(error: BaseException):
    def restore(*args, **kwargs):
        raise error
    return restore


@pytest.mark.parametrize("error, fix", [
    (PermissionError(errno.EACCES, "Permission denied"), "check that this user may read it"),
    (OSError(errno.EIO, "Input/output error"), "check the storage"),
    (MemoryError(), "free some memory"),
    (ValueError("UNAVAILABLE: Error reading local file: stale NFS handle"), "check the storage"),
])
def test_a_checkpoint_unreadable_for_another_reason_stops_in_one_line_and_moves_nothing(
        tmp_path, monkeypatch, error, fix):
    """Only damage moves a checkpoint aside: a permission, I/O or memory error while reading
    stops the run with one line naming the checkpoint, and the rerun resumes from it."""
    import orbax.checkpoint as ocp

    straight = train(tmp_path / "straight")
    resumed = tmp_path / "resumed"
    with pytest.raises(Preempted):
        train(resumed, SignallingIterator(5, at=7, signum=signal.SIGTERM))
    monkeypatch.setattr(ocp.CheckpointManager, "restore", _restore_fails_with(error))
    with pytest.raises(CheckpointReadError) as e:
        train(resumed)
    message = str(e.value)
    assert "\n" not in message and isinstance(e.value, UserError)
    assert f"lm_fwd{os.sep}7 cannot be read ({type(error).__name__}" in message, message
    assert "nothing was moved" in message and fix in message, message
    assert steps_on_disk(resumed) == [5, 6, 7]
    assert not (resumed / "checkpoints" / "lm_fwd.damaged").exists()
    monkeypatch.undo()
    assert_same_run(tmp_path / "straight", resumed, straight, train(resumed))


def test_an_unknown_error_while_restoring_keeps_its_traceback_and_moves_nothing(
        tmp_path, monkeypatch):
    """An error that is neither damage nor the storage's (here a TypeError) is a bug: it is
    raised as it is, and nothing is moved."""
    import orbax.checkpoint as ocp

    with pytest.raises(Preempted):
        train(tmp_path, SignallingIterator(5, at=3, signum=signal.SIGTERM))
    monkeypatch.setattr(ocp.CheckpointManager, "restore",
                        _restore_fails_with(TypeError("unexpected tree")))
    with pytest.raises(TypeError, match="unexpected tree"):
        train(tmp_path)
    assert steps_on_disk(tmp_path) == [2, 3]
