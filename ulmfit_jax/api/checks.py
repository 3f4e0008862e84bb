"""What a user hands the public wrappers, checked: ids, vocab, tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ulmfit_jax.errors import ModelFileError
from ulmfit_jax.text.tokenizer_spec import Tokenizer
from ulmfit_jax.text.vocab import Vocab


def as_ids(ids: Any) -> jax.Array:
    """ids as int32 `[batch, time]`; a `ValueError` for anything else."""
    ids = jnp.asarray(ids)
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"ids must be integer [batch, time], got {ids.dtype} {ids.shape}")
    return ids.astype(jnp.int32)


def check_ids_in_vocab(ids: jax.Array, vocab_size: int) -> None:
    """A `ValueError` unless every id has an embedding row."""
    # An out-of-range id would be silently clamped by the gather on accelerators.
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got range [{lo}, {hi}]")


def token_list(vocab: Sequence[str] | Vocab | None) -> list[str] | None:
    """A token list from a list of str or a `Vocab`."""
    return None if vocab is None else _tokens(vocab)


def _tokens(vocab: Sequence[str] | Vocab) -> list[str]:
    return list(vocab.itos) if isinstance(vocab, Vocab) else list(vocab)


def check_vocab(vocab: Sequence[str] | Vocab, vocab_size: int, source: str) -> list[str]:
    """The token list, which must have one token per embedding row."""
    tokens = _tokens(vocab)
    if len(tokens) != vocab_size:
        raise ValueError(f"{source}: vocab has {len(tokens)} tokens but the model has "
                         f"{vocab_size} embedding rows")
    return tokens


def require_tokenizer(tokenizer: Tokenizer | None, kind: str) -> Tokenizer:
    """The tokenizer raw text needs; a `ModelFileError` saying how to add one if missing."""
    if tokenizer is None:
        raise ModelFileError(
            f"this {kind} has no tokenizer (saved before format version 2, or built without "
            "one), so it cannot read raw text; add the tokenizer it was trained with and save "
            "it again: model.with_tokenizer(FastaiTokenizer()).save(directory, overwrite=True)")
    return tokenizer
