"""Shared test set-up: tests run on CPU unless JAX_PLATFORMS says otherwise, fp32, with 64-bit
disabled (as training does).

float32 matmuls are pinned to full precision for every test and every subprocess it starts:
on GPUs and TPUs jax's default runs them as TF32 or bf16 passes, whose 1e-4-size differences
are not what the parity tests measure. A test about the precision setting itself sets it.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
