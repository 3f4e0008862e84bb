"""The trainer's data: source -> tokens (cached) -> vocab -> LM and classifier corpora.

Tokenization runs once per (corpus, tokenizer) into the token cache (`<workdir>/cache` or
`config.data.cache_dir`); the vocab is written to `<workdir>/vocab.json` and reused by every
later stage and by a resumed run. With `config.data.tokenizer="sentencepiece"` a SentencePiece
model is first trained on the training texts (streamed; cached in the token cache root under
the corpus fingerprint) and stored with the run in `<workdir>/tokenizer/` (`tokenizer.json`,
`tokenizer.model`), which later stages and resumed runs read back; every saved model carries it.

Pretraining corpora (`wikitext`, `text_files`) keep their own validation split for the LM
(WikiText's `wiki.valid.tokens`) and their vocab is counted on the training split only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import ml_collections
import numpy as np

from ulmfit_jax.errors import DataError, disk_full_is_clear
from ulmfit_jax.text import sources
from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer
from ulmfit_jax.text.sentencepiece_tokenizer import SentencePieceTokenizer
from ulmfit_jax.text.token_cache import TokenCache, build_token_cache
from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus
from ulmfit_jax.text.tokenizer_spec import Tokenizer, has_tokenizer, load_tokenizer, save_tokenizer
from ulmfit_jax.text.vocab import Vocab
from ulmfit_jax.trainer import distributed

logger = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Everything the stages read: vocab, class names and the four corpora (vocab ids)."""

    vocab: Vocab
    tokenizer: Tokenizer
    class_names: list[str]
    clf_train: TokenizedCorpus
    clf_valid: TokenizedCorpus
    lm_train: TokenizedCorpus
    lm_valid: TokenizedCorpus
    multi_label: bool = False  # labels are multi-hot [docs, n_classes]


class _Subset:
    """`limit` (text, label index) pairs of a split chosen at random (seeded), in split order.

    Re-iterable and fingerprinted like the split itself; `limit` 0 keeps every document.
    Random rather than the first N, since a source may be sorted by label.
    """

    def __init__(self, split: sources.DocStream, limit: int, seed: int = 0):
        self.pairs, n = split.as_pairs(), len(split)
        self.keep = None
        if 0 < limit < n:
            chosen = np.random.default_rng([seed, 29]).choice(n, limit, replace=False)
            self.keep = np.zeros(n, bool)
            self.keep[chosen] = True
        self._fp = hashlib.sha256(f"{split.fingerprint()}:{limit}:{seed}".encode()).hexdigest()

    def __iter__(self) -> Iterator:
        if self.keep is None:
            return iter(self.pairs)
        return itertools.compress(self.pairs, self.keep)

    def __len__(self) -> int:
        return len(self.pairs) if self.keep is None else int(self.keep.sum())

    def fingerprint(self) -> str:
        return self._fp

    def texts(self) -> Iterator[str]:
        """The texts only (what a SentencePiece model is trained on)."""
        return (text for text, _ in self)


class _Texts:
    """Re-iterable texts of a `_Subset` (SentencePiece training reads the corpus in passes)."""

    def __init__(self, subset: _Subset):
        self.subset = subset

    def __iter__(self) -> Iterator[str]:
        return self.subset.texts()


def source_name(data: ml_collections.ConfigDict, lm: bool = False) -> str:
    """How messages name the data: `config.data.source` (`lm`: the LM's source) and its
    path."""
    name = (data.lm_source or data.source) if lm else data.source
    reads_path = "path" in sources.source_entry(name).required
    path = data.path if reads_path and data.path else ""
    return f"data source {name!r}" + (f" ({path})" if path else "")


def load_dataset(data: ml_collections.ConfigDict, name: str | None = None) -> sources.TextDataset:
    """The `TextDataset` named by `data.source` (or `name`), through `sources.SOURCES`."""
    return sources.load_source(data, name)


