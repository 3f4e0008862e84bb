"""The process's heap allocator: XLA:CPU's step buffers without fresh pages at every step.

XLA:CPU allocates an execution's temporaries with `malloc` (one block of tens to hundreds of MB
for a training step) and frees them when the execution ends. glibc's `malloc` serves a block
that large with `mmap` and gives it back with `munmap`, so the next step gets new pages, and the
kernel faults and zeroes each one: on a 2-core Intel Xeon, a classifier step at
quickstart_15min's sizes took 18,850 minor faults and 31 ms of kernel time in 75 ms
(`benchmarks/RESULTS.md`, "The heap allocator"). An allocator that keeps freed memory for reuse
(tcmalloc, jemalloc), or glibc told to keep it, removes them.

Which allocator a process uses is fixed when it starts (the dynamic linker reads `LD_PRELOAD`,
glibc its `GLIBC_TUNABLES`, only then), so `use_fast_allocator()` re-executes the running
command once, with the same PID and arguments, in an environment that chooses:
1. tcmalloc, or else jemalloc (`MALLOC_CONF` keeping freed pages), where the system has one
   (Debian/Ubuntu: `apt install libtcmalloc-minimal4` or `libjemalloc2`);
2. otherwise glibc's own, tuned (`GLIBC_TUNABLES`): no `mmap` for large blocks, no trimming of
   freed memory. This removes the faults for blocks up to 64 MB (glibc's limit for one block
   outside the main thread's heap); larger ones are still mapped afresh at each step.

The freed memory is kept by the process: its resident size stays near its peak, as a training
run's does anyway. `train.py` and `predict.py` call `use_fast_allocator()` first; the
environment variable `ULMFIT_JAX_ALLOCATOR` chooses:

    auto      (the default) as above, unless LD_PRELOAD already holds a malloc
    system    the allocator as the process started (no re-execution)
    glibc     glibc's, tuned (step 2), even where tcmalloc or jemalloc is installed
    PATH      a shared library to preload (another malloc)

In a notebook, set the environment before starting Jupyter: `python -m ulmfit_jax.host_allocator`
prints it as shell `export` lines.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import sys
from collections.abc import Callable, Mapping

CHOICE_VARIABLE = "ULMFIT_JAX_ALLOCATOR"
# Set in the re-executed process: it (and every process it starts) keeps its allocator.
DONE_VARIABLE = "ULMFIT_JAX_ALLOCATOR_SET"
# ctypes names, in order of preference; tcmalloc needs no settings to keep freed memory.
LIBRARIES = ("tcmalloc_minimal", "tcmalloc", "jemalloc")
# jemalloc by default returns freed pages within seconds, and blocks above 8 MB at once.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
# Not glibc.malloc.hugetlb=1 (transparent huge pages) as well: with these two it made a
# WT103-size LM step 1.3-1.5x slower (benchmarks/RESULTS.md, "The heap allocator").
GLIBC_TUNED = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295"


def allocator_environment(env: Mapping[str, str],
                          find_library: Callable[[str], str | None] = ctypes.util.find_library,
                          ) -> dict[str, str]:
    """The variables to set (name -> value) for a process with `env` to use the allocator
    `ULMFIT_JAX_ALLOCATOR` chooses; {} when it keeps the one it has."""
    choice = env.get(CHOICE_VARIABLE, "auto")
    if (DONE_VARIABLE in env or choice == "system" or not _glibc_linux()
            or _preloads_allocator(env.get("LD_PRELOAD", ""))):
        return {}
    if choice not in ("auto", "glibc"):
        return {**_preload(env, choice), DONE_VARIABLE: choice}
    library = _installed_library(find_library) if choice == "auto" else None
    if library is not None:
        return {**_preload(env, library), DONE_VARIABLE: library}
    tunables = ":".join(filter(None, (GLIBC_TUNED, env.get("GLIBC_TUNABLES"))))
    return {"GLIBC_TUNABLES": tunables, DONE_VARIABLE: "glibc"}


def use_fast_allocator() -> None:
    """Re-execute this command (same PID, arguments, interpreter options) with the allocator
    `allocator_environment` chooses, once; return at once where it keeps the one it has."""
    changes = allocator_environment(os.environ)
    if not changes or not sys.executable:  # an embedded interpreter cannot be re-executed
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, **changes})


def allocator_in_use(env: Mapping[str, str] = os.environ) -> str:
    """The allocator this process started with: what `use_fast_allocator` chose, a malloc
    the user preloaded, or "system"."""
    if DONE_VARIABLE in env:
        return env[DONE_VARIABLE]
    preload = env.get("LD_PRELOAD", "")
    return preload if _preloads_allocator(preload) else "system"


def _glibc_linux() -> bool:
    """LD_PRELOAD and GLIBC_TUNABLES as described here work on Linux with glibc only."""
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def _preloads_allocator(preload: str) -> bool:
    """Whether the user's LD_PRELOAD already holds a malloc of their choice."""
    return any(name in preload for name in ("tcmalloc", "jemalloc", "mimalloc"))


def _installed_library(find_library: Callable[[str], str | None]) -> str | None:
    for name in LIBRARIES:
        found = find_library(name)
        if found:
            return found
    return None


def _preload(env: Mapping[str, str], library: str) -> dict[str, str]:
    """`library` first in LD_PRELOAD (the user's preloads kept after it); jemalloc's settings
    unless the user has their own."""
    preload = " ".join(filter(None, (library, env.get("LD_PRELOAD"))))
    changes = {"LD_PRELOAD": preload}
    if "jemalloc" in os.path.basename(library) and "MALLOC_CONF" not in env:
        changes["MALLOC_CONF"] = JEMALLOC_CONF
    return changes


if __name__ == "__main__":
    for name, value in allocator_environment(os.environ).items():
        print(f"export {name}='{value}'")
