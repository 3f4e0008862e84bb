"""Atomic writes: a file or a directory is built under a temporary sibling name and renamed
into place when complete, so a killed process (or a full disk) never leaves a partial one at
the final path, and an earlier version stays intact until the new one replaces it.

A written file is fsynced before its rename and its directory after it, so a power cut
cannot leave the new name pointing at blocks never written. Temporary names carry their
writer's host and pid (`<name>.tmp-<host>-<pid>-<random>`, `temp_owner` reads them back), so a
cleanup can tell a dead writer's leftovers from a live writer's work
(`ulmfit_jax.text.stale_temps`).

Dependency-free, so that every layer can use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from typing import BinaryIO

TEMP_MARKER = ".tmp-"


def owner_tag() -> str:
    """`<host>-<pid>` of this process, as temporary names carry it."""
    return f"{socket.gethostname()}-{os.getpid()}"


def temp_sibling(path: str | os.PathLike) -> str:
    """A fresh temporary name beside `path`, tagged with this process as its owner."""
    return f"{os.fspath(path)}{TEMP_MARKER}{owner_tag()}-{uuid.uuid4().hex[:12]}"


def temp_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that made temporary name `name`; None if it is not one."""
    if TEMP_MARKER not in name:
        return None
    tag = name.split(TEMP_MARKER, 1)[1]  # <host>-<pid>-<random>; a host name may hold "-"
    host, _, pid = tag.rpartition("-")[0].rpartition("-")
    return (host, int(pid)) if host and pid.isdigit() else None


def fsync_directory(path: str | os.PathLike) -> None:
    """Make the entries of directory `path` (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file open for writing that appears at `path`, fsynced, when the block ends.

    On an exception nothing appears and an earlier file at `path` is left as it was.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (str as UTF-8) to `path` through a temporary sibling and a rename."""
    with atomic_file(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


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
