"""A tokenizer as a JSON spec in a model directory, and back (what a saved model reads text with).

`tokenizer.json` holds `{"format", "version", "type", ...options}`:
- `"type": "fastai"`: `FastaiTokenizer`'s options (lang, special_tokens, add_bos, add_eos) and
  the rules version the model was trained with;
- `"type": "sentencepiece"`: `SentencePieceTokenizer`'s options (rules, add_bos,
  special_tokens); the model file itself is copied beside it as `tokenizer.model`.

Text layer: no jax, so `ulmfit_jax.serving` can read a directory with numpy and the
tokenizer's own dependencies only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ulmfit_jax.errors import ModelFileError
from ulmfit_jax.text.detokenize import detokenize
from ulmfit_jax.text.fastai_tokenizer import RULES_VERSION, FastaiTokenizer
from ulmfit_jax.text.sentencepiece_tokenizer import SentencePieceTokenizer

SPEC_FILE, SP_MODEL_FILE = "tokenizer.json", "tokenizer.model"
_FORMAT, _VERSION = "ulmfit_jax.tokenizer", 1
Tokenizer = FastaiTokenizer | SentencePieceTokenizer
"""A tokenizer a model can carry: one of the package's two, which `tokenizer.json` can name.
(The token cache takes any `tokenize_pool.FingerprintedTokenizer`.)"""
logger = logging.getLogger(__name__)


def tokens_to_text(tokenizer: Tokenizer, tokens: Sequence[str]) -> str:
    """Readable text of `tokenizer`'s tokens (fastai's words or SentencePiece's pieces)."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        return tokenizer.detokenize(tokens)  # pieces, not space-separated words
    return detokenize(tokens)


def tokenizer_spec(tokenizer: Tokenizer) -> dict[str, Any]:
    """The JSON-able options of `tokenizer` (without the SentencePiece model bytes)."""
    head = {"format": _FORMAT, "version": _VERSION}
    if isinstance(tokenizer, FastaiTokenizer):
        return {**head, "type": "fastai", "rules": RULES_VERSION, "lang": tokenizer.lang,
                "special_tokens": list(tokenizer.special_tokens),
                "add_bos": tokenizer.add_bos, "add_eos": tokenizer.add_eos}
    if isinstance(tokenizer, SentencePieceTokenizer):
        return {**head, "type": "sentencepiece", "rules": tokenizer.rules,
                "add_bos": tokenizer.add_bos, "special_tokens": list(tokenizer.special_tokens)}
    raise TypeError(f"cannot save a tokenizer of type {type(tokenizer).__name__}: expected "
                    "FastaiTokenizer or SentencePieceTokenizer")


def save_tokenizer(tokenizer: Tokenizer, directory: str | os.PathLike) -> None:
    """Write `tokenizer.json` (and `tokenizer.model` for SentencePiece) into `directory`."""
    directory = Path(directory)
    spec = tokenizer_spec(tokenizer)
    if isinstance(tokenizer, SentencePieceTokenizer):
        tokenizer.save_model(directory / SP_MODEL_FILE)
    text = json.dumps(spec, ensure_ascii=False, indent=1) + "\n"
    (directory / SPEC_FILE).write_text(text, "utf-8")


def has_tokenizer(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds a tokenizer spec."""
    return (Path(directory) / SPEC_FILE).is_file()


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer `save_tokenizer` wrote; a bad spec raises ValueError naming file and key."""
    path = Path(directory) / SPEC_FILE
    try:
        spec = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(spec, dict) or spec.get("format") != _FORMAT:
        raise ModelFileError(f"{path}: key 'format' is not {_FORMAT!r}")
    if spec.get("version") != _VERSION:
        raise ModelFileError(
            f"{path}: key 'version' is {spec.get('version')!r}, expected {_VERSION}")
    try:
        if spec.get("type") == "fastai":
            return _fastai(spec, path)
        if spec.get("type") == "sentencepiece":
            return SentencePieceTokenizer.from_model(
                Path(directory) / SP_MODEL_FILE, rules=spec["rules"], add_bos=spec["add_bos"],
                special_tokens=spec["special_tokens"])
    except KeyError as err:
        raise ModelFileError(f"{path}: missing key {err.args[0]!r}") from None
    raise ModelFileError(f"{path}: key 'type' is {spec.get('type')!r}, expected 'fastai' or "
                     "'sentencepiece'")


def _fastai(spec: dict, path: Path) -> FastaiTokenizer:
    if spec["rules"] != RULES_VERSION:
        # The rules may have changed since training: tokens can differ slightly.
        logger.warning("%s: trained with tokenizer rules %s, running %s", path, spec["rules"],
                       RULES_VERSION)
    return FastaiTokenizer(lang=spec["lang"], special_tokens=spec["special_tokens"],
                           add_bos=spec["add_bos"], add_eos=spec["add_eos"])
