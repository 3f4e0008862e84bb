"""The resumable training loop shared by the LM and classifier stages.

A stage is a list of `Phase`s (fastai: one `fit_one_cycle` call each) over one training
iterator; the stage's step counter runs across phases. Everything that varies with time is a
pure function of (iterator epoch, step), so a resumed run repeats exactly what an
uninterrupted one does (see `checkpointing` for the resume order):
  * a phase starts at step 0 of its first epoch: its frozen groups and LR factors are set then,
    after the previous checkpoint was written, in both runs alike;
  * the LM's carried state is reset at the start of every epoch and restored mid-epoch;
  * the metric accumulators of the current epoch and log interval are saved in the checkpoint.
Metrics of step t are read after step t+1 is dispatched, so logging never stalls the device.
SIGTERM / SIGINT save a checkpoint after the current step and stop the stage (`preemption`).
What the loop asks of a stage is the `Stage` protocol; the train state is a
`train_state.TrainState` (the LM's and the classifier's add their own fields).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ulmfit_jax.optim import optimizer as opt
from ulmfit_jax.optim.layer_groups import group_lrs
from ulmfit_jax.optim.schedules import Schedule, make_schedule
from ulmfit_jax.text.resumable import ResumableBatches
from ulmfit_jax.trainer import preemption
from ulmfit_jax.trainer.checkpointing import (
    Checkpointer,
    check_finite_loss,
    key_from_list,
    key_to_list,
)
from ulmfit_jax.trainer.metric_logger import MetricLogger
from ulmfit_jax.trainer.metrics import SumAccumulator
from ulmfit_jax.trainer.train_state import RngKey, TrainState

S = TypeVar("S", bound=TrainState)
# A compiled train step: (state, device batch, base rng, {"lr", "mom"}) -> (state, metric sums).
TrainStep = Callable[[S, dict, RngKey, dict], tuple[S, dict]]


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs trained with one schedule and one set of trainable groups.

    freeze_to: fastai's `freeze_to(n)` applied when the phase starts (None: leave as is;
    0: everything trains). The top group gets `lr_max`, the lowest `lr_max / lr_div`, the
    others spaced geometrically (fastai's `slice(lr_max / lr_div, lr_max)`).
    """

    epochs: int
    lr_max: float
    lr_div: float = 1.0
    freeze_to: int | None = None


@runtime_checkable
class Stage(Protocol[S]):
    """What `run_stage` needs to train one model (`LMStage`, `ClassifierStage`).

    name: the stage's name, also its checkpoint directory (`lm_fwd`, `classifier_bwd`...).
    phases: what is trained, epoch by epoch (fastai: one `fit_one_cycle` call each).
    iterator: the resumable training batches (the loop saves and restores its position).
    best_metric, best_mode: the validation metric that ranks checkpoints ("max": higher is
    better); the best checkpoint is kept, and restored at the end when the run asks for it
    (fastai's `SaveModelCallback`).
    """

    # Read-only (properties) so a stage may hold e.g. a list of phases or an `LMStream`.
    @property
    def name(self) -> str: ...
    @property
    def phases(self) -> Sequence[Phase]: ...
    @property
    def iterator(self) -> ResumableBatches: ...
    @property
    def best_metric(self) -> str: ...
    @property
    def best_mode(self) -> str: ...

    def schedule(self, n_steps: int, lr_max: float) -> Schedule:
        """A phase's (lr, momentum) at each of its `n_steps` steps (`optim.schedules`)."""
        ...

    def train_step(self, freeze_to: int) -> TrainStep:
        """The compiled step for phases that train with fastai's `freeze_to(freeze_to)`
        (0: everything trains): its optimizer leaves groups [:freeze_to] unchanged
        (`LayerGroupOptimizer.transform`), and it may skip their backward pass."""
        ...

    def to_device(self, batch: dict) -> tuple[dict, int]:
        """Host batch -> (device batch, number of tokens in it)."""
        ...

    def start_epoch(self, state: S) -> S:
        """The state at step 0 of every epoch (the LM zeroes its carried hidden state)."""
        ...

    def evaluate(self, state: S) -> dict[str, float]:
        """Validation metrics as host floats; they contain "loss" and `best_metric`."""
        ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Training metric sums and counts -> the metrics logged (loss, accuracy...)."""
        ...


@jax.jit
def _all_finite(params: Any) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))


def _keep_shardings(new: Any, old: Any) -> Any:
    """`new` placed like `old` leaf by leaf: a host-made array would otherwise differ from
    the step's own outputs in sharding and trigger one more compilation."""
    return jax.tree.map(lambda n, o: jax.device_put(n, o.sharding), new, old)


