"""'/'-joined key paths of pytree leaves, and regex rules over them.

A parameter's path is its key path joined with '/', e.g. 'encoder/layers/0/w_ih' (the names in
ARCHITECTURE.md). Rules are regexes that must match the whole path; the first match wins. The one
definition that optimizer layer groups and the public API's shape checks share.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax

PyTree = Any


def path_strings(tree: PyTree) -> PyTree:
    """The tree with each leaf replaced by its '/'-joined key path, e.g. 'encoder/layers/0/w_ih'."""
    return jax.tree_util.tree_map_with_path(lambda path, _: join_path(path), tree)


def join_path(path: tuple) -> str:
    """A jax key path (dict keys, sequence indices, attribute names) joined with '/'."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def first_match(path: str, patterns: Sequence[str]) -> int | None:
    """Index of the first regex in `patterns` that fully matches `path` (None: none does)."""
    for index, pattern in enumerate(patterns):
        if re.fullmatch(pattern, path):
            return index
    return None


def match_paths(tree: PyTree, patterns: Sequence[str]) -> PyTree:
    """Bool tree: True where the leaf's path fully matches any of `patterns`."""
    return jax.tree.map(lambda p: first_match(p, patterns) is not None, path_strings(tree))


def path_values(tree: PyTree, rules: Sequence[tuple[str, float]], default: float) -> PyTree:
    """Float tree: the value of the first rule whose regex fully matches the leaf's path."""
    patterns = [pattern for pattern, _ in rules]

    def value(path: str) -> float:
        index = first_match(path, patterns)
        return default if index is None else float(rules[index][1])

    return jax.tree.map(value, path_strings(tree))


def leaves_by_path(tree: Mapping[Any, Any]) -> dict[str, Any]:
    """`{path: leaf}` of a nested dict (int list keys and their str form give the same path)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {join_path(path): leaf for path, leaf in leaves}
