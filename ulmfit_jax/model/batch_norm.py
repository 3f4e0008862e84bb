"""BatchNorm1d with torch semantics (eps 1e-5, momentum 0.1, unbiased running variance)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class BatchNorm(nnx.Module):
    """Parameters scale, bias [features] (nnx.Param); running mean, var [features] (nnx.BatchStat).

    Initialised as fastai's `BatchNorm`: scale 1, bias 1e-3; running mean 0, var 1.
    """

    def __init__(self, features: int, eps: float = 1e-5, momentum: float = 0.1):
        self.eps = eps
        self.momentum = momentum
        self.scale = nnx.Param(jnp.ones((features,), jnp.float32))
        self.bias = nnx.Param(jnp.full((features,), 1e-3, jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """x [batch, features] -> same shape.

        Training normalises with the batch's biased variance and moves the running stats
        towards the batch mean and *unbiased* variance; eval uses the running stats."""
        if not train:
            mean, var = self.mean[...], self.var[...]
        else:
            n = x.shape[0]
            if n < 2:
                raise ValueError(f"BatchNorm in training needs batch size > 1, got {n}")
            mean = jnp.mean(x, axis=0)
            var = jnp.mean(jnp.square(x - mean), axis=0)
            unbiased = jax.lax.stop_gradient(var * (n / (n - 1)))
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1 - m) * self.var[...] + m * unbiased
        return (x - mean) / jnp.sqrt(var + self.eps) * self.scale[...] + self.bias[...]
