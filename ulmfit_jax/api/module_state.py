"""Parameter trees into NNX modules: every path and shape checked against the module.

Saved models, fastai files and the trainer hand over pure nested dicts (parameters and
BatchNorm statistics; see ARCHITECTURE.md's parameter tree); a mismatch is one `ValueError`
naming the paths, never a silent broadcast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ulmfit_jax.tree_paths import leaves_by_path

M = TypeVar("M", bound=nnx.Module)


def abstract_module(build: Callable[..., M], config: Any) -> M:
    """`build(config, rngs=...)` with shapes only, no initialisation (to be filled by
    `set_state`)."""
    return nnx.eval_shape(lambda: build(config, rngs=nnx.Rngs(0)))


def set_state(module: nnx.Module, pure: Mapping[str, Any], source: str) -> None:
    """Write a pure dict (params and BatchNorm stats) into `module`, checking every shape."""
    state = nnx.state(module)
    current = nnx.to_pure_dict(state)
    cur_paths, new_paths = leaves_by_path(current), leaves_by_path(pure)
    if set(cur_paths) != set(new_paths):
        missing = sorted(set(cur_paths) - set(new_paths))
        extra = sorted(set(new_paths) - set(cur_paths))
        raise ValueError(
            f"{source}: parameter tree mismatch; missing {missing}, unexpected {extra}"
        )
    for path, value in new_paths.items():
        got, expected = _shape(value), _shape(cur_paths[path])
        if got != expected:
            raise ValueError(f"{source}: {path} has shape {got}, expected {expected}")
    nnx.replace_by_pure_dict(state, _like(current, pure))
    nnx.update(module, state)


def merge_trees(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Union of two nested dicts with disjoint leaves (parameters and BatchNorm statistics)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = merge_trees(out.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _like(template: Mapping[Any, Any], tree: Mapping[Any, Any]) -> dict[Any, Any]:
    """`tree`'s values under `template`'s keys (int list keys may come back as strings)."""
    out: dict[Any, Any] = {}
    for key, value in template.items():
        src = tree[key] if key in tree else tree[str(key)]
        if isinstance(value, Mapping):
            out[key] = _like(value, src)
        else:
            out[key] = jnp.asarray(src, value.dtype)
    return out
