"""trainer/cpu_devices.py: how many jax CPU devices a run asks for, that jax gets them when
asked before it starts (and keeps its own otherwise), and that a run resumes on another count."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ulmfit_jax.errors import ConfigError
from ulmfit_jax.trainer.config import base_config, check_config
from ulmfit_jax.trainer.cpu_devices import auto_device_count, requested_device_count

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cores, batch_sizes, expected", [
    (2, (32, 32, 128), 2), (2, (33, 32, 128), 1), (4, (64, 6, 128), 2), (8, (64, 64, 128), 8),
    (1, (64, 64, 128), 1), (6, (64, 48, 128), 4)])
def test_auto_is_the_largest_count_up_to_the_cores_dividing_every_batch(cores, batch_sizes,
                                                                        expected):
    assert auto_device_count(cores, batch_sizes) == expected


def test_the_config_asks_for_one_device_per_core_by_default_and_n_when_set(monkeypatch):
    config = base_config()
    config.lm.batch_size, config.classifier.batch_size = 32, 48
    config.classifier.eval_batch_size = 96
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert requested_device_count(config) == 4
    config.classifier.batch_size = 50  # 4 does not divide it, nor 3: 2
    assert requested_device_count(config) == 2
    config.cpu_devices = 3
    assert requested_device_count(config) == 3
    config.cpu_devices = -1
    with pytest.raises(ConfigError, match="cpu_devices"):
        check_config(config)


def _devices_after(code: str, xla_flags: str = "") -> int:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code + "\nimport jax; print(len(jax.devices()))"],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    return int(proc.stdout.split()[-1])


def test_jax_gets_the_count_before_it_starts_and_keeps_its_own_after():
    ask = "from ulmfit_jax.trainer.cpu_devices import set_cpu_device_count as s; s(3)"
    assert _devices_after(ask) == 3
    assert _devices_after("import jax; jax.devices()\n" + ask) == 1  # too late: kept
    assert _devices_after(ask, "--xla_force_host_platform_device_count=2") == 2  # the user's


def test_use_cpu_cores_warns_when_called_after_jax_started_and_refuses_zero():
    late = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()\nimport ulmfit_jax; "
         "ulmfit_jax.use_cpu_cores(2)"],
        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}, capture_output=True,
        text=True, timeout=120, check=True)
    assert "use_cpu_cores(2): jax has already started, with 1 CPU device(s)" in late.stderr
    from ulmfit_jax import use_cpu_cores

    with pytest.raises(ValueError, match="count must be >= 1"):
        use_cpu_cores(0)


def _train_py(workdir: Path, devices: int) -> subprocess.Popen:
    cmd = [sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(workdir),
           "--stage", "lm", "--config.checkpoint.every_steps=15",
           f"--config.cpu_devices={devices}"]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_run_checkpointed_on_two_cpu_devices_resumes_on_one(tmp_path):
    """A checkpoint's arrays are laid out over the devices that wrote it; a resume on another
    count (another machine, or `cpu_devices` changed) lays them out over its own, and ends
    where an uninterrupted run ends (within float32 reordering)."""
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    first = _train_py(resumed, devices=2)
    checkpoints = resumed / "checkpoints" / "lm_fwd"
    deadline = time.time() + 300
    while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)  # saves at the next step, then exits
    out, err = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "each batch is split over 2 CPU devices" in out

    second = _train_py(resumed, devices=1)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert "lm_fwd: resuming from its checkpoint of step" in out
    assert "split over" not in out  # one device

    reference = _train_py(straight, devices=1)
    assert reference.wait(timeout=600) == 0, reference.communicate()[1][-3000:]
    ours, theirs = (json.loads((d / "metrics.json").read_text())["lm_fwd"]
                    for d in (resumed, straight))
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, err_msg=key)
