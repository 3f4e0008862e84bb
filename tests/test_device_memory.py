"""Out of device memory: XLA's RESOURCE_EXHAUSTED becomes one line naming the stage, the batch
size, the memory asked and the setting to lower (exit code 2), and the run resumes from the
checkpoint written before it (see README, "What happens when things go wrong")."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import pytest

from ulmfit_jax.errors import DeviceMemoryError, UserError, device_memory_is_clear, memory_asked

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
# More bytes than any device holds (2**48: 256 TiB), so allocating it fails at once, on a CPU
# too, with XLA's own RESOURCE_EXHAUSTED error.
TOO_MANY_BYTES = 2**48


def test_a_real_allocation_failure_becomes_one_line_naming_stage_batch_and_memory():
    with pytest.raises(DeviceMemoryError) as e, \
            device_memory_is_clear("lm_fwd", {"lm.batch_size": 64}):
        jnp.zeros((TOO_MANY_BYTES,), jnp.uint8).block_until_ready()
    message = str(e.value)
    assert isinstance(e.value, UserError) and isinstance(e.value, MemoryError)
    assert "\n" not in message
    assert message.startswith("out of device memory in stage lm_fwd at "
                              "--config.lm.batch_size=64 (XLA asked for 262144.00 GiB); "
                              "lower it and rerun"), message
    assert "the checkpoints so far are intact" in message
    assert "RESOURCE_EXHAUSTED" in str(e.value.__cause__)


def test_other_runtime_errors_pass_unchanged():
    with pytest.raises(RuntimeError, match="^something else$"), \
            device_memory_is_clear("lm_fwd", {"lm.batch_size": 64}):
        raise RuntimeError("something else")


@pytest.mark.parametrize("message, asked", [
    # XLA's GPU allocator (BFC), its allocation request, and the TPU compiler.
    ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17179869184 bytes.",
     "XLA asked for 16.00 GiB"),
    ("INTERNAL: Failed to allocate request for 1.50GiB (1610612736B) on device ordinal 0",
     "XLA asked for 1.50 GiB"),
    ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space "
     "hbm. Used 20.58G of 15.48G hbm. Exceeded hbm capacity by 5.10G.",
     "XLA needs 20.58G of 15.48G"),
    ("RESOURCE_EXHAUSTED: no size given", "XLA did not say how much it asked for"),
])
def test_the_memory_asked_is_read_from_each_kind_of_message(message, asked):
    assert memory_asked(message) == asked


# train.py whose LM train step, at its `at`-th call, first allocates more than the device holds;
# it prints the step it was first called at (where the stage started or resumed).
DRIVER = textwrap.dedent("""
    import runpy, sys
    import jax.numpy as jnp
    from ulmfit_jax.trainer.lm_stage import LMStage

    at = int(sys.argv.pop(1))
    real_train_step = LMStage.train_step
    calls = 0

    def train_step(self, freeze_to):
        step = real_train_step(self, freeze_to)

        def step_that_runs_out(state, *args):
            global calls
            calls += 1
            if calls == 1:
                print("first step", int(state.step), flush=True)
            if calls == at:
                jnp.zeros((2**48,), jnp.uint8).block_until_ready()
            return step(state, *args)
        return step_that_runs_out

    LMStage.train_step = train_step
    sys.argv[0] = "train.py"
    runpy.run_path("train.py", run_name="__main__")
""")


def _train_lm(workdir: Path, oom_at: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(oom_at), "--config", "configs/tiny.py",
         "--workdir", str(workdir), "--stage", "lm", "--config.data.max_train_docs=30",
         "--config.checkpoint.every_steps=2", "--config.checkpoint.async_save=False"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # two train.py runs (about 30 s of CPU each)
def test_train_py_out_of_device_memory_is_one_line_and_the_rerun_resumes(tmp_path):
    proc = _train_lm(tmp_path, oom_at=4)  # steps 1-3 ran, checkpoint at step 2
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: out of device memory in stage lm_fwd at "
                               "--config.lm.batch_size=16 (XLA asked for 262144.00 GiB)")
    assert "the checkpoints so far are intact" in lines[0]
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "lm_fwd").iterdir()
                  if p.name.isdigit()) == ["2"]

    again = _train_lm(tmp_path, oom_at=0)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "first step 2" in again.stdout  # resumed from the checkpoint, not from scratch
    assert (tmp_path / "models" / "lm_fwd" / "config.json").exists()
