"""Classifier training and evaluation speed per gradual-unfreezing phase: ours vs fastai.

Issue 17's classifier step benchmark, beside `lm_throughput.py`. Same process, same documents,
same sizes, each side with its own batching:

- documents: the first `--docs` IMDb training reviews of the embedded corpus, tokenized with
  fastai's rules (`FastaiTokenizer`) and cut to their last `--max-tokens` tokens (0: whole),
  so the lengths are IMDb's; the ids are random (speed does not depend on them), 2 classes;
- order: one fastai "sortish" epoch (`SortedDL`'s algorithm, `sortish_order`), the same for
  both sides; the last partial training batch is dropped, as both trainers do; evaluation
  runs longest first in batches of `--eval-batch-size`;
- padding: fastai pads each batch to its longest document (`pad_input_chunk`, fastai's own
  function); ours re-pads to a bucketed number of whole `bptt` chunks (`repad`, the trainer's);
- training: the trainer's jitted `classifier_train_step` (dropouts, cross-entropy + AR/TAR,
  Adam with weight decay, `freeze_to` skipping the frozen layers' backward) vs fastai's
  `get_text_classifier` with fastai's `Adam` over `awd_lstm_clas_split`'s groups and
  `freeze_to`, the same loss (cross-entropy + alpha * AR + beta * TAR on the encoder outputs
  its `PoolingLinearClassifier` returns, as `RNNRegularizer` adds them); no Learner callbacks;
- phases: head only (`freeze_to=-1`), last LSTM + head (-2), everything (0).

The sides alternate batch by batch over the epoch's batches (a loaded machine slows both
alike), after a warm-up pass over every distinct padded shape (our compiles, reported apart:
each costs a training run once per phase). Besides docs/s it prints the padded positions each
side computes per real token (the cost of coarse padding in the matmuls), and the recurrent
steps ours runs on a CPU, where its LSTM loops only over the steps some row takes.

    python benchmarks/classifier_throughput.py                        # quickstart_15min shapes
    python benchmarks/classifier_throughput.py --size full --bptt 72 --batch-size 64 \\
        --max-tokens 0 --docs 640                                      # WT103 size, whole reviews
    python benchmarks/classifier_throughput.py --by-width             # step time vs batch width
    python benchmarks/classifier_throughput.py --smoke                # seconds: checks the script
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from common import (
    MAX_CHUNKS,
    N_CLASSES,
    SIZES,
    adam_hparams,
    add_cpu_devices_argument,
    fastai_classifier_model,
    imdb_texts,
    load_average,
    machine,
    our_layer_group_optimizer,
    use_cpu_devices,
)

from ulmfit_jax.host_allocator import use_fast_allocator

PHASES = (-1, -2, 0)
PHASE_NAMES = {-1: "head only", -2: "last LSTM + head", 0: "all layers"}
ALPHA, BETA = 2.0, 1.0  # fastai's TextLearner defaults, the recipe's classifier.alpha / beta
PAD_ID = 1


@dataclass(frozen=True)
class Documents:
    """Token id arrays of IMDb's lengths, and labels."""

    docs: list[np.ndarray]
    labels: np.ndarray


def imdb_documents(n_docs: int, max_tokens: int, vocab_size: int) -> Documents:
    """The first `n_docs` IMDb training reviews' token counts (fastai's tokenizer, last
    `max_tokens` kept), filled with random ids in [2, vocab)."""
    from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer

    lengths = [len(t) for t in FastaiTokenizer().tokenize(imdb_texts(n_docs))]
    if max_tokens:
        lengths = [min(n, max_tokens) for n in lengths]
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, vocab_size, n, dtype=np.int32) for n in lengths]
    return Documents(docs, rng.integers(0, N_CLASSES, len(docs)).astype(np.int32))