class _Plan:
    """Phase of every epoch and the global step at which each epoch and phase starts."""

    def __init__(self, stage: Stage):
        self.phase_of_epoch = [k for k, p in enumerate(stage.phases) for _ in range(p.epochs)]
        lengths = [stage.iterator.num_batches(e) for e in range(len(self.phase_of_epoch))]
        self.epoch_start = np.concatenate([[0], np.cumsum(lengths)]).astype(int).tolist()
        self.phase_first_epoch = [self.phase_of_epoch.index(k) for k in range(len(stage.phases))]
        # fastai's freeze_to in force during each phase (None: the previous phase's; at first
        # everything trains, as a fresh optimizer does).
        self.freeze_to = list(itertools.accumulate(
            (p.freeze_to for p in stage.phases),
            lambda before, n: before if n is None else n, initial=0))[1:]

    @property
    def n_epochs(self) -> int:
        return len(self.phase_of_epoch)

    def phase_steps(self, k: int) -> tuple[int, int]:
        """(first global step, number of steps) of phase k."""
        first = self.phase_first_epoch[k]
        last = first + sum(1 for p in self.phase_of_epoch if p == k)
        return self.epoch_start[first], self.epoch_start[last] - self.epoch_start[first]


def start_phase(state: S, phase: Phase) -> S:
    """Start a phase: fastai's freeze_to clears Adam's moments (the phase's frozen groups are
    in its own compiled step, `Stage.train_step(freeze_to)`), and the phase's per-group LR
    factors are set."""
    opt_state = state.opt_state
    if phase.freeze_to is not None:
        opt_state = opt.reset_moments(opt_state)
    lrs = group_lrs(slice(phase.lr_max / phase.lr_div, phase.lr_max), opt.n_groups(opt_state))
    return state.replace(opt_state=opt.set_lr_scale(opt_state, lrs / phase.lr_max))


class _Metrics:
    """Pending device metrics (one step behind) and the host accumulators."""

    def __init__(self, stage: Stage, log: MetricLogger, every: int, saved: dict | None):
        self.stage, self.log, self.every = stage, log, every
        self.epoch, self.interval = SumAccumulator(), SumAccumulator()
        if saved:
            self.epoch.sums, self.interval.sums = dict(saved["epoch"]), dict(saved["interval"])
        self.pending: list[tuple[int, dict]] = []

    def push(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))
        if len(self.pending) > 1:  # step t is read after step t+1 was dispatched
            self._consume(*self.pending.pop(0))

    def flush(self) -> None:
        while self.pending:
            self._consume(*self.pending.pop(0))

    def _consume(self, step: int, metrics: dict) -> None:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        check_finite_loss(host["loss_sum"], self.stage.name, step)
        self.epoch.add(host)
        self.interval.add(host)
        if step % self.every == 0:
            self.log.log(self.stage.name, step, "train", self.stage.summarize(self.interval.sums))
            self.interval.reset()

    def state(self) -> dict:
        return {"epoch": self.epoch.sums, "interval": self.interval.sums}


def _save(ckpt: Checkpointer, state: TrainState, rng: RngKey, stage: Stage, metrics: _Metrics,
          step: int, config_dict: dict, valid: dict | None = None) -> None:
    metrics.flush()  # every loss up to `step` is checked before its checkpoint is written
    if not bool(_all_finite(state.params)):
        check_finite_loss(float("nan"), stage.name, step)
    meta = {"rng": key_to_list(rng), "data": stage.iterator.get_state(),
            "metrics": metrics.state(), "config": config_dict, "valid": valid}
    best = None if valid is None else {stage.best_metric: valid[stage.best_metric]}
    ckpt.save(step, state, meta, metrics=best)


