"""`model.matmul_precision`: how float32 matmuls run on the accelerator.

- `default`: jax's default. On GPUs float32 matmuls then run as TF32 (10-bit mantissa), on TPUs
  as one bfloat16 pass; differences against a float32 reference are 1e-5 to 1e-3. On CPUs they
  are exact float32. `JAX_DEFAULT_MATMUL_PRECISION` changes this default process-wide.
- `high`: three bfloat16 passes on TPU, TF32 on GPU; exact float32 on CPU.
- `highest`: full float32 everywhere (slowest on accelerators; what fastai parity needs).

`compute_dtype = bfloat16` is a separate choice: it casts the matmul inputs themselves.
The model applies the setting to every matmul it traces, forward and backward: a jax context
set while tracing fixes each matmul's precision, and the hand-written LSTM backward re-enters
the precision its forward was traced with.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

MATMUL_PRECISIONS = ("default", "high", "highest")


@contextlib.contextmanager
def matmul_precision(name: str | None) -> Iterator[None]:
    """Trace the enclosed matmuls at precision `name`; `default`/None leaves jax's own."""
    if name in (None, "default"):
        yield
    else:
        with jax.default_matmul_precision(name):
            yield


def active_matmul_precision() -> str | None:
    """The precision jax applies to matmuls traced now (None: jax's default)."""
    # jax sets its flags as attributes of its config at runtime; its stubs do not list them.
    return jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]