def epoch_batches(documents: Documents, batch_size: int, bptt: int, train: bool
                  ) -> list[np.ndarray]:
    """Member indices of each batch: a sortish epoch without its partial last batch (train),
    or longest first with it (eval)."""
    from ulmfit_jax.text.classifier_batches import sorted_order, sortish_order

    lengths = np.array([len(d) for d in documents.docs])
    if not train:
        order = sorted_order(lengths)
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    order = sortish_order(lengths, batch_size, np.random.default_rng(0))
    return [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def fastai_padded(documents: Documents, members: np.ndarray, bptt: int) -> np.ndarray:
    """fastai's batch: `pad_input_chunk` to the longest document, `[batch, time]`."""
    import torch
    from fastai.text.data import pad_input_chunk

    samples = [(torch.from_numpy(documents.docs[i]),) for i in members]
    padded = pad_input_chunk(samples, pad_idx=PAD_ID, seq_len=bptt)
    return torch.stack([s[0] for s in padded]).numpy()


def ours_padded(documents: Documents, members: np.ndarray, bptt: int, rows: int) -> np.ndarray:
    """Our batch as the trainer builds it (`pad_bucketed`: fastai's layout inside bucketed
    whole chunks), filler rows (all padding) up to `rows`."""
    from ulmfit_jax.text.classifier_batches import pad_bucketed

    docs = [documents.docs[i] for i in members] + [np.zeros(0, np.int32)] * (rows - len(members))
    return pad_bucketed(docs, PAD_ID, bptt)


class Ours:
    """The trainer's classifier steps and eval step on one model, for each `freeze_to`."""

    def __init__(self, size: str, bptt: int, **model_options: object) -> None:
        from flax import nnx

        from ulmfit_jax.model.classifier import AWDLSTMClassifier
        from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
        from ulmfit_jax.optim.layer_groups import classifier_layer_groups
        from ulmfit_jax.trainer import sharding, steps

        encoder = AWDLSTMConfig.classifier_defaults(**SIZES[size], **model_options)
        self.config = ClassifierConfig(encoder, N_CLASSES, bptt=bptt, max_len=MAX_CHUNKS * bptt)
        model = AWDLSTMClassifier(self.config, rngs=nnx.Rngs(0))
        self.optimizer = our_layer_group_optimizer(model,
                                                   classifier_layer_groups(encoder.n_layers))
        self.graphdef, state = steps.create_classifier_state(model, self.optimizer.transform())
        self.mesh = sharding.make_data_mesh()
        self.state = sharding.place_state(state, self.mesh)
        self.evaluate = steps.make_classifier_eval_step(self.mesh, self.graphdef)
        self._shard = sharding.shard_batch
        self._steps = steps

    def train_step(self, freeze_to: int) -> Callable[[np.ndarray, np.ndarray], None]:
        import jax

        step = self._steps.make_train_step(
            self._steps.classifier_train_step, self.mesh, self.state, graphdef=self.graphdef,
            model_config=self.config, optimizer=self.optimizer.transform(freeze_to),
            frozen=self.optimizer.frozen_mask(freeze_to) if freeze_to else None,
            alpha=ALPHA, beta=BETA)
        rng, hparams = jax.random.key(0), adam_hparams()

        def run(ids: np.ndarray, labels: np.ndarray) -> None:
            batch = self._shard({"inputs": ids, "labels": labels}, self.mesh)
            self.state, metrics = step(self.state, batch, rng, hparams)
            jax.block_until_ready((self.state, metrics))

        return run

    def eval_step(self, ids: np.ndarray, labels: np.ndarray) -> None:
        import jax

        from ulmfit_jax.trainer.train_state import ClassifierEvalState

        state = ClassifierEvalState(params=self.state.params, batch_stats=self.state.batch_stats)
        batch = {"inputs": ids, "labels": labels, "weights": np.ones(len(ids), np.float32)}
        jax.block_until_ready(self.evaluate(state, self._shard(batch, self.mesh)))


class Fastai:
    """fastai's classifier with its Adam over its layer groups."""

    def __init__(self, size: str, bptt: int) -> None:
        from fastai.optimizer import Adam
        from fastai.text.models.awdlstm import awd_lstm_clas_split

        self.model = fastai_classifier_model(size, bptt)
        self.optimizer = Adam(awd_lstm_clas_split(self.model), lr=1e-3, mom=0.8, sqr_mom=0.99,
                              wd=0.01)

    def train_step(self, freeze_to: int) -> Callable[[np.ndarray, np.ndarray], None]:
        import torch
        import torch.nn.functional as F

        self.optimizer.freeze_to(freeze_to)

        def run(ids: np.ndarray, labels: np.ndarray) -> None:
            self.model.train()
            logits, _, outputs = self.model(torch.from_numpy(ids).long())
            loss = F.cross_entropy(logits, torch.from_numpy(labels).long())
            loss = loss + ALPHA * outputs.float().pow(2).mean()
            if outputs.shape[1] > 1:
                loss = loss + BETA * (outputs[:, 1:] - outputs[:, :-1]).float().pow(2).mean()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()

        return run

    def eval_step(self, ids: np.ndarray, labels: np.ndarray) -> None:
        import torch

        self.model.eval()
        with torch.no_grad():
            self.model(torch.from_numpy(ids).long())[0].softmax(-1).numpy()


def train_steps(ours: Ours, fastai: Fastai, freeze_to: int
                ) -> dict[str, Callable[[np.ndarray, np.ndarray], None]]:
    """Both sides' training steps for a phase (fastai's model is frozen now, for this phase)."""
    return {"ours": ours.train_step(freeze_to), "fastai": fastai.train_step(freeze_to)}


def alternate(calls: dict[str, list[Callable[[], None]]]) -> dict[str, float]:
    """Total seconds of each side's calls, the sides taking turns call by call."""
    total = dict.fromkeys(calls, 0.0)
    for turn in zip(*calls.values(), strict=True):
        for name, call in zip(calls, turn, strict=True):
            start = time.perf_counter()
            call()
            total[name] += time.perf_counter() - start
    return total


def warm_up(run: Callable[[np.ndarray, np.ndarray], None], batches: list[np.ndarray],
            labels: list[np.ndarray]) -> tuple[float, int]:
    """Call `run` once per distinct batch shape (our compiles): (seconds, shapes)."""
    shapes = {ids.shape: (ids, y) for ids, y in zip(batches, labels, strict=True)}
    start = time.perf_counter()
    for ids, y in shapes.values():
        run(ids, y)
    return time.perf_counter() - start, len(shapes)


def measure(name: str, sides: dict[str, Callable[[np.ndarray, np.ndarray], None]],
            batches: dict[str, list[np.ndarray]], labels: dict[str, list[np.ndarray]],
            n_docs: int, rounds: int) -> str:
    """One row: each side's docs/s over its batches (median of `rounds` passes), ours /
    fastai, and our warm-up (compile) seconds."""
    compile_s, shapes = warm_up(sides["ours"], batches["ours"], labels["ours"])
    warm_up(sides["fastai"], batches["fastai"][:1], labels["fastai"][:1])  # torch's allocator
    calls = {side: [functools.partial(sides[side], ids, y)
                    for ids, y in zip(batches[side], labels[side], strict=True)]
             for side in sides}
    passes = [alternate(calls) for _ in range(rounds)]
    rate = {side: n_docs / statistics.median(p[side] for p in passes) for side in sides}
    return (f"{name:<24} fastai {rate['fastai']:7.1f}   ours {rate['ours']:7.1f} docs/s   "
            f"ours/fastai {rate['ours'] / rate['fastai']:5.2f}x   "
            f"(ours: {shapes} shapes compiled in {compile_s:.1f} s)")


def padding_line(padded: dict[str, list[np.ndarray]], real_tokens: int, what: str) -> str:
    """Padded positions per real token (the matmuls' work), and the recurrent steps per real
    token ours runs on a CPU (each batch's rows over the window some row takes)."""
    cost = {side: sum(b.size for b in batches) / real_tokens for side, batches in padded.items()}
    steps = sum(len(b) * _taken_width(b) for b in padded["ours"]) / real_tokens
    return (f"{what}: padded positions per real token: fastai {cost['fastai']:.3f}, "
            f"ours {cost['ours']:.3f} ({cost['ours'] / cost['fastai']:.3f}x fastai's); "
            f"ours' recurrent steps per real token on a CPU: {steps:.3f}")


def _taken_width(ids: np.ndarray) -> int:
    """From the first position some row's text starts at to the last real token."""
    real = np.flatnonzero((ids != PAD_ID).any(axis=0))
    return int(real[-1] - real[0] + 1) if len(real) else 0


def by_width(ours: Ours, fastai: Fastai, args: argparse.Namespace) -> None:
    """Seconds of one fully unfrozen training step at each batch width (every row that long),
    ours padded as the trainer pads: per-step costs (intercept) against per-token ones."""
    steps = train_steps(ours, fastai, 0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, N_CLASSES, args.batch_size).astype(np.int32)
    for width in range(args.bptt // 2, args.max_tokens + 1, args.bptt // 2):
        docs = rng.integers(2, SIZES[args.size]["vocab_size"], (args.batch_size, width))
        documents = Documents(list(docs.astype(np.int32)), labels)
        members = np.arange(args.batch_size)
        batches = {"fastai": [fastai_padded(documents, members, args.bptt)] * 3,
                   "ours": [ours_padded(documents, members, args.bptt, args.batch_size)] * 3}
        warm_up(steps["ours"], batches["ours"][:1], [labels])
        warm_up(steps["fastai"], batches["fastai"][:1], [labels])
        seconds = alternate({side: [functools.partial(steps[side], ids, labels)
                                    for ids in batches[side]] for side in steps})
        print(f"width {width:4d}: fastai {1e3 * seconds['fastai'] / 3:6.1f} ms, ours "
              f"{1e3 * seconds['ours'] / 3:6.1f} ms (padded to {batches['ours'][0].shape[1]})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="model size (small: the quickstart's, full: WT103's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--bptt", type=int, default=80)
    parser.add_argument("--max-tokens", type=int, default=240,
                        help="keep each review's last N tokens (0: whole reviews)")
    parser.add_argument("--docs", type=int, default=1280, help="IMDb training reviews used")
    parser.add_argument("--rounds", type=int, default=1, help="timed passes (median)")
    parser.add_argument("--phases", type=int, nargs="+", default=list(PHASES),
                        choices=PHASES, help="freeze_to of the phases to time")
    parser.add_argument("--lstm-impl", default="auto",
                        choices=("auto", "scan", "wavefront", "cudnn"),
                        help="ours: model.lstm_impl")
    parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="ours: model.compute_dtype (fastai runs float32)")
    parser.add_argument("--by-width", action="store_true",
                        help="instead: one unfrozen step's time at each batch width, both sides")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model, few documents: checks the script, no figure")
    add_cpu_devices_argument(parser)
    parser.set_defaults(cpu_devices=0)  # train.py's default: one device per core
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.docs, args.batch_size, args.eval_batch_size = "tiny", 24, 4, 8
        args.bptt, args.max_tokens = 16, 40  # 40 tokens: 2.5 chunks, padded to 3
    return args


def main() -> None:
    args = parse_args()
    use_cpu_devices(args.cpu_devices, [args.batch_size, args.eval_batch_size])
    import jax
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    documents = imdb_documents(args.docs, args.max_tokens, SIZES[args.size]["vocab_size"])
    ours = Ours(args.size, args.bptt, lstm_impl=args.lstm_impl,
                compute_dtype=jax.numpy.dtype(args.compute_dtype))
    fastai = Fastai(args.size, args.bptt)
    print(f"{machine()}; jax {jax.__version__} ({len(jax.devices())} {jax.default_backend()} "
          f"devices), torch {torch.__version__} ({torch.get_num_threads()} threads)")
    lengths = [len(d) for d in documents.docs]
    print(f"ours: lstm_impl {args.lstm_impl}, compute_dtype {args.compute_dtype}")
    print(f"size={args.size} {SIZES[args.size]} batch {args.batch_size} bptt {args.bptt} "
          f"max_tokens {args.max_tokens}; {len(lengths)} reviews, tokens mean "
          f"{np.mean(lengths):.0f} median {np.median(lengths):.0f} max {max(lengths)}")
    print(load_average(), "(before timing)")
    if args.by_width:
        by_width(ours, fastai, args)
        return
    for train, rows in ((True, args.batch_size), (False, args.eval_batch_size)):
        members = epoch_batches(documents, rows, args.bptt, train)
        batches = {"fastai": [fastai_padded(documents, m, args.bptt) for m in members],
                   "ours": [ours_padded(documents, m, args.bptt, rows) for m in members]}
        # Our last eval batch is filled with filler rows (label 0; the trainer weights them 0).
        labels = {"fastai": [documents.labels[m] for m in members],
                  "ours": [np.pad(documents.labels[m], (0, rows - len(m))) for m in members]}
        real = sum(len(documents.docs[i]) for m in members for i in m)
        print(padding_line(batches, real, "training" if train else "evaluation"))
        runs = ([(f"train {PHASE_NAMES[f]}", functools.partial(train_steps, ours, fastai, f))
                 for f in args.phases] if train else
                [("eval", lambda: {"ours": ours.eval_step, "fastai": fastai.eval_step})])
        for name, sides in runs:
            print(measure(name, sides(), batches, labels, sum(map(len, members)), args.rounds))
    print(load_average(), "(after timing)")


if __name__ == "__main__":
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