def classifier_splits(data: ml_collections.ConfigDict,
                      dataset: sources.TextDataset) -> tuple[_Subset, _Subset]:
    """The classifier's training and validation documents a run reads: a seeded random
    `data.max_train_docs` / `data.max_valid_docs` of each split (every one when 0)."""
    return _Subset(dataset.train, data.max_train_docs), _Subset(dataset.valid, data.max_valid_docs)


def lm_corpus_splits(dataset: sources.TextDataset, lm_dataset: sources.TextDataset | None,
                     train: _Subset, valid: _Subset) -> list[_Subset]:
    """The document streams whose concatenation, in this order, is the LM corpus: the separate
    LM corpus's splits (`data.lm_source`), else the classifier's `train` and `valid`
    documents, then the unlabelled split if there is one. The first two stay in place even
    when empty: a pretraining corpus's are the LM's training and validation documents (an
    empty one is refused by name in `validate_data`)."""
    if lm_dataset is not None:
        splits = [_Subset(lm_dataset.train, 0), _Subset(lm_dataset.valid, 0)]
        unsup = lm_dataset.unsup
    else:
        splits, unsup = [train, valid], dataset.unsup
    return splits + ([_Subset(unsup, 0)] if unsup is not None else [])


def make_tokenizer(data: ml_collections.ConfigDict, train: _Subset, workdir: Path,
                   cache_root: Path) -> Tokenizer:
    """fastai's tokenizer, or the run's SentencePiece model: read back from
    `<workdir>/tokenizer/`, else trained on `train`'s texts and stored there."""
    if data.tokenizer == "fastai":
        return FastaiTokenizer()
    stored = workdir / TOKENIZER_DIR
    if has_tokenizer(stored):
        return load_tokenizer(stored)
    if len(train) == 0:  # (sentencepiece's own error is an INTERNAL check failure)
        raise DataError(f"{source_name(data, lm=bool(data.lm_source))}, train split: no "
                        "documents to train the SentencePiece tokenizer on")
    tokenizer = SentencePieceTokenizer(vocab_size=data.sp_vocab_size,
                                       model_type=data.sp_model_type, cache_dir=cache_root)
    with disk_full_is_clear(f"the SentencePiece model in {cache_root}"):
        tokenizer.train(_Texts(train), corpus_key=tokenizer.corpus_key(train.fingerprint()))
    tmp = stored.with_name(f"{TOKENIZER_DIR}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with disk_full_is_clear(f"the tokenizer {stored}"):
        save_tokenizer(tokenizer, tmp)
        tmp.replace(stored)  # atomic: a killed run never leaves half a tokenizer
    return tokenizer


def _cache(split: _Subset, tokenizer: Tokenizer, root: Path, workers: int) -> TokenCache:
    processes = None if workers < 0 else workers  # -1: one process per CPU; 0: in-process
    # A multi-process run has started jax (threads) by now, and forking a threaded process
    # can deadlock the child: its workers start from a clean server process instead.
    mp_context = "forkserver" if distributed.is_multiprocess() else "fork"
    return build_token_cache(split, tokenizer, root, workers=processes, progress=False,
                             mp_context=mp_context)


def concat_corpora(corpora: list[TokenizedCorpus]) -> TokenizedCorpus:
    """Documents of all `corpora` in order, as one in-memory corpus without labels."""
    ids = np.concatenate([np.asarray(c.ids) for c in corpora]).astype(np.int32)
    lengths = np.concatenate([c.lengths for c in corpora])
    return TokenizedCorpus(ids, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


def select_docs(corpus: TokenizedCorpus, docs: np.ndarray) -> TokenizedCorpus:
    """The documents `docs` (indices, in that order) of `corpus`, in memory."""
    pieces = [corpus.doc(int(i)) for i in docs]
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    ids = np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)
    labels = None if corpus.labels is None else np.asarray(corpus.labels)[docs]
    return TokenizedCorpus(ids, np.concatenate([[0], np.cumsum(lengths)]), labels)


def split_lm_corpus(
    corpus: TokenizedCorpus, valid_fraction: float, seed: int
) -> tuple[TokenizedCorpus, TokenizedCorpus]:
    """A seeded random `valid_fraction` of the documents for LM validation, the rest to train."""
    order = np.random.default_rng([seed, 17]).permutation(corpus.num_docs)
    n_valid = max(1, int(round(valid_fraction * corpus.num_docs)))
    train, valid = np.sort(order[n_valid:]), np.sort(order[:n_valid])
    return select_docs(corpus, train), select_docs(corpus, valid)


def lm_budget(num_docs: int, max_lm_docs: int, seed: int) -> np.ndarray:
    """Indices, in corpus order, of the LM training documents a run trains on: a random
    `max_lm_docs` of them (`data.max_lm_docs`), or all when it is 0 or not smaller."""
    if not 0 < max_lm_docs < num_docs:
        return np.arange(num_docs)
    chosen = np.random.default_rng([seed, 31]).choice(num_docs, max_lm_docs, replace=False)
    return np.sort(chosen)


def _vocab(path: Path, caches: list[TokenCache], model: ml_collections.ConfigDict) -> Vocab:
    """Load `<workdir>/vocab.json`, or count tokens over `caches` and write it."""
    if path.exists():
        return Vocab.load(path)
    counts = caches[0].counts()
    for cache in caches[1:]:
        counts.update(cache.counts())
    vocab = Vocab.from_counts(counts, min_freq=model.min_freq, max_vocab=model.max_vocab)
    with disk_full_is_clear(f"the vocab {path}"):
        vocab.save(path)  # atomic: a killed run never leaves half a vocab
    return vocab


def prepare_data(config: ml_collections.ConfigDict, workdir: str | Path) -> PreparedData:
    """Tokenize (cached), build or reload the vocab, make LM and classifier corpora."""
    workdir = Path(workdir)
    data = config.data
    root = Path(data.cache_dir) if data.cache_dir else workdir / "cache"
    dataset = load_dataset(data)
    train_docs, valid_docs = classifier_splits(data, dataset)
    # A separate LM corpus (e.g. movie_reviews_lm: every embedded text, deduplicated).
    lm_dataset = load_dataset(data, data.lm_source) if data.lm_source else None
    # SentencePiece learns its pieces from the LM's training texts.
    tokenizer = make_tokenizer(data, _Subset(lm_dataset.train, 0) if lm_dataset else train_docs,
                               workdir, root)
    train = _cache(train_docs, tokenizer, root, data.workers)
    valid = _cache(valid_docs, tokenizer, root, data.workers)
    opened = {id(train_docs): train, id(valid_docs): valid}
    lm_caches = [opened.get(id(s)) or _cache(s, tokenizer, root, data.workers)
                 for s in lm_corpus_splits(dataset, lm_dataset, train_docs, valid_docs)]
    pretraining = sources.source_entry(data.lm_source or data.source).pretraining
    vocab = _vocab(workdir / "vocab.json", lm_caches[:1] if pretraining else lm_caches,
                   config.model)
    if pretraining:  # the corpus's own validation split (WikiText's wiki.valid.tokens)
        lm_train, lm_valid = (c.numericalize(vocab) for c in lm_caches[:2])
    else:
        lm_all = concat_corpora([c.numericalize(vocab) for c in lm_caches])
        lm_train, lm_valid = split_lm_corpus(lm_all, data.lm_valid_fraction, config.seed)
    chosen = lm_budget(lm_train.num_docs, data.max_lm_docs, config.seed)
    if len(chosen) < lm_train.num_docs:  # (copying the whole corpus would be wasted work)
        lm_train = select_docs(lm_train, chosen)
    logger.info(
        "data: %d/%d classifier docs, LM %d tokens train / %d valid, vocab %d",
        train.num_docs, valid.num_docs, len(lm_train.ids), len(lm_valid.ids), len(vocab),
    )
    return PreparedData(
        vocab=vocab,
        tokenizer=tokenizer,
        class_names=list(dataset.labels),
        multi_label=dataset.multi_label,
        clf_train=train.numericalize(vocab),
        clf_valid=valid.numericalize(vocab),
        lm_train=lm_train,
        lm_valid=lm_valid,
    )
