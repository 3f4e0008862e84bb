"""Learning-rate finder (fastai's `lr_find`): train a few steps with an exponentially growing
LR, record the smoothed loss, stop when it diverges, suggest an LR and plot loss vs LR.

Generic: `find_lr` drives any `step_fn(lr) -> loss`; `find_lr_with_state` adapts a pure
`(state, batch, lr) -> (state, loss)` train step and a batch iterator. The caller keeps its
original state (JAX is functional), which is fastai's "restore the model afterwards".
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SUGGESTION_METHODS = ("valley", "minimum", "steep")


@dataclasses.dataclass
class LRFinderResult:
    """What the sweep saw. `lrs`, `losses` (smoothed) and `raw_losses` are [steps] arrays."""

    lrs: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    diverged: bool
    num_it: int
    suggestions: dict[str, float]
    points: dict[str, tuple[float, float]]


def exponential_lr(step: int, start_lr: float, end_lr: float, num_it: int) -> float:
    """fastai's `SchedExp` at position step/num_it: start_lr * (end_lr/start_lr)**(step/num_it)."""
    return start_lr * (end_lr / start_lr) ** (step / num_it)


class SmoothedLoss:
    """fastai's `AvgSmoothLoss`: exponential moving average with debiasing (beta 0.98)."""

    def __init__(self, beta: float = 0.98):
        self.beta, self.count, self.avg = beta, 0, 0.0

    def update(self, loss: float) -> float:
        """Adds one loss and returns the debiased average."""
        self.count += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        return self.avg / (1 - self.beta**self.count)


def find_lr(
    step_fn: Callable[[float], Any],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    beta: float = 0.98,
    suggest: Iterable[str] = SUGGESTION_METHODS,
) -> LRFinderResult:
    """Runs `step_fn(lr)` (one training step at `lr`, returning its loss) for up to `num_it`
    steps with lr growing from `start_lr` towards `end_lr` (fastai's schedule: the last step's
    lr is start*(end/start)**((num_it-1)/num_it)).

    Stops early when the smoothed loss exceeds 4x the best smoothed loss so far, or is not
    finite (fastai's check `nan > 4*best` is False and would carry on).
    """
    if num_it < 6:
        num_it = 6  # as fastai: the suggestions drop the first num_it//10 and last 5 points
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
    smoother, best = SmoothedLoss(beta), math.inf
    lrs, losses, raw = [], [], []
    diverged = False
    for step in range(num_it):
        lr = exponential_lr(step, start_lr, end_lr, num_it)
        loss = float(step_fn(lr))
        smooth = smoother.update(loss)
        lrs.append(lr)
        losses.append(smooth)
        raw.append(loss)
        best = min(best, smooth)
        if stop_div and (not math.isfinite(smooth) or smooth > 4 * best):
            diverged = True
            break
    result = LRFinderResult(
        np.array(lrs), np.array(losses), np.array(raw), diverged, num_it, {}, {}
    )
    if len(result.lrs) < num_it // 10 + 7:
        logger.warning("LR sweep stopped after %d steps: too few for suggestions", len(lrs))
        return result
    for name in suggest:
        result.suggestions[name], result.points[name] = suggest_lr(result, name)
    return result


def find_lr_with_state(
    train_step: Callable[[Any, Any, float], tuple[Any, Any]],
    state: Any,
    batches: Iterable[Any],
    **kwargs,
) -> LRFinderResult:
    """`find_lr` for a pure step `(state, batch, lr) -> (state, loss)` and a batch iterator.

    The iterator must yield at least `num_it` batches (cycle it for small datasets).
    """
    iterator = iter(batches)
    holder = {"state": state}

    def step_fn(lr: float) -> Any:
        try:
            batch = next(iterator)
        except StopIteration:
            raise ValueError("the batch iterator ran out before the LR sweep ended") from None
        holder["state"], loss = train_step(holder["state"], batch, lr)
        return loss

    return find_lr(step_fn, **kwargs)


def _trimmed(result: LRFinderResult) -> tuple[np.ndarray, np.ndarray]:
    """fastai's `lr_find` view: drop the first num_it//10 and last 5 points, cut at a NaN."""
    lrs = result.lrs[result.num_it // 10 : -5]
    losses = result.losses[result.num_it // 10 : -5]
    nans = np.flatnonzero(np.isnan(losses))
    if nans.size:
        lrs, losses = lrs[: nans[0]], losses[: nans[0]]
    if lrs.size < 2:
        raise ValueError(
            f"LR sweep too short for a suggestion: {result.lrs.size} steps recorded "
            "(it diverged early: lower start_lr or raise num_it)"
        )
    return lrs, losses


def suggest_lr(result: LRFinderResult, method: str) -> tuple[float, tuple[float, float]]:
    """Suggested LR and the (lr, loss) point to mark on the plot, by fastai's rules:

    - 'minimum': one tenth of the LR at the lowest smoothed loss;
    - 'steep': the LR where the loss falls fastest per log-LR;
    - 'valley' (fastai's default): within the longest stretch of decreasing loss, the point
      half way through its second third.
    """
    lrs, losses = _trimmed(result)
    rules = {"minimum": suggest_minimum, "steep": suggest_steep, "valley": suggest_valley}
    if method not in rules:
        raise ValueError(f"unknown LR suggestion {method!r}; expected one of {sorted(rules)}")
    return rules[method](lrs, losses)


def _loss_nearest(lrs: np.ndarray, losses: np.ndarray, lr: float) -> float:
    return float(losses[int(np.argmin(np.abs(lrs - lr)))])


def suggest_minimum(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, tuple[float, float]]:
    """fastai's `minimum`: lr_at_min_loss / 10 (the point marks the minimum itself)."""
    lr_min = float(lrs[int(np.argmin(losses))])
    return lr_min / 10, (lr_min, _loss_nearest(lrs, losses, lr_min))


def suggest_steep(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, tuple[float, float]]:
    """fastai's `steep`: argmin of d(loss)/d(log lr), by forward differences."""
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    lr_steep = float(lrs[int(np.argmin(slopes))])
    return lr_steep, (lr_steep, _loss_nearest(lrs, losses, lr_steep))


def suggest_valley(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, tuple[float, float]]:
    """fastai's `valley`: longest decreasing subsequence of the loss, then the index
    start + int(len/3) + int(len/6) in it."""
    n = len(losses)
    run = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
            if run[max_end] < run[i]:
                max_end, max_start = i, i - run[i]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx]), (float(lrs[idx]), float(losses[idx]))


def plot_lr_find(
    result: LRFinderResult, path: str | Path, skip_end: int = 5
) -> Path:
    """Writes a PNG of smoothed loss vs LR (log x) with the suggestions marked; returns path."""
    # A bare Figure renders with Agg and leaves pyplot's global backend alone.
    from matplotlib.figure import Figure

    end = len(result.lrs) - skip_end if skip_end else len(result.lrs)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots(1, 1)
    ax.plot(result.lrs[:end], result.losses[:end])
    for name, (lr, loss) in result.points.items():
        ax.plot(lr, loss, "o", label=f"{name}: {result.suggestions[name]:.2e}")
    if result.points:
        ax.legend(loc="best")
    ax.set_xscale("log")
    ax.set_xlabel("Learning rate")
    ax.set_ylabel("Smoothed loss")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path
