"""trainer/cpu_devices.py: how many jax CPU devices a run asks for, and that jax gets them
when asked before it starts (and keeps its own otherwise)."""

import os
import subprocess
import sys
from pathlib import Path

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


def test_the_config_asks_for_one_device_by_default_and_n_when_set():
    config = base_config()
    assert requested_device_count(config) == 1
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
    ask = "from ulmfit_jax.trainer.cpu_devices import use_cpu_cores; use_cpu_cores(3)"
    assert _devices_after(ask) == 3
    assert _devices_after("import jax; jax.devices()\n" + ask) == 1  # too late: kept
    assert _devices_after(ask, "--xla_force_host_platform_device_count=2") == 2  # the user's
