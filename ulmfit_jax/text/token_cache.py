"""Fingerprinted, memory-mapped token cache: its format, its manifest, opening and building.

Tokenizing is slow, so it is done once per (corpus, tokenizer) pair and kept on disk:

- worker processes tokenize chunks of documents (`tokenize_pool`);
- the parent gives every distinct token string a *raw id* in order of first appearance, counts
  tokens, and appends the raw ids of each document to one binary file (`raw_ids.bin`, int32)
  with document offsets (`offsets.npy`, int64 `[n_docs + 1]`), so the corpus never lives in RAM
  as Python strings;
- model-vocab ids are made by a numpy lookup `raw id -> vocab id`, so a new `min_freq` or
  `max_vocab` never re-tokenizes; they are cached beside the raw ids, one file per vocab.

Layout of `<cache_root>/<key>/`, where `key` hashes the corpus and tokenizer fingerprints:

```
meta.json        format version, fingerprints, n_docs, n_tokens, manifest
raw_ids.bin      int32 [n_tokens]   raw ids, documents concatenated
offsets.npy      int64 [n_docs + 1] document d is raw_ids[offsets[d]:offsets[d + 1]]
raw_itos.json    list[str]          raw id -> token string
raw_counts.npy   int64 [n_raw]      occurrences of each raw id
labels.npy       int64 [n_docs]     only when the documents carry labels
                 ([n_docs, n_classes] multi-hot for multi-label documents)
vocab-<fp>.npy   int32 [n_tokens]   vocab ids for one vocab, added on demand
vocab-<fp>.sha256                   its sha256
```

A cache directory appears only complete: it is written into `<key>.tmp-<host>-<pid>-<rand>`
beside it, fsynced, then renamed into place (`atomic_io`). An interrupted build (exception,
Ctrl-C, killed process) leaves at most a temp directory, which the next build removes once its
process is gone (`stale_temps`). Running out of disk space raises `DiskFullError`.

Damage. `meta.json` holds a manifest (size and sha256 of every other file) and each
`vocab-<fp>.npy` has its sha256 beside it. How much of it is checked is `verify`:

- `"sizes"` (the default when opening): every file exists with its recorded size. Costs no
  reading, so opening a WikiText-103 cache stays instant. Catches missing and truncated
  files, and a garbled `meta.json` (which must parse).
- `"hashes"`: sizes and every file's sha256 as well, which reads the whole cache. Done once
  right after a build writes the cache, and whenever a caller asks (`TokenCache(path,
  verify="hashes")`, `build_token_cache(..., verify="hashes")`). Catches a garbled byte that
  keeps the size.

A cache found damaged is never used: `build_token_cache` logs it and rebuilds, `numericalize`
rewrites a damaged vocab file.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence, Sized
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from tqdm.auto import tqdm

from ulmfit_jax.atomic_io import atomic_file, atomic_write, fsync_directory, temp_sibling
from ulmfit_jax.errors import disk_full_is_clear
from ulmfit_jax.text.source_documents import corpus_fingerprint, labels_array, text_chunks
from ulmfit_jax.text.sources.core import sha256_file
from ulmfit_jax.text.stale_temps import remove_stale_temps
from ulmfit_jax.text.tokenize_pool import FingerprintedTokenizer, encoded_chunks
from ulmfit_jax.text.tokenized_corpus import TokenizedCorpus

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: meta.json holds a manifest of file sizes and checksums
Verify = Literal["sizes", "hashes"]

__all__ = ["CACHE_FORMAT_VERSION", "DamagedCacheError", "TokenCache", "TokenizedCorpus",
           "Verify", "build_token_cache", "cache_key"]


class _VocabLike(Protocol):
    @property
    def itos(self) -> Sequence[str]: ...  # read-only: a `Vocab`'s list[str] fits

    def numericalize(self, tokens: Sequence[str]) -> np.ndarray: ...


class DamagedCacheError(ValueError):
    """A cache file is missing, truncated or garbled (it no longer matches the manifest)."""


# ---------------------------------------------------------------- manifest


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


def _check_file(f: Path, size: int, digest: str, verify: Verify) -> None:
    """Raise `DamagedCacheError` unless `f` has `size` bytes (and hash `digest`: "hashes")."""
    if not f.is_file() or f.stat().st_size != size:
        raise DamagedCacheError(f"{f}: missing or not {size} bytes long")
    if verify == "hashes" and sha256_file(f) != digest:
        raise DamagedCacheError(f"{f}: checksum differs from the one recorded with it")


# ---------------------------------------------------------------- reading


class TokenCache:
    """A complete cache directory, opened read-only (arrays are memory-mapped).

    Opening checks the files against meta.json's manifest, by size or also by hash
    (`verify`, see the module docstring); a mismatch raises `DamagedCacheError`.
    """

    def __init__(self, path: str | os.PathLike, verify: Verify = "sizes") -> None:
        if verify not in ("sizes", "hashes"):
            raise ValueError(f"verify must be 'sizes' or 'hashes', got {verify!r}")
        self.path = Path(path)
        self.verify = verify
        self.meta = _read_meta(self.path / "meta.json")
        for name, (size, digest) in self.meta.get("files", {}).items():
            _check_file(self.path / name, size, digest, verify)
        try:
            self._load_arrays(int(self.meta["n_tokens"]))
        except ValueError as e:  # a garbled header or JSON that kept its size
            raise DamagedCacheError(f"{self.path}: unreadable file ({e})") from e

    def _load_arrays(self, n_tokens: int) -> None:
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

    def doc_tokens(self, i: int) -> list[str]:
        """Token strings of document `i` (for inspection and tests)."""
        raw = self.raw_ids[self.offsets[i]:self.offsets[i + 1]]
        return [self.raw_itos[j] for j in raw]

    def numericalize(self, vocab: _VocabLike, chunk_tokens: int = 1 << 24) -> TokenizedCorpus:
        """Corpus in `vocab` ids, int32 `[n_tokens]`, memory-mapped and cached per vocab.

        The mapping is one lookup table `raw id -> vocab id` built by `vocab.numericalize`
        (which sends unknown tokens to `xxunk`), applied in chunks of `chunk_tokens`. A vocab
        file is checked as the cache was opened (`verify`) and rewritten when damaged.
        """
        vocab_fp = hashlib.sha256(json.dumps(list(vocab.itos)).encode()).hexdigest()[:16]
        target = self.path / f"vocab-{vocab_fp}.npy"
        if not self._vocab_file_intact(target):
            lookup = np.asarray(vocab.numericalize(self.raw_itos), dtype=np.int32)
            if lookup.shape != (len(self.raw_itos),):
                raise ValueError(f"vocab.numericalize returned shape {lookup.shape} for "
                                 f"{len(self.raw_itos)} tokens")
            remove_stale_temps(self.path)  # a killed earlier write of a vocab file
            _write_mapped_ids(target, self.raw_ids, lookup, chunk_tokens)
        return TokenizedCorpus(np.load(target, mmap_mode="r"), self.offsets, self.labels)

    def _vocab_file_intact(self, target: Path) -> bool:
        """`target` and its checksum exist and match (else: rewrite it)."""
        check = _checksum_file(target)
        if not (target.exists() and check.exists()):
            return False
        try:
            _check_file(target, _ids_npy_size(self.num_tokens), check.read_text().strip(),
                        self.verify)
        except DamagedCacheError as e:
            logger.warning("%s: damaged (%s); rewriting it", target, e)
            return False
        return True


def _checksum_file(target: Path) -> Path:
    return target.with_suffix(".sha256")


def _ids_npy_header(n_tokens: int) -> dict[str, Any]:
    return {"descr": "<i4", "fortran_order": False, "shape": (n_tokens,)}


def _ids_npy_size(n_tokens: int) -> int:
    """Bytes of a vocab-id .npy file of `n_tokens` ids (its header, then int32 data)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, _ids_npy_header(n_tokens))
    return header.tell() + 4 * n_tokens


