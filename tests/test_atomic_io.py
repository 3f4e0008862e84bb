"""atomic_io: a file appears complete or not at all, its earlier version intact until then."""

import os

import pytest

from ulmfit_jax import atomic_io


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
