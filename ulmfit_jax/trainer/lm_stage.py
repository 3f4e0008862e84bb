"""Stage 1/2 of ULMFiT: language-model pretraining or fine-tuning (forward or backward).

From scratch: one phase with every group trainable. From converted fastai weights
(`config.lm.init_from`): fastai's recipe, first `frozen_epochs` training only the embedding +
decoder (new vocab rows start at the mean row), then everything. The finished LM is saved with
`LanguageModel.save` to `<workdir>/models/lm_{fwd,bwd}`, where the classifier stage finds it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from ulmfit_jax.api import LanguageModel
from ulmfit_jax.errors import ConfigError, device_memory_is_clear
from ulmfit_jax.model.config import AWDLSTMConfig
from ulmfit_jax.model.encoder import fastai_step_multiplicity, zero_state
from ulmfit_jax.model.qrnn import KIND as QRNN
from ulmfit_jax.optim import optimizer as opt
from ulmfit_jax.optim.layer_groups import lm_layer_groups
from ulmfit_jax.optim.schedules import Schedule
from ulmfit_jax.text.lm_stream import LMStream
from ulmfit_jax.trainer import distributed, sharding, steps
from ulmfit_jax.trainer.config import compute_dtype, lm_model_config
from ulmfit_jax.trainer.data import PreparedData
from ulmfit_jax.trainer.loop import Phase, TrainStep, phase_schedule, run_stage_with_checkpoints
from ulmfit_jax.trainer.metric_logger import MetricLogger
from ulmfit_jax.trainer.metrics import SumAccumulator, lm_summary
from ulmfit_jax.trainer.train_state import LMEvalState, LMTrainState


def lm_name(backward: bool) -> str:
    """Stage name: `lm_fwd` or `lm_bwd`."""
    return "lm_bwd" if backward else "lm_fwd"


def _initial_model(
    config: ml_collections.ConfigDict, data: PreparedData, backward: bool
) -> tuple[LanguageModel, list[Phase]]:
    c = config.lm
    init_from = c.init_from_backward if backward else c.init_from
    if backward and c.init_from and not c.init_from_backward:
        raise ConfigError("config.lm.backward with init_from needs config.lm.init_from_backward "
                         "(the backward pretrained weights, e.g. wt103-bwd)")
    unfrozen = Phase(c.epochs, c.lr, 1.0, freeze_to=0)
    if not init_from:
        model_config = lm_model_config(config, len(data.vocab))
        return LanguageModel.create(model_config, data.vocab.itos, seed=config.seed), [unfrozen]
    itos = c.init_itos_backward if backward else c.init_itos
    lm = LanguageModel.from_fastai(init_from, itos, new_vocab=data.vocab.itos,
                                   drop_mult=c.drop_mult, compute_dtype=compute_dtype(config),
                                   lstm_impl=config.model.lstm_impl,
                                   matmul_precision=config.model.matmul_precision,
                                   qrnn_zoneout=config.model.qrnn_zoneout,
                                   qrnn_save_prev_x=config.model.qrnn_save_prev_x)
    _check_pretrained_size(config, lm.config, init_from)
    phases = [Phase(c.frozen_epochs, c.frozen_lr, 1.0, freeze_to=-1)] if c.frozen_epochs else []
    return lm, phases + [unfrozen]


def _check_pretrained_size(
    config: ml_collections.ConfigDict, pretrained: AWDLSTMConfig, path: str
) -> None:
    """config.model must describe the pretrained weights: the evaluator's hidden state and the
    classifier phases are built from its sizes."""
    m = config.model
    if m.encoder != pretrained.encoder_kind:
        raise ConfigError(f"{path} holds an encoder of kind {pretrained.encoder_kind!r}, but "
                          f"config.model.encoder is {m.encoder!r}; set it to the file's "
                          "(and rerun with --fresh)")
    if m.encoder == QRNN and m.qrnn_window != pretrained.qrnn_window:
        raise ConfigError(f"{path} holds a QRNN whose first layer has window "
                          f"{pretrained.qrnn_window}, but config.model.qrnn_window is "
                          f"{m.qrnn_window}; set it to the file's (and rerun with --fresh)")
    want = (m.emb_size, m.hidden_size, m.n_layers)
    got = (pretrained.emb_size, pretrained.hidden_size, pretrained.n_layers)
    if want != got:
        what = "an AWD-QRNN" if m.encoder == QRNN else "an AWD-LSTM"
        raise ConfigError(
            f"{path} holds {what} with (emb_size, hidden_size, n_layers) = {got}, but "
            f"config.model has {want}; set config.model to the file's sizes "
            "(and rerun with --fresh)")


class LMStage:
    """The LM stage for `run_stage` (`loop.Stage`): one compiled step per `freeze_to` (the
    frozen epochs of fine-tuning train only the embedding), the carried state zeroed at each
    epoch, validation over the held-out LM documents."""

    best_metric, best_mode = "accuracy", "max"

    def __init__(self, config: ml_collections.ConfigDict, data: PreparedData, mesh, *,
                 backward: bool, phases: list[Phase], model_config: AWDLSTMConfig,
                 graphdef: nnx.GraphDef, step_for: Callable[[int], TrainStep]) -> None:
        c = config.lm
        self.name, self.phases, self.mesh = lm_name(backward), phases, mesh
        self.schedule_kind, self.moms = c.schedule, tuple(c.moms)
        self.iterator = LMStream(
            data.lm_train, c.batch_size, c.bptt, seed=config.seed, shuffle=True,
            backward=backward, variable_length=c.variable_length,
            process_index=jax.process_index(), process_count=jax.process_count())
        self.valid = LMStream(data.lm_valid, c.batch_size, c.bptt, shuffle=False,
                              backward=backward, process_index=jax.process_index(),
                              process_count=jax.process_count())
        self.graphdef, self._step_for = graphdef, step_for
        self._zeros = jax.device_put(zero_state(model_config, c.batch_size),
                                     sharding.batch_sharding(mesh))
        # Compiled on the first evaluation.
        self._evaluate_window: Callable[[LMEvalState, dict], tuple[LMEvalState, dict]] | None
        self._evaluate_window = None

    def schedule(self, n_steps: int, lr_max: float) -> Schedule:
        return phase_schedule(self.schedule_kind, self.moms, n_steps, lr_max)

    def train_step(self, freeze_to: int) -> TrainStep:
        return self._step_for(freeze_to)  # the optimizer leaves frozen groups unchanged

    def to_device(self, batch: dict) -> tuple[dict, int]:
        return sharding.shard_batch(batch, self.mesh), int(np.size(batch["inputs"]))

    def start_epoch(self, state: LMTrainState) -> LMTrainState:
        return state.replace(hidden=jax.tree.map(jnp.copy, self._zeros))

    def evaluate(self, state: LMTrainState) -> dict[str, float]:
        """Loss, accuracy and perplexity over the held-out LM documents."""
        eval_state = LMEvalState(params=state.params, hidden=self._zeros)
        if self._evaluate_window is None:
            self._evaluate_window = steps.make_lm_eval_step(self.mesh, eval_state,
                                                            self.graphdef)
        sums = SumAccumulator()
        for window in (self.valid.batch(0, s) for s in range(self.valid.num_batches(0))):
            eval_state, m = self._evaluate_window(eval_state,
                                                  sharding.shard_batch(window, self.mesh))
            sums.add(jax.device_get(m))
        return lm_summary(sums.sums)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        return lm_summary(sums)


def build_lm_stage(
    config: ml_collections.ConfigDict, data: PreparedData, mesh, backward: bool = False
) -> tuple[LanguageModel, LMTrainState, LMStage]:
    """The LM to train, its placed train state and its `LMStage` (what training and the LR
    finder share)."""
    c = config.lm
    sharding.check_batch_size(c.batch_size, mesh)
    lm, phases = _initial_model(config, data, backward)
    optimizer = opt.ulmfit_optimizer(
        lm.params, lm_layer_groups(lm.config.n_layers), wd=c.wd, clip_norm=c.clip or None,
        multiplicity=fastai_step_multiplicity(lm.config))
    graphdef, state = steps.create_lm_state(lm.module, optimizer.transform(), c.batch_size)
    state = sharding.place_state(state, mesh)

    @functools.cache
    def step_for(freeze_to: int) -> TrainStep:
        return steps.make_train_step(
            steps.lm_train_step, mesh, state, graphdef=graphdef, model_config=lm.config,
            optimizer=optimizer.transform(freeze_to), alpha=c.alpha, beta=c.beta)

    stage = LMStage(config, data, mesh, backward=backward, phases=phases,
                    model_config=lm.config, graphdef=graphdef, step_for=step_for)
    return lm, state, stage


def train_language_model(
    config: ml_collections.ConfigDict, data: PreparedData, workdir: Path, mesh, log: MetricLogger,
    backward: bool = False,
) -> Path:
    """Train (or resume) the forward/backward LM; return the directory it is saved in."""
    name = lm_name(backward)
    out_dir = workdir / "models" / name
    if (out_dir / "config.json").exists():
        return out_dir  # finished in an earlier run
    with device_memory_is_clear(name, {"lm.batch_size": config.lm.batch_size}):
        lm, state, stage = build_lm_stage(config, data, mesh, backward)
        state, valid = run_stage_with_checkpoints(stage, state, config, workdir, log,
                                                  seed_offset=1 if backward else 0)
    if distributed.is_primary():
        params = jax.device_get(state.params)
        LanguageModel.from_params(lm.config, params, data.vocab.itos, data.tokenizer,
                                  backward).save(out_dir, overwrite=True)
    log.write_summary({name: valid})
    distributed.barrier(f"{name} saved")  # the classifier stage reads it on every process
    return out_dir
