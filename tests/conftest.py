"""Shared test set-up: tests run on CPU unless JAX_PLATFORMS says otherwise, fp32, with 64-bit
disabled (as training does).

float32 matmuls are pinned to full precision for every test and every subprocess it starts:
on GPUs and TPUs jax's default runs them as TF32 or bf16 passes, whose 1e-4-size differences
are not what the parity tests measure. A test about the precision setting itself sets it.

Compiled programs are shared through jax's persistent cache: many tests (and the train.py
subprocesses they start) compile the same small steps, and on a 2-core CI machine compiling is
most of the suite's time. The cache key holds jax's version, the backend and its flags, so an
entry is only reused where it is valid. A size limit makes jax guard the directory with a file
lock: pytest-xdist's workers and their subprocesses read and write it at once.

In-process tests run on jax's one CPU device whatever order they run in: the run config's
`cpu_devices` (one device per core by default) takes effect only before jax's backends start, so
without starting them here the first test to train would set the device count of every later
test in its worker. Subprocesses (train.py, predict.py) start fresh and get the user's default.
"""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"ulmfit_jax-tests-xla-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

import jax  # noqa: E402  (after the environment above, which jax reads at import)

jax.devices()
