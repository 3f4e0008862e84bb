"""Atomic writes: a file or a directory is built under a temporary sibling name and renamed
into place when complete, so a killed process (or a full disk) never leaves a partial one at
the final path, and an earlier version stays intact until the new one replaces it.

Dependency-free, so that every layer can use it. (The token cache keeps its own writer: its
temporary names carry the owner's pid for its stale-temp cleanup.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` through a temporary sibling and a rename."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


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
