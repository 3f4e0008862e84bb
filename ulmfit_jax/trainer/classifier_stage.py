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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from ulmfit_jax.api import LanguageModel, TextClassifier
from ulmfit_jax.atomic_io import atomic_write
from ulmfit_jax.errors import MissingFileError, device_memory_is_clear
from ulmfit_jax.model.encoder import fastai_step_multiplicity
from ulmfit_jax.optim import optimizer as opt
from ulmfit_jax.optim.layer_groups import classifier_layer_groups
from ulmfit_jax.optim.schedules import Schedule
from ulmfit_jax.text.classifier_batches import ClassifierBatches, repad, restore_order
from ulmfit_jax.text.token_cache import TokenizedCorpus
from ulmfit_jax.trainer import distributed, sharding, steps
from ulmfit_jax.trainer.config import classifier_options
from ulmfit_jax.trainer.data import PreparedData
from ulmfit_jax.trainer.lm_stage import lm_name
from ulmfit_jax.trainer.loop import Phase, TrainStep, phase_schedule, run_stage_with_checkpoints
from ulmfit_jax.trainer.metric_logger import MetricLogger
from ulmfit_jax.trainer.metrics import classifier_summary, report
from ulmfit_jax.trainer.train_state import ClassifierEvalState, ClassifierTrainState

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
    mesh, graphdef, state: ClassifierTrainState, corpus: TokenizedCorpus, batch_size: int,
    bptt: int, pad_id: int, max_tokens: int | None, evaluate=None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Probabilities `[docs, n_classes]` in corpus order (sigmoid ones when `evaluate` is
    multi-label), and summed loss/accuracy metrics."""
    batches = ClassifierBatches(corpus, batch_size, bptt=bptt, pad_id=pad_id, shuffle=False,
                                max_tokens=max_tokens, pad_last_batch=True,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
    evaluate = evaluate or steps.make_classifier_eval_step(mesh, graphdef)
    eval_state = ClassifierEvalState(params=state.params, batch_stats=state.batch_stats)
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


def _step(state: ClassifierTrainState) -> int:
    return int(jax.device_get(state.step))


def config_phases(phases: Sequence[Mapping]) -> list[Phase]:
    """`config.classifier.phases` (dicts with `Phase`'s keys, checked by `check_config`) ->
    `Phase`s."""
    return [Phase(epochs=int(p["epochs"]), lr_max=float(p["lr_max"]),
                  lr_div=float(p["lr_div"]), freeze_to=int(p["freeze_to"])) for p in phases]


class ClassifierStage:
    """The classifier stage for `run_stage` (`loop.Stage`): gradual unfreezing with one
    compiled step per `freeze_to` that skips the frozen layers' backward pass; validation
    probabilities of the last evaluation are kept for saving."""

    best_metric, best_mode = "accuracy", "max"

    def __init__(self, config: ml_collections.ConfigDict, data: PreparedData, mesh, *,
                 backward: bool, clf: TextClassifier, graphdef: nnx.GraphDef,
                 state: ClassifierTrainState, optimizer: opt.LayerGroupOptimizer) -> None:
        c = config.classifier
        self.name, self.phases, self.mesh = classifier_name(backward), config_phases(c.phases), mesh
        self.schedule_kind, self.moms = c.schedule, tuple(c.moms)
        self.clf, self.graphdef, self.bptt = clf, graphdef, c.bptt
        self.pad_id, self.max_tokens = clf.config.encoder.pad_id, c.max_tokens or None
        self.eval_batch_size = c.eval_batch_size
        train = data.clf_train.reversed() if backward else data.clf_train
        self.valid = data.clf_valid.reversed() if backward else data.clf_valid
        self.iterator = ClassifierBatches(
            train, c.batch_size, bptt=c.bptt, pad_id=self.pad_id, shuffle=True,
            seed=config.seed, max_tokens=self.max_tokens, process_index=jax.process_index(),
            process_count=jax.process_count())
        labels: dict[str, Any] = {"multi_label": clf.multi_label, "threshold": clf.threshold}
        options = {"graphdef": graphdef, "model_config": clf.config, "alpha": c.alpha,
                   "beta": c.beta, **labels}

        @functools.cache
        def step_for(freeze_to: int) -> TrainStep:
            frozen = optimizer.frozen_mask(freeze_to) if freeze_to else None
            return steps.make_train_step(steps.classifier_train_step, mesh, state,
                                         optimizer=optimizer.transform(freeze_to),
                                         frozen=frozen, **options)

        self._step_for = step_for
        self._evaluate_batch = steps.make_classifier_eval_step(mesh, graphdef, **labels)
        self.validated: dict[int, np.ndarray] = {}  # step -> validation probabilities then

    def schedule(self, n_steps: int, lr_max: float) -> Schedule:
        return phase_schedule(self.schedule_kind, self.moms, n_steps, lr_max)

    def train_step(self, freeze_to: int) -> TrainStep:
        return self._step_for(freeze_to)

    def to_device(self, batch: dict) -> tuple[dict, int]:
        host = _host_batch(batch, self.bptt, self.pad_id)
        del host["weights"]
        return sharding.shard_batch(host, self.mesh), int(batch["lengths"].sum())

    def start_epoch(self, state: ClassifierTrainState) -> ClassifierTrainState:
        return state

    def valid_probs(self, state: ClassifierTrainState) -> tuple[np.ndarray, dict[str, float]]:
        """Validation probabilities in corpus order and summed metrics (every process)."""
        return predict_probs(self.mesh, self.graphdef, state, self.valid, self.eval_batch_size,
                             self.bptt, self.pad_id, self.max_tokens, self._evaluate_batch)

    def evaluate(self, state: ClassifierTrainState) -> dict[str, float]:
        probs, summary = self.valid_probs(state)
        self.validated.clear()
        self.validated[_step(state)] = probs
        return {**summary, **report(np.asarray(self.valid.labels), probs, self.clf.threshold)}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return classifier_summary(sums)


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
    with device_memory_is_clear(name, {"classifier.batch_size": c.batch_size,
                                       "classifier.eval_batch_size": c.eval_batch_size}):
        clf, state, final, probs = _train(config, data, workdir, mesh, log, backward)
    if distributed.is_primary():
        _save_classifier(clf, state, backward, out_dir, probs)
    log.write_summary({name: final})
    distributed.barrier(f"{name} saved")
    return out_dir


def _train(
    config: ml_collections.ConfigDict, data: PreparedData, workdir: Path, mesh, log: MetricLogger,
    backward: bool,
) -> tuple[TextClassifier, ClassifierTrainState, dict[str, float], np.ndarray]:
    """The classifier, its trained state, its last validation metrics and probabilities."""
    c = config.classifier
    clf = _classifier(config, data, workdir, backward)
    optimizer = opt.ulmfit_optimizer(
        clf.params, classifier_layer_groups(clf.config.encoder.n_layers), wd=c.wd,
        clip_norm=c.clip or None, multiplicity=fastai_step_multiplicity(clf.config.encoder))
    graphdef, state = steps.create_classifier_state(clf.module, optimizer.transform())
    state = sharding.place_state(state, mesh)
    stage = ClassifierStage(config, data, mesh, backward=backward, clf=clf, graphdef=graphdef,
                            state=state, optimizer=optimizer)
    state, final = run_stage_with_checkpoints(stage, state, config, workdir, log,
                                              seed_offset=3 if backward else 2)
    # The last epoch's validation already computed them, unless this run resumed after it or
    # restored an earlier best epoch (then every process takes part in computing them again).
    probs = stage.validated.get(_step(state))
    if probs is None:
        probs, _ = stage.valid_probs(state)
    return clf, state, final, probs


def _save_classifier(clf: TextClassifier, state: ClassifierTrainState, backward: bool,
                     out_dir: Path, probs: np.ndarray) -> None:
    trained = TextClassifier.from_params(clf.config, jax.device_get(state.params), clf.vocab,
                                         jax.device_get(state.batch_stats), clf.tokenizer,
                                         clf.class_names, backward)
    if clf.multi_label:
        trained = trained.with_multi_label(clf.threshold)
    trained.save(out_dir, overwrite=True)
    atomic_write(out_dir / VALID_PROBS, _npy_bytes(probs))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
