"""Writing a model directory atomically: build it in a hidden sibling, then rename it into place.

A killed process can leave that sibling, never a partial directory at the final path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yields a fresh temporary directory that replaces `directory` when the block completes."""
    final = os.path.abspath(os.fspath(directory))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex}")
    try:
        os.makedirs(tmp)
        yield tmp
        _swap_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_into_place(tmp: str, final: str) -> None:
    # Directory renames are atomic; an old model is moved aside first and removed only after
    # the new one is in place, so a crash leaves either the old or the new model, never a mix.
    old = None
    if os.path.exists(final):
        old = f"{tmp}.old"
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old)
