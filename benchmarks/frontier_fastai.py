"""Our trainer's recipe in fastai 2.8.12, timed epoch by epoch (run by quickstart_frontier.py).

    python benchmarks/frontier_fastai.py --run-dir DIR --threads 2

Reads `DIR/config.json` (a run config of our trainer, as `quickstart_frontier.py` writes it),
trains what `train.py --config ... --stage all` trains, with fastai's own pipeline, and
appends to `DIR/events.jsonl` one line per epoch (`stage`, `epoch`, validation `accuracy`,
`time` = `time.monotonic()`) and a last line with the final accuracy. The caller's clock runs
from the launch of this process: importing torch and fastai, tokenizing and training all count.

The same as ours:
- the documents: chosen by `common.chosen_documents` with the trainer's own functions
  and seeds (classifier subsets, LM corpus order, LM validation split, `max_lm_docs` draw);
- the tokens and vocab: fastai's `tokenize_df` (its rules and spaCy's tokenizer, in
  `data.workers` processes, -1 = one per core, as our trainer), `make_vocab` over every LM
  document with `model.min_freq` / `model.max_vocab`, as our `Vocab.from_counts`;
- the models: `emb_size`, `hidden_size`, `n_layers`, every dropout (fastai's
  `awd_lstm_lm_config` / `awd_lstm_clas_config` are our defaults) times `drop_mult`;
- the LM: from scratch (`pretrained=False`), `fit_one_cycle(lm.epochs, lm.lr)` with bs,
  bptt (`seq_len`), wd, moms, AR/TAR (alpha, beta), gradient clipping by norm (`GradientClip`),
  validated each epoch; forward, then backward when `lm.backward` (`reverse_text`);
- the classifier: the LM's encoder, then for each phase `freeze_to(f)` and
  `fit_one_cycle(epochs, slice(lr_max / lr_div, lr_max))`, with bs, eval bs, bptt, max_len,
  wd, moms, AR/TAR (`classifier.alpha`, `classifier.beta`: `TextLearner`'s RNNRegularizer,
  which ours reproduces) and no clipping; the fwd+bwd ensemble averages the two classifiers'
  probabilities;
- torch with `--threads` threads (the caller passes one per core).

Deviations (what fastai cannot do our way, or does differently by design):
- Truncation: `classifier.max_tokens` keeps each review's last N tokens in ours (for the
  backward model the first N, reversed). fastai has no such option: the token lists are cut
  the same way after fastai's tokenizer, before `Numericalize`, and `SortedDL` sorts by the
  cut lengths.
- Batching: fastai's own `LMDataLoader` and sortish `SortedDL` + `Pad_Chunk` batches; the
  classifier's last incomplete training batch is dropped (fewer than `batch_size` reviews an
  epoch) and each batch is padded to its longest review where ours pads to a few bucketed
  widths.
- The pipeline is assembled from the parts `TextBlock` uses (`tokenize_df`, `Numericalize`,
  `LMDataLoader`, `SortedDL`, `Pad_Chunk`) in `Datasets`, since `TextDataLoaders` cannot count
  the vocab over every LM document while training on a `max_lm_docs` sample. The classifier's
  reviews are tokenized apart from the LM corpus, as with `TextDataLoaders` (and in our trainer
  with a separate `lm_source`).
- The encoder goes from the LM to the classifier in memory: `save_encoder` + `load_encoder`
  without the file round trip.
- Initial weights and dropout masks are torch's (seeded with `seed`): a run's accuracy differs
  from ours by chance as well.
- No example predictions at the end (ours prints three, a fraction of a second).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import fastai.text.all as fa
import ml_collections
import pandas as pd
import torch
from common import EVENTS, Documents, chosen_documents

from ulmfit_jax.host_allocator import use_fast_allocator


def write_event(events: Path, **fields: object) -> None:
    """Append one event, stamped with `time.monotonic()` (the caller's clock on Linux)."""
    with events.open("a") as f:
        f.write(json.dumps({**fields, "time": time.monotonic()}) + "\n")


class EpochEvents(fa.Callback):
    """After each epoch's validation, write the stage's epoch number and valid accuracy."""

    order = fa.Recorder.order + 1  # after the Recorder has stored the epoch's metrics

    def __init__(self, stage_name: str, events: Path):
        self.stage_name, self.events, self.epochs_done = stage_name, events, 0

    def after_epoch(self) -> None:
        self.epochs_done += 1
        write_event(self.events, stage=self.stage_name, epoch=self.epochs_done,
                    accuracy=last_accuracy(self.learn))


def last_accuracy(learn: fa.Learner) -> float:
    """The validation accuracy of the learner's last epoch (its Recorder's last values)."""
    names = learn.recorder.metric_names[1:]  # without "epoch"; values have no "time" either
    return float(dict(zip(names, learn.recorder.values[-1], strict=False))["accuracy"])


def tokenize(texts: list[str], n_workers: int) -> tuple[list[list[str]], Counter]:
    """fastai's tokenizer (default rules, spaCy words) in `n_workers` processes, and the
    token counts."""
    tokens, counts = fa.tokenize_df(pd.DataFrame({"text": texts}), "text", n_workers=n_workers)
    return [list(t) for t in tokens["text"]], counts


def model_sizes(config: ml_collections.ConfigDict) -> dict:
    """fastai's names for the encoder sizes of the run config."""
    m = config.model
    return {"emb_sz": m.emb_size, "n_hid": m.hidden_size, "n_layers": m.n_layers}


def clip_callbacks(clip: float) -> list:
    return [fa.GradientClip(clip)] if clip else []


def direction(backward: bool) -> str:
    return "bwd" if backward else "fwd"


def train_language_model(config, docs: Documents, tokens: list[list[str]], vocab: list[str],
                         backward: bool, run_dir: Path) -> fa.Learner:
    """The LM from scratch on the chosen documents: `fit_one_cycle(lm.epochs, lm.lr)`."""
    lm = config.lm
    items = [tokens[i] for i in docs.lm_train] + [tokens[i] for i in docs.lm_valid]
    n_train = len(docs.lm_train)
    splits = [list(range(n_train)), list(range(n_train, len(items)))]
    tfms = [fa.Numericalize(vocab)] + ([fa.reverse_text] if backward else [])
    dls = fa.Datasets(items, [tfms], splits=splits, dl_type=fa.LMDataLoader).dataloaders(
        bs=lm.batch_size, seq_len=lm.bptt)
    learn = fa.language_model_learner(
        dls, fa.AWD_LSTM, config=dict(fa.awd_lstm_lm_config, **model_sizes(config)),
        drop_mult=lm.drop_mult, pretrained=False, metrics=[fa.accuracy, fa.Perplexity()],
        wd=lm.wd, moms=tuple(lm.moms), alpha=lm.alpha, beta=lm.beta, path=run_dir,
        cbs=[*clip_callbacks(lm.clip), EpochEvents(f"lm_{direction(backward)}",
                                                    run_dir / EVENTS)])
    learn.fit_one_cycle(lm.epochs, lm.lr)
    return learn


def cut(tokens: list[str], max_tokens: int, backward: bool) -> list[str]:
    """The tokens our `ClassifierBatches(max_tokens=...)` keeps: the last `max_tokens` (the
    backward model reads the reversed review, so its first ones)."""
    if not max_tokens:
        return tokens
    return tokens[:max_tokens] if backward else tokens[-max_tokens:]


def classifier_dataloaders(config, docs: Documents, tokens: list[list[str]], vocab: list[str],
                           backward: bool) -> fa.DataLoaders:
    """`SortedDL` batches padded by `Pad_Chunk`, as `TextBlock` makes them."""
    c = config.classifier
    labels = [docs.class_names[label] for _, label in docs.train + docs.valid]
    items = [(cut(t, c.max_tokens, backward), y) for t, y in zip(tokens, labels, strict=True)]
    n_train = len(docs.train)
    text_tfms = [fa.ItemGetter(0), fa.Numericalize(vocab)] + (
        [fa.reverse_text] if backward else [])
    label_tfms = [fa.ItemGetter(1), fa.Categorize(vocab=docs.class_names)]
    splits = [list(range(n_train)), list(range(n_train, len(items)))]
    dsets = fa.Datasets(items, [text_tfms, label_tfms], splits=splits, dl_type=fa.SortedDL)
    return dsets.dataloaders(bs=c.batch_size, val_bs=c.eval_batch_size,
                             before_batch=fa.Pad_Chunk(seq_len=c.bptt))


def train_classifier(config, docs: Documents, tokens: list[list[str]], vocab: list[str],
                     language_model: fa.Learner, backward: bool, run_dir: Path) -> fa.Learner:
    """Gradual unfreezing on the LM's encoder, one `fit_one_cycle` per phase."""
    c = config.classifier
    dls = classifier_dataloaders(config, docs, tokens, vocab, backward)
    learn = fa.text_classifier_learner(
        dls, fa.AWD_LSTM, seq_len=c.bptt, config=dict(fa.awd_lstm_clas_config,
                                                      **model_sizes(config)),
        pretrained=False, drop_mult=c.drop_mult, max_len=c.max_len,
        n_out=len(docs.class_names), metrics=[fa.accuracy], wd=c.wd, moms=tuple(c.moms),
        alpha=c.alpha, beta=c.beta, path=run_dir,
        cbs=[*clip_callbacks(c.clip), EpochEvents(f"classifier_{direction(backward)}",
                                                   run_dir / EVENTS)])
    learn.model[0].module.load_state_dict(language_model.model[0].state_dict())
    for phase in c.phases:
        learn.freeze_to(int(phase["freeze_to"]))
        learn.fit_one_cycle(int(phase["epochs"]), slice(phase["lr_max"] / phase["lr_div"],
                                                        phase["lr_max"]))
    return learn


def final_accuracy(classifiers: list[fa.Learner]) -> float:
    """The last epoch's validation accuracy, or the fwd+bwd ensemble's (mean probabilities)."""
    if len(classifiers) == 1:
        return last_accuracy(classifiers[0])
    outputs = [learn.get_preds(ds_idx=1) for learn in classifiers]
    probs = sum(p for p, _ in outputs) / len(outputs)
    return float((probs.argmax(dim=1) == outputs[0][1]).float().mean())


def run(run_dir: Path, threads: int) -> None:
    """Everything `train.py --stage all` does for the config in `run_dir`, fastai's way."""
    torch.set_num_threads(threads)
    config = ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text()))
    fa.set_seed(config.seed)
    docs = chosen_documents(config)
    n_workers = threads if config.data.workers < 0 else config.data.workers
    lm_tokens, counts = tokenize(docs.lm_texts, n_workers)
    vocab = fa.make_vocab(counts, min_freq=config.model.min_freq,
                          max_vocab=config.model.max_vocab)
    clf_tokens, _ = tokenize([text for text, _ in docs.train + docs.valid], n_workers)
    classifiers = []
    for backward in [False, True] if config.lm.backward else [False]:
        lm = train_language_model(config, docs, lm_tokens, vocab, backward, run_dir)
        classifiers.append(train_classifier(config, docs, clf_tokens, vocab, lm, backward,
                                            run_dir))
    write_event(run_dir / EVENTS, final_accuracy=final_accuracy(classifiers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True,
                        help="holds config.json; events.jsonl is written there")
    parser.add_argument("--threads", type=int, required=True, help="torch threads (cores)")
    args = parser.parse_args()
    run(args.run_dir, args.threads)


if __name__ == "__main__":
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
