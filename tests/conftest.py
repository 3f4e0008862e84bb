"""Shared test set-up: tests run on CPU, fp32, with 64-bit disabled (as training does)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
