"""SentencePiece subword tokenizer: the alternative to fastai's word pipeline (as in MultiFiT).

Training streams the corpus through sentencepiece's `sentence_iterator` (nothing is written to a
text file first), and the model is cached in `cache_dir` under a hash of the corpus and the
settings, so a second `train` on the same corpus just loads it. fastai's special tokens get
fastai's ids: `xxunk` is sentencepiece's unk (id 0) and the others are user-defined symbols
(ids 1-8), so they are never split and `xxbos` is id 2, as in a fastai vocab.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from ulmfit_jax.atomic_io import atomic_write
from ulmfit_jax.text.detokenize import decode_spec_tokens
from ulmfit_jax.text.fastai_tokenizer import (
    BOS,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    apply_rules,
    fix_html,
)

# sentencepiece's default max_sentence_length (4192 bytes) silently drops about 2% of IMDb
# reviews from training; this keeps all but pathological documents.
MAX_SENTENCE_BYTES = 1 << 16
_RE_SURROGATE = re.compile("[\ud800-\udfff]")
_PRE_RULES: dict[str, Callable[[str], str]] = {
    "none": lambda text: text,
    "fix_html": fix_html,
    # All of fastai's pre-rules (xxup, xxmaj, lowercasing ...), without the xxbos it adds.
    "fastai": lambda text: apply_rules(text, add_bos=False),
}


def sanitize(text: str) -> str:
    """Lone surrogates (which sentencepiece cannot encode and raises on) -> U+FFFD."""
    return _RE_SURROGATE.sub("\ufffd", text) if _RE_SURROGATE.search(text) else text


class SentencePieceTokenizer:
    """Trainable, cached SentencePiece model with the tokenizer contract of `FastaiTokenizer`.

    `tokenize(texts)` gives pieces, `encode(texts)` ids (with fastai's special-token ids),
    `decode(ids)` text. `rules` picks the pre-processing: "fix_html" (default), "fastai" (all
    of fastai's rules) or "none". `add_bos` puts `xxbos` first in every document.
    """

    def __init__(
        self,
        vocab_size: int = 30000,
        model_type: str = "unigram",
        character_coverage: float = 0.99995,
        cache_dir: str | os.PathLike | None = None,
        rules: str = "fix_html",
        add_bos: bool = True,
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
        num_threads: int | None = None,
        input_sentence_size: int = 0,
    ):
        if model_type not in ("unigram", "bpe", "char", "word"):
            raise ValueError(f"SentencePieceTokenizer: unknown model_type {model_type!r}")
        if rules not in _PRE_RULES:
            raise ValueError(f"SentencePieceTokenizer: rules must be one of {list(_PRE_RULES)}")
        if not special_tokens or special_tokens[0] != UNK or BOS not in special_tokens:
            raise ValueError(f"SentencePieceTokenizer: special_tokens must start with {UNK!r}")
        self.vocab_size = vocab_size
        self.model_type = model_type
        self.character_coverage = character_coverage
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.rules = rules
        self.add_bos = add_bos
        self.special_tokens = list(special_tokens)
        self.num_threads = num_threads or os.cpu_count() or 1
        self.input_sentence_size = input_sentence_size
        self._model: bytes | None = None
        self._sp = None

    # ----------------------------------------------------------------- model life cycle
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sp"] = None  # rebuilt from the model bytes in each process
        return state

    @classmethod
    def from_model(cls, path: str | os.PathLike, **kwargs) -> SentencePieceTokenizer:
        """A tokenizer around an existing `.model` file (trained by `train`)."""
        tok = cls(**kwargs)
        tok._set_model(Path(path).read_bytes())
        return tok

    def _settings(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "model_type": self.model_type,
            "character_coverage": self.character_coverage,
            "rules": self.rules,
            "special_tokens": self.special_tokens,
            "input_sentence_size": self.input_sentence_size,
            "max_sentence_length": MAX_SENTENCE_BYTES,
            "sentencepiece": importlib.metadata.version("sentencepiece"),
        }

    def _corpus_key(self, texts: Iterable[str]) -> str:
        digest = hashlib.sha256(json.dumps(self._settings(), sort_keys=True).encode())
        for text in texts:
            data = sanitize(text).encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))  # no ambiguity between documents
            digest.update(data)
        return digest.hexdigest()[:32]

    def corpus_key(self, corpus_fingerprint: str) -> str:
        """A `train` cache key for the corpus named by its fingerprint and these settings
        (no pass over the corpus, unlike the default content hash)."""
        blob = json.dumps([corpus_fingerprint, self._settings()], sort_keys=True)
        return "fp-" + hashlib.sha256(blob.encode()).hexdigest()[:32]

    def train(self, texts: Iterable[str], corpus_key: str | None = None) -> Path | None:
        """Train on `texts` (re-iterable), or load the cached model for the same corpus+settings.

        The corpus is read twice (hash, then training) unless `corpus_key` names it; a one-shot
        iterator therefore needs `corpus_key`. Returns the cached model path (None without
        `cache_dir`).
        """
        if corpus_key is None:
            if iter(texts) is texts:
                raise TypeError(
                    "SentencePieceTokenizer.train: texts is a one-shot iterator; pass a list or a "
                    "re-iterable corpus, or name it with corpus_key="
                )
            corpus_key = self._corpus_key(texts)
        path = self.cache_dir / f"spm-{corpus_key}.model" if self.cache_dir else None
        if path is not None and path.exists():
            self._set_model(path.read_bytes())
            return path
        model = self._train_model(texts)
        self._set_model(model)
        if path is not None:
            atomic_write(path, model)  # concurrent trainers write the same bytes
        return path

    def _training_sentences(self, texts: Iterable[str]) -> Iterator[str]:
        rule = _PRE_RULES[self.rules]
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"SentencePieceTokenizer.train: got {type(text).__name__}, not str")
            yield rule(sanitize(text))

    def _train_model(self, texts: Iterable[str]) -> bytes:
        import sentencepiece as spm

        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=self._training_sentences(texts),
            model_writer=model,
            vocab_size=self.vocab_size,
            model_type=self.model_type,
            character_coverage=self.character_coverage,
            # fastai's ids: xxunk 0, then xxpad 1, xxbos 2, ... as user-defined symbols.
            unk_id=0,
            unk_piece=self.special_tokens[0],
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            user_defined_symbols=self.special_tokens[1:],
            max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=self.input_sentence_size,
            shuffle_input_sentence=True,
            # A soft limit, as fastai sets: small corpora get fewer pieces instead of an error.
            hard_vocab_limit=False,
            num_threads=self.num_threads,
            minloglevel=2,
        )
        return model.getvalue()

    def _set_model(self, model: bytes) -> None:
        self._model, self._sp = model, None
        self._processor()  # fail now on a bad model file, not later in a worker

    def _trained_model(self) -> bytes:
        if self._model is None:
            raise RuntimeError("SentencePieceTokenizer: no model; call train() or from_model()")
        return self._model

    def _processor(self):
        model = self._trained_model()
        if self._sp is None:
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_proto=model)
        return self._sp

    def save_model(self, path: str | os.PathLike) -> None:
        """Write the trained `.model` file."""
        atomic_write(path, self._trained_model())

    # ------------------------------------------------------------------ encode / decode
    @property
    def vocab_size_actual(self) -> int:
        """Number of pieces in the trained model (can be below `vocab_size`: soft limit)."""
        return self._processor().get_piece_size()

    @property
    def itos(self) -> list[str]:
        """All pieces in id order (a vocab for `ulmfit_jax.text.vocab.Vocab`)."""
        sp = self._processor()
        return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]

    def _prepare(self, texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("SentencePieceTokenizer takes a list of texts, got one str")
        rule = _PRE_RULES[self.rules]
        return [rule(sanitize(t)) for t in texts]

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of each text (fastai's special ids; `xxbos`=2 first when `add_bos`)."""
        sp = self._processor()
        ids = sp.encode(self._prepare(texts), out_type=int, num_threads=self.num_threads)
        if self.add_bos:
            bos = sp.piece_to_id(BOS)
            ids = [[bos, *doc] for doc in ids]
        return ids

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """Pieces of each text (`xxbos` first when `add_bos`)."""
        sp = self._processor()
        pieces = sp.encode(self._prepare(texts), out_type=str, num_threads=self.num_threads)
        return [[BOS, *doc] for doc in pieces] if self.add_bos else pieces

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Texts of id lists; a leading `xxbos` that `add_bos` put there is dropped."""
        sp = self._processor()
        bos = sp.piece_to_id(BOS)
        skip = [1 if self.add_bos and len(doc) and doc[0] == bos else 0 for doc in ids]
        return [sp.decode([int(i) for i in doc[k:]]) for doc, k in zip(ids, skip, strict=True)]

    def detokenize(self, pieces: Sequence[str]) -> str:
        """Readable text of pieces (e.g. generated ones): `xxbos`/`xxpad` dropped, fastai's
        special tokens undone, pieces joined with their `▁` as spaces."""
        words = decode_spec_tokens([p for p in pieces if p not in (BOS, PAD)])
        return "".join(words).replace("▁", " ").strip()

    def fingerprint(self) -> str:
        """Stable hash of the model and the settings that shape the output (a cache key)."""
        if self._model is None:
            raise RuntimeError("SentencePieceTokenizer: no model to fingerprint; train() first")
        digest = hashlib.sha256(self._model)
        extra = {"class": "SentencePieceTokenizer", "rules": self.rules, "add_bos": self.add_bos}
        digest.update(json.dumps(extra, sort_keys=True).encode())
        return digest.hexdigest()[:32]
