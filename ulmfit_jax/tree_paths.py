"""Parameter paths: a pytree's leaves named by their '/'-joined key path.

The one definition that optimizer layer groups (regex over paths) and the public API's
shape checks (saved or fastai parameters written into a module) share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

PyTree = Any


def path_strings(tree: PyTree) -> PyTree:
    """The tree with each leaf replaced by its '/'-joined key path, e.g. 'encoder/layers/0/w_ih'."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _join_path(path), tree)


def _join_path(path: tuple) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def leaves_by_path(tree: Mapping[Any, Any]) -> dict[str, Any]:
    """`{path: leaf}` of a nested dict (int list keys and their str form give the same path)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_join_path(path): leaf for path, leaf in leaves}
