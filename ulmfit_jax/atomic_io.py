"""Atomic writes: a file or a directory is built under a temporary sibling name and put in
place when complete, so a killed process (or a full disk) never leaves a partial one at the
final path, and an earlier version stays intact until the new one replaces it.

A file (`atomic_file`, `atomic_write`) is fsynced before its rename and its directory after
it, so a power cut cannot leave the new name pointing at blocks never written (the temporary
name needs no fsync of its own: the rename moves the written file, whatever its entry). A
directory (`atomic_directory`) is a symbolic link to a complete version beside it, every file
and folder of which is fsynced before a new link is renamed over the old one: the path never
goes missing, and `read_directory` reads one version whole while another process saves (a
reader outpaced by repeated saves takes a shared flock on the folder, which writers take
exclusively to publish, and reads once more).

Temporary names carry their writer's host and pid (`<name>.tmp-<host>-<pid>-<random>`,
`temp_owner` reads them back; versions `.<name>.v-<host>-<pid>-<random>` likewise), so a
cleanup can tell a dead writer's leftovers from a live writer's work
(`ulmfit_jax.text.stale_temps`, `atomic_directory` itself).

Dependency-free, so that every layer can use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

try:
    import fcntl
except ImportError:  # Windows: no flock; its storage rarely has the symbolic links either
    fcntl = None  # type: ignore[assignment]

TEMP_MARKER = ".tmp-"
VERSION_MARKER = ".v-"
T = TypeVar("T")


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
    return _tag_owner(name.split(TEMP_MARKER, 1)[1])


def _tag_owner(tag: str) -> tuple[str, int] | None:
    """(host, pid) of an owner tag `<host>-<pid>-<random>` (a host name may hold "-")."""
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
    """Yields a fresh directory that, once the block completes, becomes `directory` at once.

    `directory` is made a symbolic link to that fresh directory, a hidden sibling
    `.<name>.v-<host>-<pid>-<random>` (a version). Once the block ends, every file and folder
    in the version is fsynced, a new link to it is renamed over `directory` (rename(2) of a link
    is atomic) and the directory holding them fsynced; only then is the version it replaced
    removed. So `directory` always names one complete version, old or new, whenever a writer
    stops; a reader that resolves it once (`read_directory`) never sees a mix. On an
    exception nothing changes. Where the storage has no symbolic links, and when the directory
    replaced is a real one (written before versions), `directory` is renamed aside and the new
    one renamed in: two renames, between which `directory` is missing for a moment.
    """
    final = os.path.abspath(os.fspath(directory))
    if os.path.lexists(final) and not overwrite:
        raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    version = new_version(final)
    os.makedirs(version)
    try:
        yield version
        fsync_tree(version)
        fsync_directory(os.path.dirname(final))
        _publish(version, final)
    finally:
        if _linked_version(final) != version:  # not published (or already replaced)
            shutil.rmtree(version, ignore_errors=True)
    _remove_abandoned_versions(final)


def read_directory(directory: str | os.PathLike, read: Callable[[str], T],
                   attempts: int = 3) -> T:
    """`read(directory)` of the one version `directory` names (see `atomic_directory`), read
    again if a writer replaced it during the read.

    `read` gets the path the caller gave, so its errors and warnings name that path, not a
    hidden version. Every save makes a new version, so a link that names the same version
    after the read as before it named that version throughout: nothing was mixed. A reader
    slower than a writer that saves again and again could retry forever; after `attempts`
    it holds writers off (a shared lock on the folder holding `directory`, which a writer
    takes exclusively to publish) and reads once more.
    """
    for _ in range(attempts):
        version = os.path.realpath(directory)
        try:
            result = read(os.fspath(directory))
        except Exception:
            if os.path.realpath(directory) == version:
                raise
            continue
        if os.path.realpath(directory) == version:
            return result
    with _publishing_lock(_parent(directory), exclusive=False) as locked:
        version = os.path.realpath(directory)
        result = read(os.fspath(directory))
        if os.path.realpath(directory) != version:
            raise OSError(f"{os.fspath(directory)} was replaced during each of {attempts + 1} "
                          f"reads and its folder cannot be locked ({locked}) to hold the "
                          "writer off: read it when no save is running")
        return result


def _parent(path: str | os.PathLike) -> str:
    return os.path.dirname(os.path.abspath(os.fspath(path)))


@contextlib.contextmanager
def _publishing_lock(folder: str, exclusive: bool) -> Iterator[str]:
    """flock(2) on `folder` itself: exclusive while a writer links a new version into it and
    removes the one replaced, shared while a reader reads. Yields "held", or why not: where
    the platform or the file system has no such locks, nothing is held."""
    fd, why_not = _locked_folder(folder, exclusive)
    try:
        yield why_not or "held"
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _locked_folder(folder: str, exclusive: bool) -> tuple[int | None, str | None]:
    """(an open descriptor of `folder` holding the lock, None), or (None, why not)."""
    if fcntl is None:
        return None, "no flock on this platform"
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        return None, f"cannot open it: {e.strerror}"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except OSError as e:  # ENOLCK on some network file systems
        os.close(fd)
        return None, f"flock failed: {e.strerror}"
    return fd, None


def fsync_tree(root: str) -> None:
    """fsync every file and directory under `root`, `root` included."""
    for folder, _, files in os.walk(root, topdown=False):
        for file in files:
            fd = os.open(os.path.join(folder, file), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(folder)


def new_version(final: str) -> str:
    """A fresh version name for directory `final`, tagged with this process as its owner."""
    parent, name = os.path.split(final)
    return os.path.join(parent, f".{name}{VERSION_MARKER}{owner_tag()}-{uuid.uuid4().hex[:12]}")


def _linked_version(final: str) -> str | None:
    """The version (`new_version`) the link `final` points to; None for anything else (a real
    directory, a link of the user's own, nothing)."""
    if not os.path.islink(final):
        return None
    parent, name = os.path.split(final)
    target = os.readlink(final)
    return os.path.join(parent, target) if target.startswith(f".{name}{VERSION_MARKER}") else None


def _publish(version: str, final: str) -> None:
    """Make `final` name the complete directory `version`, then remove the one it replaced;
    both under the folder's exclusive lock, which a reader that retried too often holds
    shared (`read_directory`)."""
    parent = os.path.dirname(final)
    link = temp_sibling(os.path.join(parent, "." + os.path.basename(final)))
    try:
        os.symlink(os.path.basename(version), link)  # relative: the parent may move
    except (OSError, NotImplementedError):
        with _publishing_lock(parent, exclusive=True):
            _swap_into_place(version, final)  # storage without symbolic links
        return
    with _publishing_lock(parent, exclusive=True):
        try:
            previous = _linked_version(final)
            if previous is None and os.path.isdir(final) and not os.path.islink(final):
                previous = _replace_real_directory(final, link)
            else:
                os.replace(link, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(link)
        fsync_directory(parent)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)


def _replace_real_directory(final: str, link: str) -> str:
    """Put `link` in the place of the real directory `final` (written before versions): a
    link cannot replace a directory in one rename, so it is first renamed aside."""
    aside = new_version(final)
    os.rename(final, aside)
    try:
        os.replace(link, final)
    except BaseException:
        os.rename(aside, final)
        raise
    return aside


def _swap_into_place(tmp: str, final: str) -> None:
    # Directory renames are atomic; an old model is moved aside first and removed only after
    # the new one is in place, so a crash leaves either the old or the new model, never a mix.
    old = None
    if os.path.lexists(final):
        old = f"{tmp}.old"
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_directory(os.path.dirname(final))
    if old is not None:
        if os.path.islink(old):
            os.remove(old)
        else:
            shutil.rmtree(old)


def _remove_abandoned_versions(final: str) -> None:
    """Remove the versions of `final` (and temporary links) that a writer on this host, now
    gone, left behind: killed after writing a version but before linking it, or before
    removing the version it replaced. The version `final` names is never touched."""
    parent, name = os.path.split(final)
    current = _linked_version(final)
    host = socket.gethostname()
    prefixes = (f".{name}{VERSION_MARKER}", f".{name}{TEMP_MARKER}")
    for entry in os.listdir(parent):
        prefix = next((p for p in prefixes if entry.startswith(p)), None)
        owner = None if prefix is None else _tag_owner(entry[len(prefix):])
        path = os.path.join(parent, entry)
        if owner is None or path == current or owner[0] != host or pid_alive(owner[1]):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
