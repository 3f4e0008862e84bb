"""The two pieces of fastai's optimizer that optax has no transformation for.

Both take a *multiplicity* tree (Python floats like the parameters): how many fastai tensors a
parameter of ours stands for. Our single LSTM bias is fastai's `bias_ih` + `bias_hh`; both get
the same gradient, so the global gradient norm counts it twice and fastai's Adam moves each by
the same step, their sum by twice it. Multiplicity 2 reproduces both (`model/` declares which
parameters are fused; other parameters have 1).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any

# torch.nn.utils.clip_grad_norm_ divides by (norm + 1e-6).
TORCH_CLIP_EPS = 1e-6


def clip_by_global_norm_like_torch(max_norm: float, multiplicity: PyTree
                                   ) -> optax.GradientTransformation:
    """torch's `clip_grad_norm_`: g *= min(1, max_norm / (norm + 1e-6)), with each gradient
    counted `multiplicity` times in the squared norm.

    Hand-written because `optax.clip_by_global_norm` divides by the bare norm (no 1e-6) and
    has no per-parameter weights. Frozen parameters must reach it with zero gradients, as
    torch leaves their `.grad` out of the norm.
    """

    def update(updates: PyTree, state: optax.EmptyState, params: PyTree = None):
        del params
        squares = jax.tree.map(lambda g, k: k * jnp.sum(jnp.square(g)), updates, multiplicity)
        norm = jnp.sqrt(sum(jax.tree.leaves(squares)))
        coef = jnp.minimum(max_norm / (norm + TORCH_CLIP_EPS), 1.0)
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def scale_by_multiplicity(multiplicity: PyTree) -> optax.GradientTransformation:
    """Multiplies each update by its parameter's multiplicity (the fused bias's doubled step).

    Leaves with multiplicity 1 pass through untouched. `optax.scale` takes one scalar, hence
    this per-parameter version.
    """

    def update(updates: PyTree, state: optax.EmptyState, params: PyTree = None):
        del params
        scaled = jax.tree.map(lambda u, k: u if k == 1.0 else u * jnp.asarray(k, u.dtype),
                              updates, multiplicity)
        return scaled, state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
