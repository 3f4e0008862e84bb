"""Parallel, streaming, fingerprinted, memory-mapped token cache.

Tokenizing is the slow part of a text pipeline (spaCy runs at a few thousand documents per
second per core), so it is done once per (corpus, tokenizer) pair and kept on disk:

- worker processes tokenize chunks of documents; the parent keeps only a bounded number of
  chunks in flight, so memory stays flat however big the corpus is;
- the parent gives every distinct token string a *raw id* in order of first appearance, counts
  tokens, and appends the raw ids of each document to one binary file (`raw_ids.bin`, int32)
  with document offsets (`offsets.npy`, int64 `[n_docs + 1]`), so the corpus never lives in RAM
  as Python strings;
- model-vocab ids are made by a numpy lookup `raw id -> vocab id`, so a new `min_freq` or
  `max_vocab` never re-tokenizes; they are cached beside the raw ids, one file per vocab.

Layout of `<cache_root>/<key>/`, where `key` hashes the corpus and tokenizer fingerprints:

```
meta.json        format version, fingerprints, n_docs, n_tokens
raw_ids.bin      int32 [n_tokens]   raw ids, documents concatenated
offsets.npy      int64 [n_docs + 1] document d is raw_ids[offsets[d]:offsets[d + 1]]
raw_itos.json    list[str]          raw id -> token string
raw_counts.npy   int64 [n_raw]      occurrences of each raw id
labels.npy       int64 [n_docs]     only when the documents carry labels
                 ([n_docs, n_classes] multi-hot for multi-label documents)
vocab-<fp>.npy   int32 [n_tokens]   vocab ids for one vocab, added on demand
```

A cache directory appears only complete: it is written into `<key>.tmp-<pid>-<rand>` beside
it, fsynced, then renamed into place. An interrupted build (exception, Ctrl-C, killed process)
leaves at most a temp directory, which the next build removes once its process is gone.
`meta.json` holds a manifest (size and sha256 of every other file) and each `vocab-<fp>.npy`
has its sha256 in `vocab-<fp>.sha256`; a cache whose files no longer match (truncated or
garbled on disk) is never used: `build_token_cache` logs it and rebuilds, `numericalize`
rewrites a damaged vocab file. Running out of disk space raises `DiskFullError`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from ulmfit_jax.errors import disk_full_is_clear
from ulmfit_jax.text.sources.core import sha256_file

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: meta.json holds a manifest of file sizes and checksums
_TMP_MARKER = ".tmp-"


class Tokenizer(Protocol):
    """What the cache needs from a tokenizer (`FastaiTokenizer`, `SentencePieceTokenizer`)."""

    def tokenize(self, texts: list[str]) -> list[list[str]]: ...

    def fingerprint(self) -> str: ...


class _VocabLike(Protocol):
    itos: Sequence[str]

    def numericalize(self, tokens: Sequence[str]) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
    """Documents as one flat id array plus offsets (all memory-mapped where they come from disk).

    ids: int32 `[n_tokens]`; offsets: int64 `[n_docs + 1]`; labels: int64 `[n_docs]`
    (multi-label: multi-hot `[n_docs, n_classes]`) or None.
    """

    ids: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be 1-D, start at 0 and have n_docs + 1 entries")
        if self.offsets[-1] != len(self.ids):
            raise ValueError(f"offsets end at {self.offsets[-1]} but ids has {len(self.ids)}")
        if self.labels is not None and len(self.labels) != self.num_docs:
            raise ValueError(f"{len(self.labels)} labels for {self.num_docs} documents")

    @classmethod
    def from_lists(cls, docs: Sequence[Sequence[int]],
                   labels: Sequence[int] | None = None) -> TokenizedCorpus:
        """Builds an in-memory corpus from a list of id lists (tests, small data)."""
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = [i for d in docs for i in d]
        ids = np.asarray(flat, dtype=np.int32).reshape(-1)
        lab = None if labels is None else np.asarray(labels, dtype=np.int64)
        return cls(ids, offsets, lab)

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per document, int64 `[n_docs]`."""
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        """Ids of document `i`, `[length]`."""
        return np.asarray(self.ids[self.offsets[i]:self.offsets[i + 1]])

    def reversed(self) -> TokenizedCorpus:
        """Each document's tokens reversed (the backward model's view), in memory."""
        ids = np.asarray(self.ids).copy()
        for d in range(self.num_docs):
            a, b = self.offsets[d], self.offsets[d + 1]
            ids[a:b] = ids[a:b][::-1]
        return TokenizedCorpus(ids, np.asarray(self.offsets), self.labels)