def _begin_epoch(state: S, stage: Stage, plan: _Plan, metrics: _Metrics) -> S:
    """At step 0 of an epoch: start the phase if it is its first epoch, reset the LM state."""
    epoch = stage.iterator.epoch
    k = plan.phase_of_epoch[epoch]
    before = state
    if epoch == plan.phase_first_epoch[k]:
        state = start_phase(state, stage.phases[k])
    state = stage.start_epoch(state)
    metrics.epoch.reset()
    return _keep_shardings(state, before)


def _train_epoch(
    state: S, step: int, rng: RngKey, stage: Stage, plan: _Plan, metrics: _Metrics,
    save: Callable, every_steps: int, progress: bool,
) -> tuple[S, int, tuple[int, float]]:
    """The rest of the current epoch; checkpoints every `every_steps` (not at its last step,
    whose checkpoint follows the evaluation). Also returns the epoch's steady-state speed as
    (tokens, seconds): every step after the first (which compiles), host batching, metrics,
    checkpoints and logging included, up to the device finishing the last step."""
    epoch = stage.iterator.epoch
    k = plan.phase_of_epoch[epoch]
    phase_start, phase_len = plan.phase_steps(k)
    schedule = stage.schedule(phase_len, stage.phases[k].lr_max)
    step_fn = stage.train_step(plan.freeze_to[k])
    first, end = plan.epoch_start[epoch], plan.epoch_start[epoch + 1]
    bar = tqdm(total=end - first, initial=step - first, leave=False, disable=not progress,
               desc=f"{stage.name} epoch {epoch + 1}/{plan.n_epochs}")
    tokens, t0 = 0, time.perf_counter()
    steady_tokens, steady_start = 0, None
    for host_batch in stage.iterator:
        lr, mom = schedule(step - phase_start)
        batch, n_tokens = stage.to_device(host_batch)
        state, step_metrics = step_fn(state, batch, rng, {"lr": lr, "mom": mom})
        if steady_start is None:
            steady_start = time.perf_counter()
        else:
            steady_tokens += n_tokens
        step += 1
        metrics.push(step, step_metrics)
        tokens += n_tokens
        _update_bar(bar, metrics, tokens / (time.perf_counter() - t0), stage)
        stop = preemption.requested_anywhere(step)
        if step < end and (step % every_steps == 0 or stop):
            save(state, step, None)
            if stop:
                preemption.stop_if_requested(stage.name, step)
    bar.close()
    metrics.flush()  # reads the last step's metrics: the device has finished
    seconds = time.perf_counter() - steady_start if steady_start is not None else 0.0
    return state, step, (steady_tokens, seconds)


