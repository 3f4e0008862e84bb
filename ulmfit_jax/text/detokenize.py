"""Tokens back to readable text: fastai's special tokens undone, then English spacing.

`decode_spec_tokens` follows fastai's `decode_spec_tokens` (fastai/text/learner.py): `xxmaj w`
-> `W`, `xxup w` -> `W` in capitals, `xxrep n c` -> c repeated n times, `xxwrep n w` -> w
repeated n times. Two fastai slips are not reproduced: fastai never resets its state after an
`xxrep`/`xxwrep` group (every later token is repeated too) and drops the token after an
`xxrep`/`xxwrep` whose count is not a number; here the group ends after its word and a bad
count leaves the tokens as they are.

`detokenize` then joins the words with spaces as fastai does, drops `xxbos`/`xxpad` (as
`LMLearner.predict`), turns fastai's `▁` (a space inside a token) back into a space, and removes
the spaces spaCy's split put before punctuation and contractions (`great !` -> `great!`,
`do n't` -> `don't`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ulmfit_jax.text.fastai_tokenizer import BOS, PAD, TK_MAJ, TK_REP, TK_UP, TK_WREP

_DROPPED = frozenset({BOS, PAD})
# A space before closing punctuation or a clitic, or after an opening bracket, is spaCy's.
_RE_BEFORE = re.compile(r" (?=[.,!?;:%)\]}…]|n't\b|'(?:s|re|ve|ll|m|d)\b)", re.IGNORECASE)
_RE_AFTER = re.compile(r"(?<=[(\[{$]) ")
_RE_NEWLINE = re.compile(r" *\n *")


class TokenGroup(NamedTuple):
    """Tokens `[start, stop)` of a sequence and the words they stand for once fastai's special
    tokens are undone (none for a marker alone, e.g. a trailing `xxmaj`)."""

    start: int
    stop: int
    words: tuple[str, ...]


def group_spec_tokens(tokens: Sequence[str]) -> list[TokenGroup]:
    """Consecutive groups covering `tokens`: `xxmaj w`, `xxup w`, `xxrep n c` and `xxwrep n w`
    are one group each, every other token a group of its own (see module doc)."""
    groups: list[TokenGroup] = []
    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < n else None
        if tok in (TK_MAJ, TK_UP) and nxt is not None:
            word = nxt[:1].upper() + nxt[1:].lower() if tok == TK_MAJ else nxt.upper()
            groups.append(TokenGroup(i, i + 2, (word,)))
        elif tok in (TK_REP, TK_WREP) and i + 2 < n and tokens[i + 1].isdigit():
            count, word = int(tokens[i + 1]), tokens[i + 2]
            words = (word * count,) if tok == TK_REP else (word,) * count
            groups.append(TokenGroup(i, i + 3, words))
        else:
            words = () if tok in (TK_MAJ, TK_UP, TK_REP, TK_WREP) else (tok,)
            groups.append(TokenGroup(i, i + 1, words))
        i = groups[-1].stop
    return groups


def decode_spec_tokens(tokens: Sequence[str]) -> list[str]:
    """fastai's special-token rules undone: `["xxmaj", "the"]` -> `["The"]` (see module doc)."""
    return [word for group in group_spec_tokens(tokens) for word in group.words]


def join_words(words: Iterable[str]) -> str:
    """Words joined by spaces, without spaCy's spaces around punctuation and contractions."""
    text = " ".join(w.replace("▁", " ") for w in words)
    text = _RE_AFTER.sub("", _RE_BEFORE.sub("", text))
    return _RE_NEWLINE.sub("\n", text).strip()


def detokenize(tokens: Sequence[str]) -> str:
    """Readable text of fastai tokens: special tokens undone, `xxbos`/`xxpad` dropped."""
    return join_words(decode_spec_tokens([t for t in tokens if t not in _DROPPED]))
