"""Single-text latency, broken down: where a warm `predict_proba([text])` spends its time.

Issue 17 item 4. Same process, same weights (fastai's learner saved and read back as in
`predict_throughput.py`), embedded IMDb reviews, every shape compiled before timing, each
side's tokenizer warmed on 200 other reviews (a server that has run a while). Each timed text
is new to every tokenizer that reads it: spaCy's work is not memoised away.

- totals, one side's texts after the other's (`common.single_text_seconds`: not interleaved,
  torch's spinning threads would slow the jax call after them): fastai's `learn.predict(text)`,
  our `TextClassifier.predict_proba([text])` and the `ulmfit_jax.serving` artifact's;
- ours whole and in parts, on other texts: tokenize, numericalize, pad to the batch's bucketed
  shape, the device call (jitted forward + copy back), and the artifact's device call.

    python benchmarks/latency_breakdown.py --size quickstart
    python benchmarks/latency_breakdown.py --size wt103 --texts 10
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
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
    timed,
    use_cpu_devices,
)

from ulmfit_jax.host_allocator import use_fast_allocator

WARM_RUNS = 2  # untimed runs of each shape: the compile and one more


def padded(clf, tokenizer, text: str) -> np.ndarray:
    """The padded ids `[1, time]` that `predict_proba([text])` runs."""
    from ulmfit_jax.text import prediction_batches as pb

    ids = clf._vocab_table.numericalize(tokenizer.tokenize([text])[0])
    return next(pb.padded_batches([ids], PREDICT_BATCH_SIZE, clf.config.bptt,
                                  clf.config.encoder.pad_id))[1]


def our_forward(clf) -> Callable[[np.ndarray], np.ndarray]:
    """The device call of `predict_proba`: the jitted eval on the model's devices, copied back."""
    return clf._predictor.forward(clf.module, clf.multi_label)


def compile_shapes(clf, served, texts: list[str]) -> None:
    """Compile every shape `texts` need on our three paths and run each once more, without
    our tokenizers seeing the texts (a throwaway tokenizer reads them)."""
    from ulmfit_jax.text import FastaiTokenizer

    scratch = FastaiTokenizer()
    forward, api = our_forward(clf), clf.with_tokenizer(scratch)
    shapes = {padded(clf, scratch, text).shape: text for text in texts}
    for text in shapes.values():
        ids = padded(clf, scratch, text)
        for _ in range(WARM_RUNS):
            forward(ids)
            api.predict_proba([text])
            np.asarray(served._forward(ids))


def totals(learn, clf, served, texts: list[str]) -> dict[str, list[float]]:
    """Seconds per text of each side's whole single-text prediction, one side after another."""
    calls = {"fastai": learn.predict, "ours": lambda t: clf.predict_proba([t]),
             "serving": lambda t: served.predict_proba([t])}
    with learn.no_bar(), learn.no_logging():
        return single_text_seconds(calls, texts)


def parts(clf, served, texts: list[str], warm: list[str]) -> dict[str, list[float]]:
    """Seconds per text of our single-text prediction, whole and in parts, on the same texts:
    the parts tokenize with a second tokenizer warmed as the first."""
    from ulmfit_jax.text import FastaiTokenizer
    from ulmfit_jax.text import prediction_batches as pb

    forward = our_forward(clf)
    tokenizer = FastaiTokenizer()
    tokenizer.tokenize(warm)
    out: dict[str, list[float]] = {k: [] for k in ("whole", "tokenize", "numericalize", "pad",
                                                   "device", "serving device")}
    for text in texts:
        out["whole"].append(timed(lambda t=text: clf.predict_proba([t])))
        start = time.perf_counter()
        tokens = tokenizer.tokenize([text])[0]
        tokenized = time.perf_counter()
        ids = clf._vocab_table.numericalize(tokens)
        numericalized = time.perf_counter()
        batch = next(pb.padded_batches([ids], PREDICT_BATCH_SIZE, clf.config.bptt,
                                       clf.config.encoder.pad_id))[1]
        out["pad"].append(time.perf_counter() - numericalized)
        out["tokenize"].append(tokenized - start)
        out["numericalize"].append(numericalized - tokenized)
        out["device"].append(timed(lambda b=batch: forward(b)))
        out["serving device"].append(timed(lambda b=batch: np.asarray(served._forward(b))))
    return out


def run(size: str, n_texts: int) -> None:
    import jax
    import torch

    from ulmfit_jax import serving

    torch.set_num_threads(os.cpu_count() or 1)
    texts = imdb_texts(400 + 2 * n_texts)
    train, warm = texts[:200], texts[200:400]
    for_totals, for_parts = texts[400:400 + n_texts], texts[400 + n_texts:]
    workdir = Path(tempfile.mkdtemp(prefix="latency_bench_"))
    learn = fastai_text_learner(size, train, workdir)
    learn.model.eval()
    clf = classifier_from_learner(learn, size, workdir)
    clf.export(workdir / "served", platforms=("cpu",))
    served = serving.load(workdir / "served")
    compile_shapes(clf, served, warm + for_totals + for_parts)
    clf.tokenizer.tokenize(warm)
    served.tokenizer.tokenize(warm)
    with learn.no_bar(), learn.no_logging():
        learn.predict(warm[0])
    load_before = load_average()
    total = totals(learn, clf, served, for_totals)
    part = parts(clf, served, for_parts, warm)
    print(f"machine: {machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads),"
          f" jax {jax.__version__} ({jax.local_device_count()} devices, predict_proba uses "
          f"{clf._predictor.devices(clf.config.encoder).count})")
    print(f"size={size} {PREDICT_SIZES[size]} vocab={len(clf.vocab)}; "
          f"medians over {n_texts} texts")
    print(f"{load_before} (before timing), {load_average()} (after)")
    for side, values in total.items():
        ratio = np.median(np.divide(total["fastai"], values))
        print(f"  {side:>14} total  {1e3 * np.median(values):7.2f} ms   {ratio:5.2f}x fastai")
    for name, values in part.items():
        print(f"  {name:>14}        {1e3 * np.median(values):7.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(PREDICT_SIZES), default="quickstart")
    parser.add_argument("--texts", type=int, default=30)
    add_cpu_devices_argument(parser)
    parser.set_defaults(cpu_devices=0)  # predict.py's default: one device per core
    args = parser.parse_args()
    use_cpu_devices(args.cpu_devices, [PREDICT_BATCH_SIZE])
    run(args.size, args.texts)


if __name__ == "__main__":
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
