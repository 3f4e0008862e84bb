"""atomic_io: a file appears complete or not at all, its earlier version intact until then."""

import errno
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ulmfit_jax import atomic_io

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_replaces_and_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic_io.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    path = tmp_path / "sub" / "f.json"
    atomic_io.atomic_write(path, "old")
    atomic_io.atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert len(synced) == 4  # file, then directory, per write
    assert os.listdir(path.parent) == ["f.json"]


def test_an_interrupted_atomic_file_leaves_the_earlier_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_io.atomic_write(path, b"earlier")
    with pytest.raises(KeyboardInterrupt), atomic_io.atomic_file(path) as f:
        f.write(b"half of the new")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"earlier" and os.listdir(tmp_path) == ["f.bin"]


# ------------------------------------------------------------------------- directories

FILES = ("config.json", "vocab.json", "state/a", "state/b")


def write_model(directory, tag: str) -> None:
    """A stand-in for a saved model: several files and a folder, all holding `tag`."""
    for name in FILES:
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(tag)


def read_model(directory) -> str:
    """The tag of a complete stand-in model; fails on a missing, partial or mixed one."""
    tags = set()
    for name in FILES:
        with open(os.path.join(directory, name)) as f:
            tags.add(f.read())
    assert len(tags) == 1, tags
    return tags.pop()


def save(final, tag: str) -> None:
    with atomic_io.atomic_directory(final, overwrite=True) as tmp:
        write_model(tmp, tag)


def entries(parent) -> list[str]:
    return sorted(os.listdir(parent))


def assert_only_the_current_version(final) -> None:
    """`final` is a link to one version, and nothing else is left beside them."""
    assert os.path.islink(final)
    assert entries(os.path.dirname(final)) == sorted([os.path.basename(final),
                                                      os.readlink(final)])


