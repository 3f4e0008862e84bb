"""Several processes, one run (`config.distributed`; `trainer.distributed`).

Two `train.py` processes with one CPU device each, joined by `jax.distributed` on localhost,
must train exactly like one process with two (fake) devices; only process 0 writes the
workdir; a process that dies ends the other one within its heartbeat timeout; a data error on
process 0 reaches the other as one line.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from ulmfit_jax.errors import ConfigError
from ulmfit_jax.trainer import distributed
from ulmfit_jax.trainer.config import base_config, check_config

REPO = Path(__file__).resolve().parents[1]
DIED = "another task died"  # jax's words when it ends a process whose peer stopped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _train(workdir: Path, *flags: str, devices: int = 1, env: dict | None = None,
           ) -> subprocess.Popen:
    """`train.py` on configs/tiny.py in a subprocess with `devices` CPU devices."""
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {}),
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    command = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs/tiny.py"),
               "--workdir", str(workdir), *flags]
    return subprocess.Popen(command, env=full_env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _by_config(port: int, process_id: int, *extra: str) -> list[str]:
    return ["--config.distributed.enabled=True",
            f"--config.distributed.coordinator_address=localhost:{port}",
            "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={process_id}", *extra]


def _by_environment(port: int, process_id: int) -> dict:
    return {"JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(process_id)}


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _numbers(tree: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_numbers(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = float(value)
    return flat


def _params(model_dir: Path) -> list[np.ndarray]:
    import jax

    from ulmfit_jax.api import LanguageModel, TextClassifier

    kind = TextClassifier if "classifier" in model_dir.name else LanguageModel
    return [np.asarray(x) for x in jax.tree.leaves(kind.load(model_dir).params)]


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
    one = _finish(_train(tmp_path / "one", "--stage", "all", devices=2))
    assert one[0] == 0, one[2][-3000:]
    port = _free_port()
    # Process 0 finds the cluster in its config, process 1 in its environment.
    # Tokenizer workers (a result-free key) start from a server process once jax runs.
    procs = [_train(tmp_path / "two", "--stage", "all", "--config.data.workers=2",
                    *_by_config(port, 0)),
             _train(tmp_path / "two", "--stage", "all", "--config.distributed.enabled=True",
                    env=_by_environment(port, 1))]
    (code0, out0, err0), (code1, out1, err1) = [_finish(p) for p in procs]
    assert (code0, code1) == (0, 0), (err0[-3000:], err1[-3000:])

    expected = _numbers(json.loads((tmp_path / "one" / "metrics.json").read_text()))
    got = _numbers(json.loads((tmp_path / "two" / "metrics.json").read_text()))
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()),
                               rtol=1e-5, atol=1e-5)
    for name in ("lm_fwd", "classifier_fwd"):
        for a, b in zip(_params(tmp_path / "one" / "models" / name),
                        _params(tmp_path / "two" / "models" / name), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # Process 0 alone claimed the workdir and reports; process 1 only trained.
    assert (tmp_path / "two" / ".lock").read_text().split()[0] == str(procs[0].pid)
    assert "validation accuracy" in out0 and "validation accuracy" not in out1


def test_a_single_process_run_forks_its_tokenizer_workers_before_jax_starts(tmp_path):
    code, _, err = _finish(_train(tmp_path, "--stage", "lm", "--config.data.workers=2"))
    assert code == 0, err[-3000:]
    assert "os.fork() was called" not in err  # jax's warning: it had started threads


def _wait_for_training(workdir: Path, procs: list[subprocess.Popen], timeout: float) -> None:
    """Until the LM stage has written its first checkpoint (both processes are training)."""
    deadline = time.monotonic() + timeout
    while not any((workdir / "checkpoints" / "lm_fwd").glob("[0-9]*")):
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["worker dies", "coordinator dies"])
def test_a_process_that_dies_ends_the_other_within_the_heartbeat_timeout(tmp_path, victim):
    heartbeat_s = 5
    port = _free_port()
    long_lm = ("--stage", "lm", "--config.lm.epochs=200",
               f"--config.distributed.heartbeat_timeout_s={heartbeat_s}")
    procs = [_train(tmp_path, *long_lm, *_by_config(port, i)) for i in (0, 1)]
    try:
        _wait_for_training(tmp_path, procs, timeout=300)
        procs[victim].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        survivor = procs[1 - victim]
        code, _, err = _finish(survivor, timeout=heartbeat_s + 120)
        waited = time.monotonic() - killed_at
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert code != 0
    assert waited < heartbeat_s + 60, waited
    assert DIED in err or "heartbeat" in err, err[-3000:]


@pytest.mark.slow
def test_a_data_error_on_process_0_reaches_the_other_process_as_one_line(tmp_path):
    port = _free_port()
    missing = tmp_path / "missing.csv"
    bad_data = ("--stage", "all", "--config.data.source=csv", f"--config.data.path={missing}")
    procs = [_train(tmp_path / "run", *bad_data, *_by_config(port, i)) for i in (0, 1)]
    (code0, _, err0), (code1, _, err1) = [_finish(p, timeout=300) for p in procs]
    assert (code0, code1) == (2, 2), (err0[-2000:], err1[-2000:])
    assert str(missing) in err0.strip().splitlines()[-1]
    last = err1.strip().splitlines()[-1]
    assert last.startswith("error: process 0 failed (data):") and str(missing) in last


def _settings(**overrides) -> ml_collections.ConfigDict:
    c = base_config()
    c.distributed.update(enabled=True, **overrides)
    return c.distributed


def test_cluster_settings_come_from_the_config_then_the_environment(monkeypatch):
    for key in distributed.ENV_KEYS.values():
        monkeypatch.delenv(key, raising=False)
    assert distributed.cluster_settings(_settings()) == {}  # left to jax's detection
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed.cluster_settings(_settings(process_id=0)) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 0}
    monkeypatch.setenv("JAX_NUM_PROCESSES", "four")
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='four'"):
        distributed.cluster_settings(_settings())


@pytest.mark.parametrize("key, value", [("process_id", 2), ("num_processes", -1),
                                        ("heartbeat_timeout_s", 0)])
def test_bad_distributed_settings_name_the_key(key, value):
    c = base_config()
    c.distributed.update({"num_processes": 2, key: value})
    with pytest.raises(ConfigError, match=f"config.distributed.{key}="):
        check_config(c)


def test_a_single_process_run_neither_waits_nor_gathers():
    calls = []
    assert distributed.primary_first("data", lambda: calls.append(1) or "done", 1) == "done"
    assert calls == [1] and distributed.any_process(True) and not distributed.any_process(False)
    distributed.barrier("nothing to wait for")


def test_an_unreachable_coordinator_fails_within_the_start_up_timeout_naming_it(tmp_path):
    port = _free_port()  # nothing listens there
    start = time.monotonic()
    code, _, err = _finish(_train(tmp_path, *_by_config(port, 1),
                                  "--config.distributed.initialization_timeout_s=3"), timeout=120)
    assert code != 0 and time.monotonic() - start < 60
    assert f"joining the run's processes (coordinator_address localhost:{port}" in err
    assert "DEADLINE_EXCEEDED" in err and "RegisterTask" in err, err  # jax's abort, as README
    assert not (tmp_path / "metrics.csv").exists()
