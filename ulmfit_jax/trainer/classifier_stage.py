"""Stage 3 of ULMFiT: the classifier on the fine-tuned encoder, with gradual unfreezing.

The phases (`config.classifier.phases`, fastai's IMDb recipe by default) each set
`freeze_to` and a discriminative LR slice. Batches are padded to a bucketed number of `bptt`
chunks so jit sees few shapes (a document's result does not depend on the padded width).
The finished classifier is saved with `TextClassifier.save` to
`<workdir>/models/classifier_{fwd,bwd}`, complete with tokenizer, class names and direction
(`TextClassifier.load(dir).predict(texts)` needs nothing else); validation probabilities go
next to it.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import jax
import ml_collections
import numpy as np

from ulmfit_jax.api import LanguageModel, TextClassifier
from ulmfit_jax.atomic_io import atomic_write
from ulmfit_jax.errors import MissingFileError
from ulmfit_jax.optim import optimizer as opt
from ulmfit_jax.optim.layer_groups import classifier_layer_groups
from ulmfit_jax.text.classifier_batches import ClassifierBatches, repad, restore_order
from ulmfit_jax.text.token_cache import TokenizedCorpus
from ulmfit_jax.trainer import distributed, sharding
from ulmfit_jax.trainer import steps as train_step
from ulmfit_jax.trainer.config import classifier_options
from ulmfit_jax.trainer.data import PreparedData
from ulmfit_jax.trainer.lm_stage import lm_name
from ulmfit_jax.trainer.loop import Phase, Stage, run_stage_with_checkpoints
from ulmfit_jax.trainer.metric_logger import MetricLogger
from ulmfit_jax.trainer.metrics import classifier_summary, report

VALID_PROBS = "valid_probs.npy"


def classifier_name(backward: bool) -> str:
    """Stage name: `classifier_fwd` or `classifier_bwd`."""
    return "classifier_bwd" if backward else "classifier_fwd"


def _host_batch(batch: dict, bptt: int, pad_id: int) -> dict:
    labels = np.maximum(batch["labels"], 0).astype(np.int32)  # filler rows: label -1
    return {"inputs": repad(batch, bptt, pad_id), "labels": labels,
            "weights": (batch["lengths"] > 0).astype(np.float32)}


def _gather_rows(x) -> np.ndarray:
    """All hosts' rows of a batch-sharded array (or of this host's numpy rows)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict_probs(
    mesh, graphdef, state: dict, corpus: TokenizedCorpus, batch_size: int, bptt: int,
    pad_id: int, max_tokens: int | None, evaluate=None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Probabilities `[docs, n_classes]` in corpus order (sigmoid ones when `evaluate` is
    multi-label), and summed loss/accuracy metrics."""
    batches = ClassifierBatches(corpus, batch_size, bptt=bptt, pad_id=pad_id, shuffle=False,
                                max_tokens=max_tokens, pad_last_batch=True,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
    evaluate = evaluate or train_step.make_classifier_eval_step(mesh, graphdef)
    eval_state = {"params": state["params"], "batch_stats": state["batch_stats"]}
    probs, indices, sums = [], [], {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in batches:
        out = evaluate(eval_state, sharding.shard_batch(_host_batch(batch, bptt, pad_id), mesh))
        probs.append(_gather_rows(out.pop("probs")))
        indices.append(_gather_rows(batch["indices"]))
        out = jax.device_get(out)
        for k in sums:
            sums[k] += float(out[k])
    return restore_order(np.concatenate(probs), np.concatenate(indices)), classifier_summary(sums)


def _classifier(config, data: PreparedData, workdir: Path, backward: bool) -> TextClassifier:
    lm_dir = workdir / "models" / lm_name(backward)
    if not (lm_dir / "config.json").exists():
        raise MissingFileError(
            f"{lm_dir}: no fine-tuned language model; run `--stage lm` (or `--stage all`) first"
        )
    lm = LanguageModel.load(lm_dir)
    clf = TextClassifier.from_language_model(
        lm.with_tokenizer(data.tokenizer), len(data.class_names),
        drop_mult=config.classifier.drop_mult, seed=config.seed,
        class_names=data.class_names, **classifier_options(config),
    )
    return clf.with_multi_label(config.classifier.threshold) if data.multi_label else clf


def _step(state: dict) -> int:
    return int(jax.device_get(state["step"]))


def train_classifier(
    config: ml_collections.ConfigDict, data: PreparedData, workdir: Path, mesh, log: MetricLogger,
    backward: bool = False,
) -> Path:
    """Train (or resume) the forward/backward classifier; return its saved directory."""
    name = classifier_name(backward)
    out_dir = workdir / "models" / name
    if (out_dir / "config.json").exists() and (out_dir / VALID_PROBS).exists():
        return out_dir
    c = config.classifier
    sharding.check_batch_size(c.batch_size, mesh)
    sharding.check_batch_size(c.eval_batch_size, mesh)
    clf = _classifier(config, data, workdir, backward)
    pad_id, max_tokens = clf.config.encoder.pad_id, c.max_tokens or None
    optimizer = opt.ulmfit_optimizer(
        clf.params, classifier_layer_groups(clf.config.encoder.n_layers), wd=c.wd,
        clip_norm=c.clip or None, multiplicity=opt.AWD_LSTM_FUSED_BIAS_MULTIPLICITY)
    graphdef, state = train_step.create_classifier_state(clf.module, optimizer.transform())
    state = sharding.place_state(state, mesh)
    labels = {"multi_label": clf.multi_label, "threshold": clf.threshold}
    step_options = {"graphdef": graphdef, "model_config": clf.config, **labels}
    step_fn = train_step.make_train_step(train_step.classifier_train_step, mesh, state,
                                         optimizer=optimizer.transform(), **step_options)

    @functools.cache
    def frozen_step_fn(freeze_to: int):
        return train_step.make_train_step(
            train_step.classifier_train_step, mesh, state,
            optimizer=optimizer.transform(freeze_to), frozen=optimizer.frozen_mask(freeze_to),
            **step_options)

    train = data.clf_train.reversed() if backward else data.clf_train
    valid = data.clf_valid.reversed() if backward else data.clf_valid
    iterator = ClassifierBatches(train, c.batch_size, bptt=c.bptt, pad_id=pad_id, shuffle=True,
                                 seed=config.seed, max_tokens=max_tokens,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
    evaluate_batch = train_step.make_classifier_eval_step(mesh, graphdef, **labels)

    def to_device(batch: dict) -> tuple[dict, int]:
        host = _host_batch(batch, c.bptt, pad_id)
        del host["weights"]
        return sharding.shard_batch(host, mesh), int(batch["lengths"].sum())

    validated: dict[int, np.ndarray] = {}  # step -> validation probabilities at that step

    def valid_probs(state: dict) -> tuple[np.ndarray, dict[str, float]]:
        return predict_probs(mesh, graphdef, state, valid, c.eval_batch_size, c.bptt, pad_id,
                             max_tokens, evaluate_batch)

    def evaluate(state: dict) -> dict[str, float]:
        probs, summary = valid_probs(state)
        validated.clear()
        validated[_step(state)] = probs
        return {**summary, **report(np.asarray(valid.labels), probs, clf.threshold)}

    phases = [Phase(int(e), float(lr), float(div), int(f)) for f, e, lr, div in c.phases]
    stage = Stage(name=name, phases=phases, iterator=iterator, step_fn=step_fn,
                  to_device=to_device, evaluate=evaluate, summarize=classifier_summary,
                  schedule=c.schedule, moms=tuple(c.moms), frozen_step_fn=frozen_step_fn)
    state, final = run_stage_with_checkpoints(stage, state, config, workdir, log,
                                              seed_offset=3 if backward else 2)
    # The last epoch's validation already computed them, unless this run resumed after it or
    # restored an earlier best epoch (then every process takes part in computing them again).
    probs = validated.get(_step(state))
    if probs is None:
        probs, _ = valid_probs(state)
    if distributed.is_primary():
        _save_classifier(clf, state, backward, out_dir, probs)
    log.write_summary({name: final})
    distributed.barrier(f"{name} saved")
    return out_dir


def _save_classifier(clf: TextClassifier, state: dict, backward: bool, out_dir: Path,
                     probs: np.ndarray) -> None:
    trained = TextClassifier.from_params(clf.config, jax.device_get(state["params"]), clf.vocab,
                                         jax.device_get(state["batch_stats"]), clf.tokenizer,
                                         clf.class_names, backward)
    if clf.multi_label:
        trained.with_multi_label(clf.threshold)
    trained.save(out_dir, overwrite=True)
    atomic_write(out_dir / VALID_PROBS, _npy_bytes(probs))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
