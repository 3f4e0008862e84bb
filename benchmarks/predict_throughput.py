"""Classifier inference on raw text, ulmfit_jax vs fastai, same machine, same run, same weights.

fastai: a `text_classifier_learner` (random weights, BatchNorm statistics randomised) on
`TextDataLoaders.from_df` over a few hundred embedded IMDb reviews (its tokenizer and vocab).
Ours: `TextClassifier.from_fastai` on that learner's saved weights and vocab (the conversion
users run), with `FastaiTokenizer` (fastai's tokens). Tokenization is included on both sides.

- single-text latency: `learn.predict(text)` vs `clf.predict_proba([text])`, the sides
  alternating text by text; every length bucket is compiled first (a warm server);
- batch throughput over `--n_docs` reviews: `learn.get_preds(dl=learn.dls.test_dl(texts))` vs
  `clf.predict_proba(texts)`, both with batch size 64; our tokenizer is fresh for the timed run
  except for spans it memoised during warm-up on other reviews.

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
from common import imdb_texts, load_average, machine

SIZES = {  # classifier bptt / max_len: the quickstart config's, and fastai's defaults
    "quickstart": dict(emb_sz=128, n_hid=256, n_layers=2, seq_len=80, max_len=160),
    "wt103": dict(emb_sz=400, n_hid=1152, n_layers=3, seq_len=72, max_len=72 * 20),
}
BATCH_SIZE = 64


def fastai_learner(size: str, train_texts: list[str], workdir: Path):
    """A fastai classifier learner at `size` with its own tokenizer and vocab."""
    import pandas as pd
    import torch
    from fastai.text.all import AWD_LSTM, TextDataLoaders, text_classifier_learner

    s = SIZES[size]
    df = pd.DataFrame({"text": train_texts, "label": ["neg", "pos"] * (len(train_texts) // 2)})
    dls = TextDataLoaders.from_df(df, path=workdir, text_col="text", label_col="label",
                                  valid_pct=0.1, seed=0, bs=BATCH_SIZE, seq_len=s["seq_len"],
                                  num_workers=0)
    torch.manual_seed(0)
    config = dict(emb_sz=s["emb_sz"], n_hid=s["n_hid"], n_layers=s["n_layers"])
    learn = text_classifier_learner(dls, AWD_LSTM, config=config, pretrained=False,
                                    drop_mult=0.5, seq_len=s["seq_len"], max_len=s["max_len"])
    with torch.no_grad():
        for block in learn.model[1].layers:
            block[0].running_mean.normal_(0.0, 0.5)
            block[0].running_var.uniform_(0.5, 2.0)
    return learn


def ours_from(learn, size: str, workdir: Path):
    """Our classifier on the learner's weights (fastai file + itos pickle)."""
    import pickle

    from ulmfit_jax import TextClassifier

    weights = learn.save("bench")
    itos = workdir / "itos.pkl"
    itos.write_bytes(pickle.dumps(list(learn.dls.vocab[0])))
    s = SIZES[size]
    return TextClassifier.from_fastai(weights, itos, bptt=s["seq_len"], max_len=s["max_len"],
                                      class_names=list(learn.dls.vocab[1]))


def latency(learn, clf, texts: list[str]) -> dict[str, list[float]]:
    """Seconds per single-text prediction, the sides alternating."""
    seconds: dict[str, list[float]] = {"fastai": [], "ours": []}
    calls = {"fastai": lambda t: learn.predict(t), "ours": lambda t: clf.predict_proba([t])}
    with learn.no_bar(), learn.no_logging():
        for text in texts:
            for side, call in calls.items():
                start = time.perf_counter()
                call(text)
                seconds[side].append(time.perf_counter() - start)
    return seconds


def throughput(learn, clf, texts: list[str]) -> dict[str, float]:
    """Seconds for the whole batch prediction, once per side."""
    start = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        theirs = learn.get_preds(dl=learn.dls.test_dl(texts, bs=BATCH_SIZE))[0].numpy()
    fastai_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = clf.predict_proba(texts, batch_size=BATCH_SIZE, progress=False)
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
    learn = fastai_learner(size, train, workdir)
    learn.model.eval()
    clf = ours_from(learn, size, workdir)
    clf.predict_proba(warm + timed, batch_size=BATCH_SIZE)  # compile the batch shapes
    for text in timed[:latency_texts]:  # and the single-text shapes
        clf.predict_proba([text])
    with learn.no_bar(), learn.no_logging():
        learn.predict(warm[0])
    load_before = load_average()
    lat = latency(learn, clf, timed[:latency_texts])
    clf.tokenizer = FastaiTokenizer()  # no memoised spans of the timed reviews
    clf.tokenizer.tokenize(warm)
    thr = throughput(learn, clf, timed)
    print(f"machine: {machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads),"
          f" jax {jax.__version__}")
    print(f"size={size} {SIZES[size]} vocab={len(clf.vocab)} batch={BATCH_SIZE} "
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
    parser.add_argument("--size", choices=sorted(SIZES), default="quickstart")
    parser.add_argument("--n_docs", type=int, default=1000)
    parser.add_argument("--latency_texts", type=int, default=30)
    args = parser.parse_args()
    run(args.size, args.n_docs, args.latency_texts)


if __name__ == "__main__":
    main()
