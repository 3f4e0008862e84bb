"""Reading and writing fastai vocab pickles (`itos_*.pkl`) without trusting them.

A fastai vocab file is a pickled list of strings. Full `pickle.load` runs whatever code the
file names, so a downloaded vocab is read with an unpickler that refuses every global: the
builtin opcodes for lists, strings, tuples, dicts and numbers still work, nothing can be
imported or called. The result must then be a list of strings.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence

from ulmfit_jax.atomic_io import atomic_write
from ulmfit_jax.errors import ModelFileError

# fastai writes its pickles with protocol 2 (`save_pickle`); 2 also reads back on every Python 3.
ITOS_PICKLE_PROTOCOL = 2


class UnsafePickleError(ModelFileError, pickle.UnpicklingError):
    """The pickle names a global (a class or function); it was refused, nothing ran."""


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickler whose `find_class` refuses every global, so `__reduce__` payloads can't run."""

    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):  # noqa: D102 (pickle hook)
        raise UnsafePickleError(
            f"{self._source}: refusing to load global {module}.{name}; a vocab pickle may "
            "only hold a list of strings"
        )


def loads_itos(data: bytes, source: str = "<bytes>") -> list[str]:
    """Unpickle `data` as a vocab (list of str) without importing or calling anything."""
    try:
        obj = _NoGlobalsUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or corrupt pickles raise many different types
        raise ModelFileError(
            f"{source}: not a readable vocab pickle ({type(e).__name__}: {e})") from e
    return _check_itos(obj, source)


def load_itos(path: str | os.PathLike) -> list[str]:
    """Read a fastai `itos` pickle: a list of strings, token id -> token.

    Raises `UnsafePickleError` for a pickle that names any class or function (without running
    it) and `ValueError` naming the file for anything that is not a list of strings.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return loads_itos(data, source=path)


def save_itos(itos: Sequence[str], path: str | os.PathLike) -> None:
    """Write `itos` as fastai does: a plain pickled list of str, protocol 2."""
    path = os.fspath(path)
    itos = _check_itos(list(itos), path)
    atomic_write(path, pickle.dumps(itos, protocol=ITOS_PICKLE_PROTOCOL))


def _check_itos(obj: object, source: str) -> list[str]:
    if not isinstance(obj, list):
        kind = type(obj).__name__
        raise ModelFileError(f"{source}: a vocab pickle must hold a list of str, got {kind}")
    for i, tok in enumerate(obj):
        if not isinstance(tok, str):
            raise ModelFileError(
                f"{source}: vocab entry {i} is {type(tok).__name__} ({tok!r}), expected str"
            )
    if not obj:
        raise ModelFileError(f"{source}: the vocab is empty")
    return obj
