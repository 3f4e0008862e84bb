"""Scores of tokens -> scores of the words of the original text (word importance's host side).

A word is a whitespace-separated piece of the text as the user wrote it (`"great!"`,
`"<br"`), so a picture of the scores shows that text. The tokens are first grouped as fastai's
special tokens dictate (`xxmaj w`, `xxup w`, `xxrep n c`, `xxwrep n w`: a marker's score goes
to the word it marks; `detokenize.group_spec_tokens`). Each group's characters are then aligned
with the text's, ignoring case and whitespace: they are usually the same characters in the same
order, and where the tokenizer's rules changed a few (`fix_html`: `&amp;` -> `&`, `...` ->
`…`) difflib's matching blocks align the rest. A group's score is shared among the words its
matched characters fall in, by their count; a group without any (`xxbos`, the newline a
`<br />` becomes, a whitespace token) gives its score to no word.

SentencePiece pieces align the same way (`▁` is a space), so both tokenizers a model can
carry are handled. No jax here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ulmfit_jax.text.detokenize import TokenGroup, group_spec_tokens

_RE_WORD = re.compile(r"\S+")


class WordScores(NamedTuple):
    """Words of a text, their `(start, end)` character spans in it and a score each."""

    words: list[str]
    spans: list[tuple[int, int]]
    scores: np.ndarray  # float64 [n_words]


def text_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The whitespace-separated words of `text` and their character spans."""
    matches = list(_RE_WORD.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


def word_scores(text: str, tokens: Sequence[str], token_scores: np.ndarray) -> WordScores:
    """Each word of `text` gets the scores of the tokens it was read as: `tokens` are what the
    model's tokenizer made of `text`, `token_scores` one number per token `[n_tokens]`."""
    token_scores = np.asarray(token_scores, dtype=np.float64)
    if len(token_scores) != len(tokens):
        raise ValueError(f"{len(token_scores)} scores for {len(tokens)} tokens")
    words, spans = text_words(text)
    groups = _marked_groups(group_spec_tokens(tokens))
    group_scores = np.array([token_scores[g.start:g.stop].sum() for g in groups])
    surfaces = [" ".join(g.words).replace("▁", " ") for g in groups]
    pairs, counts = _aligned_pairs(surfaces, words)
    matched = np.bincount(pairs[:, 0], weights=counts, minlength=len(groups))
    scores = np.zeros(len(words))
    share = group_scores[pairs[:, 0]] * counts / np.maximum(matched[pairs[:, 0]], 1)
    np.add.at(scores, pairs[:, 1], share)
    return WordScores(words, spans, scores)


def _marked_groups(groups: list[TokenGroup]) -> list[TokenGroup]:
    """Groups with a blank word (a SentencePiece `▁` after an `xxmaj`) merged into the next
    group, so the marker's score reaches the word it marks."""
    out: list[TokenGroup] = []
    carry: int | None = None
    for group in groups:
        start = group.start if carry is None else carry
        carry = None
        if group.words and not "".join(group.words).replace("▁", "").strip() \
                and group.stop - group.start > 1:
            carry = start
            continue
        out.append(TokenGroup(start, group.stop, group.words))
    if carry is not None:
        out.append(TokenGroup(carry, groups[-1].stop, ()))
    return out


def _characters(pieces: Sequence[str]) -> tuple[str, np.ndarray]:
    """The lowercased non-space characters of `pieces` as one string, and the index of the
    piece each comes from."""
    chars: list[str] = []
    owners: list[int] = []
    for k, piece in enumerate(pieces):
        kept = [c for c in piece.lower() if not c.isspace()]
        chars += kept
        owners += [k] * len(kept)
    return "".join(chars), np.asarray(owners, dtype=np.int64)


def _aligned_pairs(surfaces: Sequence[str], words: Sequence[str]) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """(group, word) index pairs `[n, 2]` and how many characters each pair shares `[n]`."""
    group_chars, group_of = _characters(surfaces)
    word_chars, word_of = _characters(words)
    if group_chars == word_chars:  # the common case: nothing but case and spacing changed
        g, w = group_of, word_of
    else:
        matcher = difflib.SequenceMatcher(None, group_chars, word_chars, autojunk=False)
        blocks = matcher.get_matching_blocks()
        g = np.concatenate([group_of[b.a:b.a + b.size] for b in blocks] + [group_of[:0]])
        w = np.concatenate([word_of[b.b:b.b + b.size] for b in blocks] + [word_of[:0]])
    pairs, counts = np.unique(np.stack([g, w], axis=1), axis=0, return_counts=True)
    return pairs.reshape(-1, 2), counts.astype(np.float64)
