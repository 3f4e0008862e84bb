"""The heap allocator chosen at start-up (`ulmfit_jax.host_allocator`): what it sets, that the
command re-executes once with it, and that the tuned glibc stops the per-step page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ulmfit_jax import host_allocator
from ulmfit_jax.host_allocator import (
    DONE_VARIABLE,
    GLIBC_TUNED,
    JEMALLOC_CONF,
    allocator_environment,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _finder(*installed: str):
    """A `find_library` that knows only the `installed` names."""
    return lambda name: f"lib{name}.so.4" if name in installed else None


@pytest.fixture
def on_glibc_linux(monkeypatch):
    monkeypatch.setattr(host_allocator, "_glibc_linux", lambda: True)


@pytest.mark.usefixtures("on_glibc_linux")
class TestTheEnvironmentChosen:
    def test_tcmalloc_first_and_the_users_preloads_after_it(self):
        env = {"LD_PRELOAD": "libmine.so"}
        changes = allocator_environment(env, _finder("jemalloc", "tcmalloc_minimal"))
        assert changes == {"LD_PRELOAD": "libtcmalloc_minimal.so.4 libmine.so",
                           DONE_VARIABLE: "libtcmalloc_minimal.so.4"}

    def test_jemalloc_keeps_its_freed_pages_unless_the_user_configured_it(self):
        changes = allocator_environment({}, _finder("jemalloc"))
        assert changes["LD_PRELOAD"] == "libjemalloc.so.4"
        assert changes["MALLOC_CONF"] == JEMALLOC_CONF
        mine = allocator_environment({"MALLOC_CONF": "narenas:1"}, _finder("jemalloc"))
        assert "MALLOC_CONF" not in mine

    def test_without_either_glibc_is_tuned_and_the_users_tunables_come_after(self):
        changes = allocator_environment({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"},
                                        _finder())
        assert changes == {"GLIBC_TUNABLES": GLIBC_TUNED + ":glibc.malloc.tcache_count=0",
                           DONE_VARIABLE: "glibc"}

    def test_the_variable_chooses_glibc_system_or_a_library(self):
        installed = _finder("tcmalloc_minimal")
        assert allocator_environment({"ULMFIT_JAX_ALLOCATOR": "glibc"}, installed)[
            "GLIBC_TUNABLES"] == GLIBC_TUNED
        assert allocator_environment({"ULMFIT_JAX_ALLOCATOR": "system"}, installed) == {}
        assert allocator_environment({"ULMFIT_JAX_ALLOCATOR": "/opt/libmi.so"}, installed)[
            "LD_PRELOAD"] == "/opt/libmi.so"

    def test_a_process_that_has_one_keeps_it(self):
        installed = _finder("tcmalloc_minimal")
        assert allocator_environment({DONE_VARIABLE: "glibc"}, installed) == {}
        assert allocator_environment({"LD_PRELOAD": "/x/libjemalloc.so.2"}, installed) == {}


def test_nothing_changes_off_glibc_linux(monkeypatch):
    monkeypatch.setattr(host_allocator, "_glibc_linux", lambda: False)
    assert allocator_environment({}, _finder("tcmalloc_minimal")) == {}


def _run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items()
                   if k not in (DONE_VARIABLE, "ULMFIT_JAX_ALLOCATOR")}
    return subprocess.run([sys.executable, "-u", "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          env={**environment, **env}, capture_output=True, text=True,
                          timeout=300)


REEXEC = """
    import os, sys
    print("start", os.getpid(), sys.argv[1:])
    from ulmfit_jax.host_allocator import use_fast_allocator
    use_fast_allocator()
    print("chosen", os.getpid(), os.environ.get("ULMFIT_JAX_ALLOCATOR_SET"),
          os.environ.get("GLIBC_TUNABLES"))
