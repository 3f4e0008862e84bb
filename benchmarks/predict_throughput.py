"""Classifier inference on raw text, ulmfit_jax vs fastai, same machine, same run, same weights.

fastai: a `text_classifier_learner` (random weights, BatchNorm statistics randomised) on
`TextDataLoaders.from_df` over a few hundred embedded IMDb reviews (its tokenizer and vocab).
Ours: `TextClassifier.from_fastai` on that learner's saved weights and vocab (the conversion
users run), with `FastaiTokenizer` (fastai's tokens). Tokenization is included on both sides.

- single-text latency: `learn.predict(text)` vs `clf.predict_proba([text])`, one side's texts
  after the other's (`common.single_text_seconds`); every length bucket is compiled first (a
  warm server);
- batch throughput over `--n_docs` reviews: `learn.get_preds(dl=learn.dls.test_dl(texts))` vs
  `clf.predict_proba(texts)`, both with batch size 64.
Before each timing our tokenizer is fresh but for spans it memoised on 200 other reviews
(before 2026-12-06 the latency texts' own spans were memoised by the warm-up: latency figures
recorded before then favour ours; `latency_breakdown.py` splits it into parts).

jax gets one CPU device per core (`--cpu-devices`, 0 by default, as predict.py;
`ulmfit_jax.use_cpu_cores()` in a notebook; `--cpu-devices 1` is jax's default);
`predict_proba` splits its batches over them where that pays (`inference/local_devices.py`).

    taskset -c 0,1 python benchmarks/predict_throughput.py --size quickstart
    taskset -c 0,1 python benchmarks/predict_throughput.py --size wt103 --latency_texts 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    PREDICT_BATCH_SIZE,
    PREDICT_SIZES,
    add_cpu_devices_argument,
    classifier_from_learner,
    fastai_text_learner,
    imdb_texts,
    load_average,
    machine,
    single_text_seconds,
    use_cpu_devices,
)

from ulmfit_jax.host_allocator import use_fast_allocator


def latency(learn, clf, texts: list[str]) -> dict[str, list[float]]:
    """Seconds per single-text prediction, each side over all texts in turn."""
    calls = {"fastai": learn.predict, "ours": lambda t: clf.predict_proba([t])}
    with learn.no_bar(), learn.no_logging():
        return single_text_seconds(calls, texts)


def throughput(learn, clf, texts: list[str]) -> dict[str, float]:
    """Seconds for the whole batch prediction, once per side."""
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        dl = learn.dls.test_dl(texts, bs=PREDICT_BATCH_SIZE)
        theirs = learn.get_preds(dl=dl)[0].numpy()
    fastai_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = clf.predict_proba(texts, batch_size=PREDICT_BATCH_SIZE, progress=False)
    ours_s = time.perf_counter() - start
    # Same weights, same tokens: the same probabilities (fastai's batches may differ slightly
    # where fastai is batch-inconsistent; see README "Choices worth knowing").
    print(f"  max |ours - fastai| probability over the batch: {np.abs(ours - theirs).max():.2e}")
    return {"fastai": fastai_s, "ours": ours_s}


def run(size: str, n_docs: int, latency_texts: int) -> None:
    import jax
    import torch

    from ulmfit_jax.text import FastaiTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    texts = imdb_texts(n_docs + 400)
    timed, train, warm = texts[:n_docs], texts[n_docs:n_docs + 200], texts[n_docs + 200:]
    workdir = Path(tempfile.mkdtemp(prefix="predict_bench_"))
    learn = fastai_text_learner(size, train, workdir)
    learn.model.eval()
    clf = classifier_from_learner(learn, size, workdir)
    clf.predict_proba(warm + timed, batch_size=PREDICT_BATCH_SIZE)  # compile the batch shapes
    for text in timed[:latency_texts]:  # and the single-text shapes
        clf.predict_proba([text])
    with learn.no_bar(), learn.no_logging():
        learn.predict(warm[0])
    load_before = load_average()
    # Before each timing, a tokenizer that has seen only the warm-up reviews: none of the
    # timed texts' spans memoised (fastai's tokenizer memoises nothing).
    clf.tokenizer = FastaiTokenizer()
    clf.tokenizer.tokenize(warm)
    lat = latency(learn, clf, timed[:latency_texts])
    clf.tokenizer = FastaiTokenizer()
    clf.tokenizer.tokenize(warm)
    thr = throughput(learn, clf, timed)
    print(f"machine: {machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads),"
          f" jax {jax.__version__} ({jax.local_device_count()} devices)")
    print(f"size={size} {PREDICT_SIZES[size]} vocab={len(clf.vocab)} "
          f"batch={PREDICT_BATCH_SIZE} "
          f"latency over {latency_texts} texts, throughput over {n_docs} reviews (one run each)")
    print(f"{load_before} (before timing), {load_average()} (after)")
    for side in ("fastai", "ours"):
        print(f"{side:>7}  single text median {1e3 * np.median(lat[side]):7.1f} ms   "
              f"batch {n_docs / thr[side]:7.1f} reviews/s")
    ratios = np.divide(lat["fastai"], lat["ours"])
    print(f"  ratio  single text {np.median(ratios):.2f}x (median of per-text ratios)   "
          f"batch {thr['fastai'] / thr['ours']:.2f}x   (ours / fastai speed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(PREDICT_SIZES), default="quickstart")
    parser.add_argument("--n_docs", type=int, default=1000)
    parser.add_argument("--latency_texts", type=int, default=30)
    add_cpu_devices_argument(parser)
    parser.set_defaults(cpu_devices=0)  # predict.py's default: one device per core
    args = parser.parse_args()
    use_cpu_devices(args.cpu_devices, [PREDICT_BATCH_SIZE])
    run(args.size, args.n_docs, args.latency_texts)


if __name__ == "__main__":
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