class DamagedCacheError(ValueError):
    """A cache file is missing, truncated or garbled (it no longer matches the manifest)."""


def _manifest(directory: Path) -> dict[str, list]:
    """`{file name: [size, sha256]}` of every file in `directory` but meta.json."""
    return {f.name: [f.stat().st_size, sha256_file(f)] for f in sorted(directory.iterdir())
            if f.name != "meta.json"}


def _read_meta(meta_file: Path) -> dict:
    try:
        meta = json.loads(meta_file.read_text("utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{meta_file}: not a token cache (no meta.json)") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedCacheError(f"{meta_file}: not readable JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format_version") != CACHE_FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise DamagedCacheError(f"{meta_file}: format_version {version}, this code reads "
                                f"{CACHE_FORMAT_VERSION}")
    return meta


def _verify(directory: Path, manifest: dict[str, list]) -> None:
    """Raise `DamagedCacheError` unless every manifest file has its recorded size and hash."""
    for name, (size, digest) in manifest.items():
        f = directory / name
        if not f.is_file() or f.stat().st_size != size:
            raise DamagedCacheError(f"{f}: missing or not {size} bytes long")
        if sha256_file(f) != digest:
            raise DamagedCacheError(f"{f}: checksum differs from meta.json's manifest")


class TokenCache:
    """A complete cache directory, opened read-only (arrays are memory-mapped).

    Opening checks every file against the manifest in meta.json (`DamagedCacheError`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.meta = _read_meta(self.path / "meta.json")
        _verify(self.path, self.meta.get("files", {}))
        n_tokens = int(self.meta["n_tokens"])
        # np.memmap refuses empty files; an empty corpus gets an empty in-memory array.
        self.raw_ids = (np.memmap(self.path / "raw_ids.bin", dtype="<i4", mode="r",
                                  shape=(n_tokens,)) if n_tokens else np.zeros(0, np.int32))
        self.offsets = np.load(self.path / "offsets.npy", mmap_mode="r")
        self.raw_counts = np.load(self.path / "raw_counts.npy")
        self.raw_itos: list[str] = json.loads((self.path / "raw_itos.json").read_text())
        labels_file = self.path / "labels.npy"
        self.labels = np.load(labels_file, mmap_mode="r") if labels_file.exists() else None

    @property
    def num_docs(self) -> int:
        return int(self.meta["n_docs"])

    @property
    def num_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    def counts(self) -> collections.Counter:
        """Token string -> occurrences, the input of `Vocab.from_counts`."""
        pairs = zip(self.raw_itos, self.raw_counts.tolist(), strict=True)
        return collections.Counter(dict(pairs))

    def raw_corpus(self) -> TokenizedCorpus:
        """The corpus in raw ids (first-appearance order), memory-mapped."""
        return TokenizedCorpus(self.raw_ids, self.offsets, self.labels)

    def doc_tokens(self, i: int) -> list[str]:
        """Token strings of document `i` (for inspection and tests)."""
        raw = self.raw_ids[self.offsets[i]:self.offsets[i + 1]]
        return [self.raw_itos[j] for j in raw]

    def numericalize(self, vocab: _VocabLike, chunk_tokens: int = 1 << 24) -> TokenizedCorpus:
        """Corpus in `vocab` ids, int32 `[n_tokens]`, memory-mapped and cached per vocab.

        The mapping is one lookup table `raw id -> vocab id` built by `vocab.numericalize`
        (which sends unknown tokens to `xxunk`), applied in chunks of `chunk_tokens`.
        """
        vocab_fp = hashlib.sha256(json.dumps(list(vocab.itos)).encode()).hexdigest()[:16]
        target = self.path / f"vocab-{vocab_fp}.npy"
        if not _intact(target):
            lookup = np.asarray(vocab.numericalize(self.raw_itos), dtype=np.int32)
            if lookup.shape != (len(self.raw_itos),):
                raise ValueError(f"vocab.numericalize returned shape {lookup.shape} for "
                                 f"{len(self.raw_itos)} tokens")
            _write_mapped_ids(target, self.raw_ids, lookup, chunk_tokens)
        return TokenizedCorpus(np.load(target, mmap_mode="r"), self.offsets, self.labels)


def _checksum_file(target: Path) -> Path:
    return target.with_suffix(".sha256")


def _intact(target: Path) -> bool:
    """`target` exists and matches the checksum written beside it (else: rewrite it)."""
    check = _checksum_file(target)
    if not (target.exists() and check.exists()):
        return False
    if sha256_file(target) == check.read_text().strip():
        return True
    logger.warning("%s: damaged (checksum differs); rewriting it", target)
    return False


def _write_mapped_ids(target: Path, raw_ids: np.ndarray, lookup: np.ndarray,
                      chunk_tokens: int) -> None:
    """Writes `lookup[raw_ids]` to `target` (.npy) and its checksum, each atomically."""
    with disk_full_is_clear(f"the token cache file {target}"):
        # Written with write() rather than a memmap: a full disk is then an OSError, not SIGBUS.
        header = {"descr": "<i4", "fortran_order": False, "shape": (len(raw_ids),)}
        with _atomic_file(target) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for start in range(0, len(raw_ids), chunk_tokens):
                f.write(lookup[raw_ids[start:start + chunk_tokens]].astype("<i4").tobytes())
        with _atomic_file(_checksum_file(target)) as f:
            f.write(sha256_file(target).encode())


@contextlib.contextmanager
def _atomic_file(target: Path) -> Iterator[Any]:
    """A binary file written to a temp name, fsynced and renamed to `target` when complete."""
    tmp = target.with_name(f"{target.name}{_TMP_MARKER}{_owner_tag()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_path(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def cache_key(corpus_fingerprint: str, tokenizer_fingerprint: str) -> str:
    """Directory name of the cache for one (corpus, tokenizer) pair."""
    blob = json.dumps([CACHE_FORMAT_VERSION, corpus_fingerprint, tokenizer_fingerprint])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def split_document(doc: Any) -> tuple[str, int | None]:
    """(text, label) of one source item: a str, a (text, label) pair, a dict or an object
    with `.text` / `.label`."""
    if isinstance(doc, str):
        return doc, None
    if isinstance(doc, dict):
        return doc["text"], doc.get("label")
    if hasattr(doc, "text"):
        return doc.text, getattr(doc, "label", None)
    if isinstance(doc, tuple | list) and len(doc) == 2 and isinstance(doc[0], str):
        return doc[0], doc[1]
    raise TypeError(f"cannot read a document from {type(doc).__name__}: expected str, "
                    "(text, label), {'text': ..., 'label': ...} or an object with .text")


def corpus_fingerprint(source: Iterable[Any]) -> str:
    """The source's own `fingerprint()`, else a hash of every text and label (one pass)."""
    fp = getattr(source, "fingerprint", None)
    if callable(fp):
        return str(fp())
    h = hashlib.sha256()
    for doc in source:
        text, label = split_document(doc)
        h.update(json.dumps([text, label]).encode())
    return "content-" + h.hexdigest()


# ---------------------------------------------------------------- worker side

_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _encode_chunk(tokenizer: Tokenizer, texts: list[str]
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Tokenizes a chunk into (local itos in first-appearance order, local ids, doc lengths).

    Local ids keep the pickled reply small and leave the parent O(distinct tokens) dict work.
    """
    docs = tokenizer.tokenize(texts)
    if len(docs) != len(texts):
        raise ValueError(f"tokenizer returned {len(docs)} documents for {len(texts)} texts")
    local: dict[str, int] = {}
    flat = [local.setdefault(tok, len(local)) for doc in docs for tok in doc]
    lengths = np.array([len(doc) for doc in docs], dtype=np.int64)
    return list(local), np.asarray(flat, dtype=np.int32), lengths


def _encode_chunk_in_worker(texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    assert _WORKER_TOKENIZER is not None, "worker started without a tokenizer"
    return _encode_chunk(_WORKER_TOKENIZER, texts)


# ---------------------------------------------------------------- parent side

class _RawWriter:
    """Parent-side state of a build: global raw vocab, counts, ids file, offsets, labels."""

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        self.stoi: dict[str, int] = {}
        self.counts = np.zeros(0, dtype=np.int64)
        self.ids_file = open(tmp_dir / "raw_ids.bin", "wb")  # noqa: SIM115 (closed in finish)
        self.lengths: list[np.ndarray] = []
        self.n_tokens = 0

    def add(self, local_itos: list[str], local_ids: np.ndarray, lengths: np.ndarray) -> None:
        to_global = np.array([self.stoi.setdefault(t, len(self.stoi)) for t in local_itos],
                             dtype=np.int32)
        global_ids = to_global[local_ids] if len(local_ids) else local_ids
        if len(self.stoi) > len(self.counts):
            self.counts = np.concatenate(
                [self.counts, np.zeros(len(self.stoi) - len(self.counts), np.int64)])
        self.counts += np.bincount(global_ids, minlength=len(self.counts))
        self.ids_file.write(global_ids.astype("<i4").tobytes())
        self.lengths.append(lengths)
        self.n_tokens += int(local_ids.size)

    def finish(self, labels: list[int | None], meta: dict[str, Any]) -> None:
        self.ids_file.flush()
        os.fsync(self.ids_file.fileno())
        self.ids_file.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        _save_npy(self.tmp_dir / "offsets.npy", offsets)
        _save_npy(self.tmp_dir / "raw_counts.npy", self.counts)
        _write_text(self.tmp_dir / "raw_itos.json", json.dumps(list(self.stoi)))
        label_array = _labels_array(labels)
        if label_array is not None:
            _save_npy(self.tmp_dir / "labels.npy", label_array)
        meta = dict(meta, n_docs=len(lengths), n_tokens=self.n_tokens, n_raw=len(self.stoi),
                    files=_manifest(self.tmp_dir))
        _write_text(self.tmp_dir / "meta.json", json.dumps(meta, indent=1))
        _fsync_path(self.tmp_dir)

    def close(self) -> None:
        self.ids_file.close()


def _labels_array(labels: list[int | None]) -> np.ndarray | None:
    """int64 `[n_docs]` labels, None when no document has one; mixed presence is an error."""
    missing = [i for i, lab in enumerate(labels) if lab is None]
    if len(missing) == len(labels):
        return None
    if missing:
        raise ValueError(f"documents {missing[:5]} have no label while others do")
    if all(isinstance(lab, tuple | list) for lab in labels):
        # Multi-label: multi-hot rows, int64 [n_docs, n_classes].
        if len({len(lab) for lab in labels}) != 1:
            raise ValueError("multi-hot labels must all have the same length")
        return np.array(labels, dtype=np.int64)
    try:
        return np.array([int(lab) for lab in labels], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"labels must be integer class indices or multi-hot tuples, got "
                         f"{e}") from e


def _chunks(source: Iterable[Any], chunk_size: int, labels: list[int | None]
            ) -> Iterator[list[str]]:
    """Lists of `chunk_size` texts; labels are appended to `labels` as a side effect."""
    chunk: list[str] = []
    for doc in source:
        text, label = split_document(doc)
        if not isinstance(text, str):
            raise TypeError(f"document {len(labels)}: text is {type(text).__name__}, not str")
        labels.append(label)
        chunk.append(text)
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encoded_chunks(chunks: Iterator[list[str]], tokenizer: Tokenizer, workers: int,
                    max_in_flight: int, mp_context: str
                    ) -> Iterator[tuple[int, tuple[list[str], np.ndarray, np.ndarray]]]:
    """(n_docs, encoded chunk) in corpus order, tokenized by `workers` processes.

    `Pool.imap` would read the whole input ahead in its feeder thread; submitting one chunk
    at a time and waiting whenever `max_in_flight` chunks are pending bounds memory.
    """
    if workers == 0:
        for texts in chunks:
            yield len(texts), _encode_chunk(tokenizer, texts)
        return
    ctx = multiprocessing.get_context(mp_context)
    # ProcessPoolExecutor (not Pool) because a worker killed by the OOM killer then raises
    # BrokenProcessPool instead of hanging the build forever.
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(tokenizer,))
    try:
        pending: collections.deque = collections.deque()
        for texts in chunks:
            pending.append((len(texts), pool.submit(_encode_chunk_in_worker, texts)))
            if len(pending) >= max_in_flight:
                n, future = pending.popleft()
                yield n, future.result()
        while pending:
            n, future = pending.popleft()
            yield n, future.result()
    finally:
        # On error or Ctrl-C, drop queued chunks; at most `workers` running ones finish.
        pool.shutdown(wait=True, cancel_futures=True)


def build_token_cache(source: Iterable[Any], tokenizer: Tokenizer,
                      cache_root: str | os.PathLike, *, corpus_fp: str | None = None,
                      workers: int | None = None, chunk_size: int = 1000,
                      max_in_flight: int | None = None, progress: bool = True,
                      mp_context: str = "fork") -> TokenCache:
    """Tokenizes `source` once into `<cache_root>/<key>` and opens it; a hit does no work.

    source: re-iterable documents (see `split_document`); `corpus_fp` defaults to
    `source.fingerprint()` or a content hash. workers: processes (default: CPU count, 0 =
    tokenize in this process). max_in_flight: chunks submitted but not yet consumed
    (default 2 * workers). Crashes leave no partial cache (see module docstring).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cache_root = Path(cache_root)
    # A sources.DocStream carries class names; its `as_pairs()` view gives class indices.
    source = source.as_pairs() if callable(getattr(source, "as_pairs", None)) else source
    corpus_fp = corpus_fingerprint(source) if corpus_fp is None else corpus_fp
    key = cache_key(corpus_fp, tokenizer.fingerprint())
    final = cache_root / key
    if final.exists():
        try:
            return TokenCache(final)
        except (FileNotFoundError, DamagedCacheError) as e:
            logger.warning("token cache %s is damaged (%s); rebuilding it", final, e)
            _discard(final)
    cache_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(cache_root)
    workers = (os.cpu_count() or 1) if workers is None else workers
    max_in_flight = max(1, 2 * workers if max_in_flight is None else max_in_flight)
    meta = {"format_version": CACHE_FORMAT_VERSION, "corpus_fingerprint": corpus_fp,
            "tokenizer_fingerprint": tokenizer.fingerprint()}
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}{_TMP_MARKER}{_owner_tag()}-", dir=cache_root))
    try:
        with disk_full_is_clear(f"the token cache {final}"):
            _build_into(tmp, source, tokenizer, meta, workers=workers, chunk_size=chunk_size,
                        max_in_flight=max_in_flight, progress=progress, mp_context=mp_context)
            _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenCache(final)


def _discard(directory: Path) -> None:
    """Move a damaged cache out of the way (atomically), then delete it."""
    aside = directory.with_name(f"{directory.name}{_TMP_MARKER}{_owner_tag()}-damaged")
    os.rename(directory, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _build_into(tmp: Path, source: Iterable[Any], tokenizer: Tokenizer, meta: dict[str, Any],
                *, workers: int, chunk_size: int, max_in_flight: int, progress: bool,
                mp_context: str) -> None:
    writer = _RawWriter(tmp)
    labels: list[int | None] = []
    try:
        chunks = _chunks(source, chunk_size, labels)
        encoded = _encoded_chunks(chunks, tokenizer, workers, max_in_flight, mp_context)
        total = len(source) if hasattr(source, "__len__") else None
        with tqdm(total=total, desc="tokenizing", unit="doc", disable=not progress) as bar:
            for n_docs, chunk in encoded:
                writer.add(*chunk)
                bar.update(n_docs)
        writer.finish(labels, meta)
    finally:
        writer.close()


def _publish(tmp: Path, final: Path) -> None:
    """Renames the complete temp dir into place; losing a race to another builder is fine."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").exists():
            raise
    _fsync_path(final.parent)


def _owner_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def remove_stale_temp_dirs(cache_root: str | os.PathLike) -> list[Path]:
    """Deletes temp dirs left by builds on this host whose process no longer runs."""
    removed = []
    host = socket.gethostname()
    for entry in Path(cache_root).glob(f"*{_TMP_MARKER}*"):
        tag = entry.name.split(_TMP_MARKER, 1)[1]
        owner_host, _, rest = tag.rpartition("-")[0].rpartition("-")
        if owner_host != host or not rest.isdigit() or _pid_alive(int(rest)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
