"""Token <-> id table with fastai v2's semantics (`fastai.text.data.make_vocab`, `Numericalize`).

fastai keeps the `max_vocab` most common tokens (ties in first-seen order, as `Counter.most_common`
orders them), drops those seen fewer than `min_freq` times, puts its special tokens first
(`xxunk 0, xxpad 1, xxbos 2, ...`), cuts to `max_vocab` and pads with `xxfake` to a multiple of 8
(1 to 8 of them). An unknown token, and `xxfake` itself, maps to id 0 (`xxunk`), as fastai's
`defaultdict(int)` does. Saved as a JSON file, one token per line.

A fastai itos pickle is read by the conversion layer, which owns fastai's file formats and the
restricted unpickler: `Vocab(ulmfit_jax.convert.fastai_files.read_vocab(path))`.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ulmfit_jax.atomic_io import atomic_write
from ulmfit_jax.errors import ModelFileError
from ulmfit_jax.text.fastai_tokenizer import SPECIAL_TOKENS

FAKE_TOKEN = "xxfake"
UNK_ID = 0
_FORMAT = "ulmfit_jax.text.vocab"
_FORMAT_VERSION = 1


def make_itos(
    counts: Mapping[str, int],
    min_freq: int = 3,
    max_vocab: int = 60000,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> list[str]:
    """fastai's `make_vocab`: the id -> token list for token counts (see the module docstring)."""
    kept = [tok for tok, n in collections.Counter(counts).most_common(max_vocab) if n >= min_freq]
    special = list(special_tokens)
    specials = set(special)
    itos = special + [tok for tok in kept if tok not in specials]
    itos = itos[:max_vocab]
    return itos + [FAKE_TOKEN] * (8 - len(itos) % 8)


class Vocab:
    """An id -> token list (`itos`) and its token -> id map (`stoi`)."""

    def __init__(self, itos: Sequence[str]):
        for i, tok in enumerate(itos):
            if not isinstance(tok, str):
                raise TypeError(f"Vocab: entry {i} is {type(tok).__name__}, not str")
        self.itos: list[str] = list(itos)
        # fastai builds o2i with a dict comprehension: a repeated token keeps its last id.
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos) if t != FAKE_TOKEN}

    @classmethod
    def from_counts(
        cls,
        counts: Mapping[str, int],
        min_freq: int = 3,
        max_vocab: int = 60000,
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
    ) -> Vocab:
        """The vocab fastai builds from these counts (a `Counter`; ties keep insertion order)."""
        return cls(make_itos(counts, min_freq, max_vocab, special_tokens))

    @classmethod
    def from_tokens(cls, docs: Iterable[Sequence[str]], **kwargs) -> Vocab:
        """Counts the tokens of tokenized documents (in order), then `from_counts`."""
        counts = collections.Counter(itertools.chain.from_iterable(docs))
        return cls.from_counts(counts, **kwargs)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self.itos)} tokens: {self.itos[:10]}...)"

    def numericalize(self, tokens: Sequence[str]) -> np.ndarray:
        """Ids of `tokens`, `[time]` int32; unknown tokens -> 0 (`xxunk`)."""
        ids = map(self.stoi.get, tokens, itertools.repeat(UNK_ID))
        return np.fromiter(ids, dtype=np.int32, count=len(tokens))

    def ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ids `[time]`; raises IndexError naming an id outside the vocab."""
        itos, size = self.itos, len(self.itos)
        out = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if not 0 <= i < size:
                raise IndexError(f"Vocab.ids_to_tokens: id {i} outside [0, {size})")
            out.append(itos[i])
        return out

    def fingerprint(self) -> str:
        """Stable hash of the token list (a cache key)."""
        return hashlib.sha256(json.dumps(self.itos).encode()).hexdigest()[:32]

    def save(self, path: str | Path) -> None:
        """Write a JSON file (atomically): format tag and `itos`, one token per line (escapes
        keep it valid)."""
        doc = {"format": _FORMAT, "version": _FORMAT_VERSION, "itos": self.itos}
        atomic_write(path, json.dumps(doc, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a file written by `save`; bad files raise ModelFileError (a ValueError) naming
        file, line or key."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text("utf-8"))
        except UnicodeDecodeError as err:
            raise ModelFileError(f"{path}: not UTF-8 text ({err.reason})") from err
        except json.JSONDecodeError as err:
            raise ModelFileError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from err
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ModelFileError(f"{path}: key 'format' is not {_FORMAT!r}")
        if doc.get("version") != _FORMAT_VERSION:
            raise ModelFileError(f"{path}: key 'version' is {doc.get('version')!r}, expected 1")
        itos = doc.get("itos")
        if not isinstance(itos, list):
            raise ModelFileError(f"{path}: key 'itos' must be a list of strings")
        for i, tok in enumerate(itos):
            if not isinstance(tok, str):
                raise ModelFileError(
                    f"{path}: key 'itos' entry {i} is {type(tok).__name__}, not str")
        return cls(itos)