def test_a_saved_directory_is_a_link_to_a_complete_fsynced_version(tmp_path, monkeypatch):
    final = tmp_path / "models" / "clf"
    save(final, "old")
    events = []
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace
    opened = {}

    def open_(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        opened[fd] = os.path.relpath(path, tmp_path / "models")
        return fd

    monkeypatch.setattr(atomic_io.os, "open", open_)
    monkeypatch.setattr(atomic_io.os, "fsync", lambda fd: events.append(("fsync", opened[fd]))
                        or real_fsync(fd))
    monkeypatch.setattr(atomic_io.os, "replace",
                        lambda a, b: events.append(("replace", os.path.basename(b)))
                        or real_replace(a, b))
    save(final, "new")
    assert read_model(final) == "new"
    assert_only_the_current_version(final)
    version = os.readlink(final)
    linked = events.index(("replace", "clf"))
    synced_before = {path for kind, path in events[:linked] if kind == "fsync"}
    every = {version, f"{version}/state", *(f"{version}/{name}" for name in FILES)}
    assert every | {"."} <= synced_before  # each file and folder, and the models folder
    assert ("fsync", ".") in events[linked:]  # the new link, made durable


def test_an_existing_directory_is_kept_unless_overwrite(tmp_path):
    save(tmp_path / "m", "old")
    with pytest.raises(FileExistsError), atomic_io.atomic_directory(tmp_path / "m") as tmp:
        write_model(tmp, "new")
    assert read_model(tmp_path / "m") == "old"
    assert_only_the_current_version(tmp_path / "m")


def _fail(*args, **kwargs):
    raise OSError(errno.EIO, "injected failure")


# Each step of a save, failing: writing, fsyncing, making the link, renaming it into place,
# making it durable, removing the replaced version.
STEPS = ["write", "fsync", "symlink", "replace", "fsync_after", "rmtree"]


def _inject(monkeypatch, step: str) -> None:
    if step == "fsync":
        monkeypatch.setattr(atomic_io, "fsync_tree", _fail)
    elif step == "symlink":
        monkeypatch.setattr(atomic_io.os, "symlink", _fail)
    elif step == "replace":
        monkeypatch.setattr(atomic_io.os, "replace", _fail)
    elif step == "fsync_after":
        real_publish = atomic_io._publish

        def publish_then_fail(version, final):
            real_publish(version, final)
            raise OSError(errno.EIO, "injected failure")
        monkeypatch.setattr(atomic_io, "_publish", publish_then_fail)
    elif step == "rmtree":
        monkeypatch.setattr(atomic_io.shutil, "rmtree", _fail)


@pytest.mark.parametrize("step", STEPS)
def test_a_save_failing_at_any_step_leaves_a_complete_model_and_the_next_save_works(
        tmp_path, monkeypatch, step):
    final = tmp_path / "clf"
    save(final, "old")
    _inject(monkeypatch, step)
    try:
        with atomic_io.atomic_directory(final, overwrite=True) as tmp:
            write_model(tmp, "new")
            if step == "write":
                raise OSError(errno.EIO, "injected failure")
    except OSError as e:
        assert "injected failure" in str(e)
    except BaseException:
        raise
    # symlink failing falls back to two renames; rmtree failing leaves only a leftover.
    assert read_model(final) in ({"old"} if step in ("write", "fsync", "replace")
                                 else {"old", "new"})
    monkeypatch.undo()
    save(final, "next")
    assert read_model(final) == "next"
    if step not in ("symlink", "rmtree"):  # (a real directory; a leftover of a live writer)
        save(final, "again")
        assert_only_the_current_version(final)


# A child that saves a stand-in model twice, and is killed (os._exit: no cleanup, as kill -9)
# when the second save reaches `step`.
CRASHING_CHILD = textwrap.dedent("""
    import os, shutil, sys
    from ulmfit_jax import atomic_io
    final, step = sys.argv[1], sys.argv[2]

    def save(tag):
        with atomic_io.atomic_directory(final, overwrite=True) as tmp:
            for name in ("config.json", "vocab.json", "state/a", "state/b"):
                path = os.path.join(tmp, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(tag)
                if step == "write" and name == "vocab.json" and tag == "new":
                    os._exit(9)

    save("old")
    die = lambda *args, **kwargs: os._exit(9)
    if step == "symlink":
        os.symlink = die
    elif step == "replace":
        os.replace = die
    elif step == "fsync_after":
        real_replace = os.replace
        os.replace = lambda a, b: (real_replace(a, b), os._exit(9))
    elif step == "rmtree":
        shutil.rmtree = die
    save("new")
""")


@pytest.mark.parametrize("step", ["write", "symlink", "replace", "fsync_after", "rmtree"])
def test_a_writer_killed_at_any_step_leaves_a_complete_model_and_the_next_save_cleans_up(
        tmp_path, step):
    final = tmp_path / "clf"
    proc = subprocess.run([sys.executable, "-c", CRASHING_CHILD, str(final), step],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    expected = {"old"} if step in ("write", "symlink", "replace") else {"new"}
    assert read_model(final) in expected
    save(final, "next")  # removes what the dead writer left
    assert read_model(final) == "next"
    assert_only_the_current_version(final)


def test_a_reader_outpaced_by_saves_holds_the_writer_off_for_its_last_read(tmp_path):
    """A save lands during each optimistic read; the next read holds the folder's lock, and a
    save started during it links its version only after the read has ended."""
    final = tmp_path / "clf"
    save(final, "0")
    tags, writers, published = [], [], threading.Event()

    def read(path) -> str:
        tags.append(read_model(path))
        if len(tags) <= 3:
            save(final, f"during {len(tags)}")
        else:
            writers.append(threading.Thread(
                target=lambda: (save(final, "after"), published.set())))
            writers[0].start()
            assert not published.wait(1.0)  # held off while this read runs
            assert read_model(path) == tags[-1]
        return tags[-1]

    assert atomic_io.read_directory(final, read, attempts=3) == "during 3"
    writers[0].join(timeout=30)
    assert published.is_set() and read_model(final) == "after"
    assert tags == ["0", "during 1", "during 2", "during 3"]
    assert_only_the_current_version(final)


def test_a_reader_that_cannot_lock_the_folder_says_so_rather_than_mix(tmp_path, monkeypatch):
    final = tmp_path / "clf"
    save(final, "0")
    monkeypatch.setattr(atomic_io, "fcntl", None)
    count = iter(range(1, 100))

    def read(path) -> str:
        tag = read_model(path)
        save(final, str(next(count)))
        return tag

    with pytest.raises(OSError, match=r"clf was replaced during each of 3 reads.*no flock"):
        atomic_io.read_directory(final, read, attempts=2)


def test_readers_in_a_loop_never_miss_or_mix_a_model_during_saves(tmp_path):
    final = tmp_path / "clf"
    save(final, "0")
    stop, seen, errors = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            try:
                seen.add(atomic_io.read_directory(final, read_model))
            except Exception as e:  # noqa: BLE001 (any failure is the finding)
                errors.append(repr(e))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 60):
            save(final, str(i))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert len(seen) > 1  # the readers did run during the saves
    assert_only_the_current_version(final)


def test_storage_without_links_falls_back_to_renames(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_io.os, "symlink", _fail)
    save(tmp_path / "clf", "old")
    save(tmp_path / "clf", "new")
    assert read_model(tmp_path / "clf") == "new"
    assert not os.path.islink(tmp_path / "clf") and entries(tmp_path) == ["clf"]


def test_a_real_directory_from_before_versions_is_replaced_by_a_link(tmp_path, monkeypatch):
    final = tmp_path / "clf"
    write_model(final, "old")  # as ulmfit_jax wrote it before versions
    monkeypatch.setattr(atomic_io.os, "replace", _fail)
    with pytest.raises(OSError, match="injected"):
        save(final, "new")
    assert read_model(final) == "old" and entries(tmp_path) == ["clf"]  # put back
    monkeypatch.undo()
    save(final, "new")
    assert read_model(final) == "new"
    assert_only_the_current_version(final)


def test_overwriting_a_link_of_the_users_own_leaves_its_target(tmp_path):
    mine = tmp_path / "elsewhere"
    write_model(mine, "mine")
    os.symlink(mine, tmp_path / "clf")
    save(tmp_path / "clf", "new")
    assert read_model(tmp_path / "clf") == "new" and read_model(mine) == "mine"
