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
ProcessPoolExecutor with one chunk per worker). Ours is what the trainer runs:
`build_token_cache(texts, FastaiTokenizer(), <fresh folder>, workers=N)` (its worker pool,
chunks of 1,000 documents, the corpus hash and the cache files written and verified), timed to
the opened cache. Both outputs are hashed and compared (ours read back from the cache, after
the clock stops). The corpus is the embedded IMDb reviews (`common.imdb_texts`, train then
valid split); `--replicate K` repeats it K times (repeated documents favour our span memo, and
spaCy's own cache for fastai).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time

from common import imdb_texts

from ulmfit_jax.host_allocator import use_fast_allocator


def run_ours(texts: list[str], workers: int) -> tuple[list[list[str]], float]:
    """The trainer's token cache of `texts` with fastai's rules, in `workers` processes: the
    tokens (read back untimed) and the seconds to the opened cache."""
    import spacy  # noqa: F401  (imported once here and inherited by the forks, as fastai does)

    from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer
    from ulmfit_jax.text.token_cache import build_token_cache

    with tempfile.TemporaryDirectory(prefix="tokenize_bench_") as root:
        start = time.perf_counter()
        cache = build_token_cache(texts, FastaiTokenizer(), root, workers=workers,
                                  progress=False)
        seconds = time.perf_counter() - start
        return [cache.doc_tokens(i) for i in range(cache.num_docs)], seconds


def run_fastai(texts: list[str], workers: int) -> tuple[list[list[str]], float]:
    """fastai's default word tokenization of a list of texts, and its seconds."""
    import fastai.text.core  # (import time is not tokenizing time)

    start = time.perf_counter()
    docs = fastai.text.core.tokenize_texts(texts, n_workers=workers)
    return [list(doc) for doc in docs], time.perf_counter() - start


def measure_one(impl: str, workers: int, limit: int | None, replicate: int) -> dict:
    """Runs one configuration in this process and returns its numbers."""
    texts = imdb_texts(limit, ("train", "valid")) * replicate
    docs, seconds = (run_fastai if impl == "fastai" else run_ours)(texts, workers)
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
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