"""


@pytest.mark.skipif(not host_allocator._glibc_linux(), reason="the re-execution is Linux/glibc's")
def test_the_command_runs_again_once_same_pid_same_arguments_with_the_allocator():
    proc = _run(REEXEC, "--flag", "x y", ULMFIT_JAX_ALLOCATOR="glibc")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    pid = lines[0].split()[1]
    assert lines == [f"start {pid} ['--flag', 'x y']", f"start {pid} ['--flag', 'x y']",
                     f"chosen {pid} glibc {GLIBC_TUNED}"]


def test_system_keeps_the_process_as_it_started():
    proc = _run(REEXEC, ULMFIT_JAX_ALLOCATOR="system")
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["start", "chosen"]
    assert proc.stdout.splitlines()[1].endswith("None None")


# A jitted step on one CPU device whose temporaries are one block of about 50 MB: above glibc's
# largest mmap threshold (32 MB), within what one of its heaps can hold (64 MB).
FAULTS = """
    import json, resource
    from ulmfit_jax.host_allocator import use_fast_allocator
    use_fast_allocator()
    import jax, jax.numpy as jnp

    # Each step on this thread: which threads run steps, each warming its own heap, would
    # otherwise depend on the machine's load.
    jax.config.update("jax_cpu_enable_async_dispatch", False)

    @jax.jit
    def step(x):  # three live [2048, 1536] arrays: cumsums are not fused away
        a = jnp.cumsum(jnp.sin(x), axis=0)
        b = jnp.cumsum(jnp.cos(a), axis=1)
        c = jnp.cumsum(a * b, axis=0)
        return (a[:, :1] * b * c).sum() + c[::7, ::5].sum()

    x = jnp.ones((2048, 1536), jnp.float32)
    temp = step.lower(x).compile().memory_analysis().temp_size_in_bytes
    for _ in range(3):
        step(x).block_until_ready()
    faults = []
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # The median step: a step run by a thread new to the block faults it once more.
    print(json.dumps({"temp": temp, "faults": sorted(faults)[4]}))
"""


@pytest.mark.skipif(not host_allocator._glibc_linux(), reason="glibc's tunables")
def test_the_tuned_glibc_stops_faulting_fresh_pages_at_every_step():
    runs = {}
    for choice in ("system", "glibc"):
        proc = _run(FAULTS, ULMFIT_JAX_ALLOCATOR=choice, JAX_PLATFORMS="cpu")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[choice] = json.loads(proc.stdout.splitlines()[-1])
    temp = runs["system"]["temp"]
    assert 40 * 2**20 < temp < 60 * 2**20, runs
    # 4 KiB pages; glibc as started maps and faults the whole block again at every step
    # (unless the kernel backs it with huge pages).
    assert runs["glibc"]["faults"] < 0.05 * temp / 4096, runs


def test_the_allocator_in_use_is_named_for_benchmark_records():
    assert host_allocator.allocator_in_use({DONE_VARIABLE: "glibc"}) == "glibc"
    assert host_allocator.allocator_in_use({"LD_PRELOAD": "/l/libjemalloc.so.2"}) == \
        "/l/libjemalloc.so.2"
    assert host_allocator.allocator_in_use({"LD_PRELOAD": "libmine.so"}) == "system"


@pytest.mark.skipif(not host_allocator._glibc_linux(), reason="the re-execution is Linux/glibc's")
@pytest.mark.parametrize("script, flags", [("train.py", ["--config", "MISSING", "--workdir", "W"]),
                                           ("predict.py", ["--model", "MISSING", "A text."])])
def test_the_command_line_scripts_run_under_the_chosen_allocator(script, flags, tmp_path):
    """train.py and predict.py re-execute before anything else: a user error (here a missing
    file) still gives its one line and exit code 2, from a process with the allocator set."""
    argv = [script] + [str(tmp_path / f) if f.isupper() else f for f in flags]
    code = f"""
        import atexit, os, runpy, sys
        atexit.register(lambda: print("allocator", os.environ.get("{DONE_VARIABLE}")))
        sys.argv = {argv!r}
        runpy.run_path("{script}", run_name="__main__")
    """
    proc = _run(code, ULMFIT_JAX_ALLOCATOR="glibc")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["allocator glibc"]
    assert len(proc.stderr.strip().splitlines()) == 1 and "MISSING" in proc.stderr
