"""Which kernel runs the AWD-LSTM's recurrence: `model.lstm_impl`.

- `scan`: one `lax.scan` per layer with a fused 4-gate recurrent matmul (`lstm.py`); any backend.
- `wavefront`: one loop over T + L - 1 steps advancing every layer (`wavefront.py`); the
  dependent chain is T + L - 1 instead of L * T. Exact to the scan; opt-in until it is measured
  faster on an accelerator.
- `cudnn`: cuDNN's fused LSTM (`cudnn_lstm.py`); CUDA and float32 only.
- `auto`: the one measured fastest for the device and dtype. On one H200 (jax 0.11.2,
  benchmarks/RESULTS.md) the scan beat cuDNN for LM training (1.03x) and classifier training
  (1.29x) with half the memory, so `auto` is the scan everywhere measured so far (CPU, CUDA);
  TPUs have no cuDNN.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp

logger = logging.getLogger(__name__)

LSTM_IMPLS = ("auto", "scan", "wavefront", "cudnn")


@functools.cache
def resolve_lstm_impl(impl: str, compute_dtype: Any) -> str:
    """`auto` -> the implementation measured fastest here (see the module docstring); logs it."""
    if impl != "auto":
        return impl
    chosen = "scan"
    logger.info("lstm_impl auto -> %s (%s, %s)", chosen, jax.devices()[0].platform,
                jnp.dtype(compute_dtype).name)
    return chosen