def run_stage(
    stage: Stage,
    state: S,
    rng: RngKey,
    ckpt: Checkpointer,
    log: MetricLogger,
    *,
    every_steps: int,
    log_every: int,
    config_dict: dict,
    progress: bool = True,
) -> tuple[S, dict[str, float]]:
    """Train `stage` to its end from the latest checkpoint (or from `state`).

    Returns the final train state and the last validation metrics.
    """
    plan = _Plan(stage)
    restored = ckpt.restore_latest(state)
    saved_metrics = None
    valid: dict[str, float] = {}
    if restored is not None:
        state, meta = restored
        rng = key_from_list(meta["rng"])
        stage.iterator.set_state(meta["data"])
        saved_metrics, valid = meta["metrics"], meta.get("valid") or {}
        log.resume(stage.name, int(meta["step"]))
        if log.active and stage.iterator.epoch < plan.n_epochs:  # not a finished stage
            print(f"{stage.name}: resuming from its checkpoint of step {meta['step']}")
    metrics = _Metrics(stage, log, log_every, saved_metrics)

    def save(state: TrainState, step: int, valid: dict | None) -> None:
        _save(ckpt, state, rng, stage, metrics, step, config_dict, valid)

    step = int(jax.device_get(state.step))
    while stage.iterator.epoch < plan.n_epochs:
        epoch = stage.iterator.epoch
        if stage.iterator.step == 0:
            state = _begin_epoch(state, stage, plan, metrics)
        state, step, (tokens, seconds) = _train_epoch(
            state, step, rng, stage, plan, metrics, save, every_steps, progress
        )
        log.log_throughput(stage.name, epoch + 1, tokens, seconds)
        train, valid = stage.summarize(metrics.epoch.sums), stage.evaluate(state)
        log.log(stage.name, step, "valid", valid)
        log.log(stage.name, step, "epoch_train", train)
        speed = f" | {tokens / seconds:,.0f} tokens/s" if seconds > 0 and tokens else ""
        tqdm.write(f"{stage.name} epoch {epoch + 1}: train {_fmt(train)} | valid {_fmt(valid)}"
                   f"{speed}")
        save(state, step, valid)
        preemption.stop_if_requested(stage.name, step)
    ckpt.wait()
    return state, valid


def run_stage_with_checkpoints(
    stage: Stage, state: S, config: Any, workdir: Any, log: MetricLogger, seed_offset: int
) -> tuple[S, dict[str, float]]:
    """`run_stage` with the run's checkpoint policy: `<workdir>/checkpoints/<stage name>`, keep
    the last `config.checkpoint.keep` and the best by `stage.best_metric`; with
    `config.checkpoint.restore_best` the best epoch's state and metrics are returned instead of
    the last one's. A fresh stage's rng is `PRNGKey(config.seed + seed_offset)`."""
    ckpt = Checkpointer(workdir / "checkpoints" / stage.name, keep=config.checkpoint.keep,
                        best_metric=stage.best_metric, best_mode=stage.best_mode,
                        async_save=config.checkpoint.async_save)
    try:
        with preemption.handle_preemption(stage.name):
            state, valid = run_stage(
                stage, state, jax.random.PRNGKey(config.seed + seed_offset), ckpt, log,
                every_steps=config.checkpoint.every_steps, log_every=config.log_every_steps,
                config_dict=config.to_dict(), progress=config.progress,
            )
        if config.checkpoint.restore_best:
            state, valid = restore_best(ckpt, state, valid)
        return state, valid
    finally:
        ckpt.close()


def restore_best(ckpt: Checkpointer, state: S, valid: dict) -> tuple[S, dict]:
    """The best checkpoint's state and validation metrics (the given ones if it is the last)."""
    best = ckpt.best_step()
    if best is None or best == ckpt.latest_step():
        return state, valid
    state, meta = ckpt.restore(best, state)
    tqdm.write(f"restored the best checkpoint (step {best}): {_fmt(meta['valid'])}")
    return state, meta["valid"]


def phase_schedule(kind: str, moms: Sequence[float], n_steps: int,
                   lr_max: float) -> Schedule:
    """`make_schedule` of `kind` ("one_cycle", "stlr", "constant") with a stage's momentums
    (high, low, high): one-cycle uses all three, STLR the low one, constant the first."""
    if kind == "one_cycle":
        kwargs: dict[str, Any] = {"moms": tuple(moms)}
    elif kind == "stlr":
        kwargs = {"mom": moms[1]}
    else:
        kwargs = {"mom": moms[0]}
    return make_schedule(kind, n_steps, lr_max, **kwargs)


def _update_bar(bar: tqdm, metrics: _Metrics, tok_per_s: float, stage: Stage) -> None:
    bar.update(1)
    if metrics.epoch.sums and bar.n % 10 == 0:
        s = stage.summarize(metrics.epoch.sums)
        shown = {k: f"{s[k]:.3f}" for k in ("loss", stage.best_metric) if k in s}
        bar.set_postfix(**shown, tok_s=f"{tok_per_s:.0f}")


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in values.items() if isinstance(v, float))
