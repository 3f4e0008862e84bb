"""Removing what interrupted writers left behind: temporary files and directories whose
owner (named in the temporary name, see `ulmfit_jax.atomic_io.temp_sibling`) ran on this host
and no longer runs. A live writer's temporary, or one from another host sharing the
directory, is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from ulmfit_jax.atomic_io import TEMP_MARKER, pid_alive, temp_owner


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Deletes the temporaries in `directory` left by dead processes of this host."""
    removed = []
    host = socket.gethostname()
    for entry in Path(directory).glob(f"*{TEMP_MARKER}*"):
        owner = temp_owner(entry.name)
        if owner is None or owner[0] != host or pid_alive(owner[1]):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed

