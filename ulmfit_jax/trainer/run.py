"""ULMFiT training: `train_and_evaluate(config, workdir, stage)`.

Stages: `lm` (language model, forward and optionally backward), `classifier` (gradual
unfreezing on the saved encoder), `all` (both, then the fwd+bwd ensemble and example
predictions), `lr_find` (fastai's LR finder on the LM stage: a plot and suggestions).
Every stage resumes from its latest checkpoint, and a finished stage is skipped,
so rerunning the same command after a crash continues where it stopped.

Workdir layout: `run_config.json` and `.lock` (see `workdir`), `vocab.json`, `cache/` (token
cache), `checkpoints/<stage>/`, `models/{lm,classifier}_{fwd,bwd}/` (`LanguageModel` /
`TextClassifier` directories), `metrics.csv`, `metrics.json`, `tensorboard/`,
`loss_curve.png`, and after the classifier stage `confusion_matrix.png`,
`classification_report.json` and `top_losses.csv` (validation split; `validation_files`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import ml_collections
import numpy as np

from ulmfit_jax.api import Ensemble
from ulmfit_jax.errors import ConfigError, UserError
from ulmfit_jax.trainer import cpu_devices, distributed, sharding
from ulmfit_jax.trainer.classifier_stage import (
    VALID_PROBS,
    classifier_name,
    train_classifier,
)
from ulmfit_jax.trainer.config import base_config, check_config
from ulmfit_jax.trainer.data import PreparedData, prepare_data
from ulmfit_jax.trainer.lm_stage import train_language_model
from ulmfit_jax.trainer.lr_find_stage import find_lm_lr
from ulmfit_jax.trainer.metric_logger import MetricLogger
from ulmfit_jax.trainer.metrics import report
from ulmfit_jax.trainer.validate_data import check_classifier_data, check_lm_data
from ulmfit_jax.trainer.validation_files import write_validation_files
from ulmfit_jax.trainer.workdir import claim, forget_run

__all__ = ["EXAMPLE_REVIEWS", "base_config", "train_and_evaluate"]

logger = logging.getLogger(__name__)
STAGES = ("lm", "classifier", "all", "lr_find")
EXAMPLE_REVIEWS = (
    "This movie was a delight from start to finish: sharp writing, a wonderful cast and "
    "a score I am still humming. I would happily watch it again.",
    "A tedious, badly acted mess. The plot makes no sense, the jokes fall flat and I "
    "checked my watch every five minutes. Avoid it.",
    "Not the best film of the year, but the leads have real chemistry and the last act "
    "is genuinely moving.",
)


def _directions(config: ml_collections.ConfigDict) -> list[bool]:
    return [False, True] if config.lm.backward else [False]


def ensemble_report(workdir: Path, data: PreparedData, threshold: float) -> dict[str, float]:
    """Accuracy and macro F1 (multi-label: and micro F1) of the averaged fwd+bwd validation
    probabilities."""
    probs = [np.load(workdir / "models" / classifier_name(b) / VALID_PROBS) for b in (False, True)]
    return report(np.asarray(data.clf_valid.labels), (probs[0] + probs[1]) / 2,
                  threshold)


def print_example_predictions(workdir: Path, backward: bool) -> None:
    """Label and probability of each example review: the fwd classifier, or the fwd+bwd
    ensemble when there is a backward one, loaded from its saved directory alone."""
    dirs = [workdir / "models" / classifier_name(b) for b in ([False, True] if backward
                                                             else [False])]
    model = Ensemble.load(*dirs)
    probs = model.predict_proba(list(EXAMPLE_REVIEWS))
    for text, p in zip(EXAMPLE_REVIEWS, probs, strict=True):
        print(f"{model.class_names[int(p.argmax())]} ({p.max():.2f}): {text[:70]}...")


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, stage: str = "all",
    fresh: bool = False,
) -> dict:
    """Run `stage` ("lm", "classifier", "all" or "lr_find") in `workdir`; return
    `metrics.json`'s content. The workdir is locked for the run and must hold no run of
    another config (see `trainer.workdir`); `fresh` first deletes what earlier runs wrote."""
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    check_config(config)
    workdir = Path(workdir)
    # Before anything else touches jax. Process 0 alone claims the workdir and prepares the
    # data (vocab, token cache); the others read them once it has.
    if not config.distributed.enabled and config.cpu_devices != 1:  # 1: jax's own default
        cpu_devices.set_cpu_device_count(cpu_devices.requested_device_count(config))
    distributed.initialize(config.distributed)
    with _claim_on_primary(workdir, config, stage, fresh) as first_run:
        try:
            data = distributed.primary_first(
                "data", lambda: _prepare_and_check(config, workdir, stage),
                config.distributed.data_timeout_s)
        except UserError:
            if first_run:  # nothing trained: a corrected rerun must not find this vocab/config
                forget_run(workdir)
            raise
        return _train_and_evaluate(config, data, workdir, stage)


def _claim_on_primary(workdir: Path, config: ml_collections.ConfigDict, stage: str,
                      fresh: bool) -> contextlib.AbstractContextManager[bool]:
    if distributed.is_primary():
        return claim(workdir, config, stage, fresh)
    return contextlib.nullcontext(False)


def _prepare_and_check(config: ml_collections.ConfigDict, workdir: Path,
                       stage: str) -> PreparedData:
    # Single-process: tokenizer workers are forked before JAX starts its threads.
    data = prepare_data(config, workdir)
    _check_data(data, config, stage)
    return data


def _check_data(data: PreparedData, config: ml_collections.ConfigDict, stage: str) -> None:
    if stage in ("classifier", "all"):
        check_classifier_data(data, config)
    if stage != "classifier":
        check_lm_data(data, config)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, data: PreparedData, workdir: Path, stage: str
) -> dict:
    mesh = sharding.make_data_mesh()
    if mesh.devices.size > 1 and distributed.is_primary():
        print(f"each batch is split over {mesh.devices.size} "
              f"{mesh.devices.flat[0].platform.upper()} devices (data parallel)")
    log = MetricLogger(workdir, tensorboard=config.tensorboard, active=distributed.is_primary())
    try:
        if stage == "lr_find":
            for backward in _directions(config):
                result = find_lm_lr(config, data, workdir, mesh, backward)
                print(f"LR finder ({'backward' if backward else 'forward'} LM): "
                      + ", ".join(f"{k} {v:.2e}" for k, v in result.suggestions.items()))
        if stage in ("lm", "all"):
            for backward in _directions(config):
                train_language_model(config, data, workdir, mesh, log, backward)
        if stage in ("classifier", "all"):
            for backward in _directions(config):
                train_classifier(config, data, workdir, mesh, log, backward)
            if config.lm.backward:
                log.write_summary({"ensemble": ensemble_report(
                    workdir, data, config.classifier.threshold)})
            if distributed.is_primary():
                write_validation_files(workdir, data, config.lm.backward,
                                       config.classifier.threshold)
        log.plot_loss_curves()
    finally:
        log.close()
    distributed.barrier("run finished")  # metrics.json is complete for every process
    if stage == "all" and config.predict_examples and not data.multi_label \
            and distributed.is_primary():
        print_example_predictions(workdir, config.lm.backward)
    summary_path = workdir / "metrics.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if stage in ("classifier", "all") and distributed.is_primary():
        _print_validation_summary(summary)
    return summary


def _print_validation_summary(summary: dict) -> None:
    """One line per classifier (and the ensemble): the numbers a user runs the demo for."""
    for name in ("classifier_fwd", "classifier_bwd", "ensemble"):
        if name in summary:
            m = summary[name]
            print(f"{name}: validation accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}")