def _write_mapped_ids(target: Path, raw_ids: np.ndarray, lookup: np.ndarray,
                      chunk_tokens: int) -> None:
    """Writes `lookup[raw_ids]` to `target` (.npy) and its checksum, each atomically."""
    with disk_full_is_clear(f"the token cache file {target}"):
        # Written with write() rather than a memmap: a full disk is then an OSError, not SIGBUS.
        with atomic_file(target) as f:
            np.lib.format.write_array_header_1_0(f, _ids_npy_header(len(raw_ids)))
            for start in range(0, len(raw_ids), chunk_tokens):
                f.write(lookup[raw_ids[start:start + chunk_tokens]].astype("<i4").tobytes())
        atomic_write(_checksum_file(target), sha256_file(target))


# ---------------------------------------------------------------- building


def cache_key(corpus_fingerprint: str, tokenizer_fingerprint: str) -> str:
    """Directory name of the cache for one (corpus, tokenizer) pair."""
    blob = json.dumps([CACHE_FORMAT_VERSION, corpus_fingerprint, tokenizer_fingerprint])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def build_token_cache(source: Iterable[Any], tokenizer: FingerprintedTokenizer,
                      cache_root: str | os.PathLike, *, corpus_fp: str | None = None,
                      workers: int | None = None, chunk_size: int = 1000,
                      max_in_flight: int | None = None, progress: bool = True,
                      mp_context: str = "fork", verify: Verify = "sizes") -> TokenCache:
    """Tokenizes `source` once into `<cache_root>/<key>` and opens it; a hit does no work.

    source: re-iterable documents (see `source_documents.split_document`); `corpus_fp`
    defaults to `source.fingerprint()` or a content hash. workers: processes (default: CPU
    count, 0 = tokenize in this process). max_in_flight: chunks submitted but not yet consumed
    (default 2 * workers). verify: how a hit is checked ("sizes" or "hashes"); a fresh build
    is checked by hash. Crashes leave no partial cache (see module docstring).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cache_root = Path(cache_root)
    # A sources.DocStream carries class names; its `as_pairs()` view gives class indices.
    as_pairs = getattr(source, "as_pairs", None)
    source = as_pairs() if callable(as_pairs) else source
    corpus_fp = corpus_fingerprint(source) if corpus_fp is None else corpus_fp
    key = cache_key(corpus_fp, tokenizer.fingerprint())
    final = cache_root / key
    if final.exists():
        try:
            return TokenCache(final, verify)
        except (FileNotFoundError, DamagedCacheError) as e:
            logger.warning("token cache %s is damaged (%s); rebuilding it", final, e)
            _discard(final)
    cache_root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(cache_root)
    workers = (os.cpu_count() or 1) if workers is None else workers
    max_in_flight = max(1, 2 * workers if max_in_flight is None else max_in_flight)
    meta = {"format_version": CACHE_FORMAT_VERSION, "corpus_fingerprint": corpus_fp,
            "tokenizer_fingerprint": tokenizer.fingerprint()}
    tmp = Path(temp_sibling(final))
    try:
        with disk_full_is_clear(f"the token cache {final}"):
            tmp.mkdir()
            _build_into(tmp, source, tokenizer, meta, workers=workers, chunk_size=chunk_size,
                        max_in_flight=max_in_flight, progress=progress, mp_context=mp_context)
            _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenCache(final, verify="hashes")  # the one full check of what was just written


def _build_into(tmp: Path, source: Iterable[Any], tokenizer: FingerprintedTokenizer,
                meta: dict[str, Any], *, workers: int, chunk_size: int, max_in_flight: int,
                progress: bool, mp_context: str) -> None:
    """Every file of the layout but vocab files, into `tmp`, fsynced."""
    labels: list[Any] = []
    texts = text_chunks(source, chunk_size, labels)
    # `closing`: on Ctrl-C the workers are shut down now, not when the generator is collected
    # at exit, after concurrent.futures has closed the pool's queues ("Bad file descriptor").
    encoded = contextlib.closing(
        encoded_chunks(texts, tokenizer, workers, max_in_flight, mp_context))
    total = len(source) if isinstance(source, Sized) else None
    with (encoded as chunks, _RawWriter(tmp) as writer,
          tqdm(total=total, desc="tokenizing", unit="doc", disable=not progress) as bar):
        for n_docs, chunk in chunks:
            writer.add(*chunk)
            bar.update(n_docs)
        writer.finish(labels, meta)


class _RawWriter:
    """Parent-side state of a build: global raw vocab, counts, ids file, offsets, labels."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stoi: dict[str, int] = {}
        self.counts = np.zeros(0, dtype=np.int64)
        self.lengths: list[np.ndarray] = []
        self.n_tokens = 0
        # Appended chunk by chunk; the temp directory, not this file, is the atomic unit.
        self.ids_file = open(directory / "raw_ids.bin", "wb")  # noqa: SIM115 (closed in __exit__)

    def __enter__(self) -> _RawWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.ids_file.close()

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

    def finish(self, labels: list[Any], meta: dict[str, Any]) -> None:
        self.ids_file.flush()
        os.fsync(self.ids_file.fileno())
        self.ids_file.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        _save_npy(self.directory / "offsets.npy", offsets)
        _save_npy(self.directory / "raw_counts.npy", self.counts)
        atomic_write(self.directory / "raw_itos.json", json.dumps(list(self.stoi)))
        label_array = labels_array(labels)
        if label_array is not None:
            _save_npy(self.directory / "labels.npy", label_array)
        meta = dict(meta, n_docs=len(lengths), n_tokens=self.n_tokens, n_raw=len(self.stoi),
                    files=_manifest(self.directory))
        atomic_write(self.directory / "meta.json", json.dumps(meta, indent=1))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, array)


def _discard(directory: Path) -> None:
    """Move a damaged cache out of the way (atomically), then delete it."""
    aside = Path(temp_sibling(directory))
    os.rename(directory, aside)
    shutil.rmtree(aside, ignore_errors=True)


def _publish(tmp: Path, final: Path) -> None:
    """Renames the complete temp dir into place; losing a race to another builder is fine."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").exists():
            raise
    fsync_directory(final.parent)
