"""fastai's `lr_find` for the language model stage: `train.py --stage lr_find`.

Runs the LM stage's own jitted train step (first phase's frozen groups and LR factors, the
schedule's starting momentum) with an exponentially growing LR, then writes
`<workdir>/lr_find_{lm_fwd,lm_bwd}.png` (smoothed loss vs LR, suggestions marked) and
`.json` (the suggestions). Nothing is checkpointed and no model is saved: the sweep's state is
thrown away, as fastai restores the model after `lr_find`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from ulmfit_jax.atomic_io import atomic_write
from ulmfit_jax.errors import device_memory_is_clear
from ulmfit_jax.optim.lr_finder import LRFinderResult, find_lr_with_state, plot_lr_find
from ulmfit_jax.trainer import distributed
from ulmfit_jax.trainer.data import PreparedData
from ulmfit_jax.trainer.lm_stage import build_lm_stage, lm_name
from ulmfit_jax.trainer.loop import Stage, start_phase
from ulmfit_jax.trainer.train_state import LMTrainState


def _endless_batches(stage: Stage) -> Iterator[dict]:
    """The stage's training windows, epoch after epoch (small corpora run out in a sweep)."""
    epoch = 0
    while True:
        for step in range(stage.iterator.num_batches(epoch)):
            yield stage.iterator.batch(epoch, step)
        epoch += 1


def find_lm_lr(
    config: ml_collections.ConfigDict, data: PreparedData, workdir: Path, mesh,
    backward: bool = False,
) -> LRFinderResult:
    """Sweep the LM's learning rate; write the plot and the suggestions into `workdir`."""
    name = f"lr_find_{lm_name(backward)}"
    with device_memory_is_clear(name, {"lm.batch_size": config.lm.batch_size},
                                checkpointed=False):
        result = _sweep(config, data, mesh, backward)
    if distributed.is_primary():
        plot_lr_find(result, workdir / f"{name}.png")
        report = {"suggestions": result.suggestions, "diverged": result.diverged,
                  "steps": int(result.lrs.size)}
        atomic_write(workdir / f"{name}.json", json.dumps(report, indent=2))
    return result


def _sweep(config: ml_collections.ConfigDict, data: PreparedData, mesh,
           backward: bool) -> LRFinderResult:
    _, state, stage = build_lm_stage(config, data, mesh, backward)
    first = stage.phases[0]
    state = start_phase(stage.start_epoch(state), first)
    step_fn = stage.train_step(0 if first.freeze_to is None else first.freeze_to)
    rng = jax.random.PRNGKey(config.seed)
    mom = jnp.float32(config.lm.moms[0])

    def sweep_step(state: LMTrainState, batch: dict, lr: float) -> tuple[LMTrainState, float]:
        device_batch, _ = stage.to_device(batch)
        state, metrics = step_fn(state, device_batch, rng, {"lr": jnp.float32(lr), "mom": mom})
        metrics = jax.device_get(metrics)
        return state, float(metrics["loss_sum"] / metrics["count"])

    c = config.lr_find
    return find_lr_with_state(sweep_step, state, _endless_batches(stage), start_lr=c.start_lr,
                              end_lr=c.end_lr, num_it=c.num_it)
