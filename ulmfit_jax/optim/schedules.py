"""Learning-rate and momentum schedules: STLR (the paper), one-cycle (fastai v2), constant.

A schedule is called with the step number (0-based; a Python int, numpy or traced jnp value)
and returns `(lr, mom)` as float32 arrays. `lr` is the peak-group LR; the optimizer multiplies
it by each layer group's factor (`optimizer.set_lr_scale`), which reproduces fastai's per-group
schedules exactly because every schedule here is proportional to its `lr_max`.

Call a schedule on the host and pass `lr`/`mom` into the jitted step as arrays: then a new
schedule (next unfreezing phase, new `lr_max`) never recompiles the step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Protocol

import jax
import jax.numpy as jnp


class Schedule(Protocol):
    """step -> (learning rate, momentum beta1)."""

    def __call__(self, step: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]: ...


def cos_anneal(start: float, end: float, pos: jax.typing.ArrayLike) -> jax.Array:
    """fastai's `SchedCos`: start + (1 + cos(pi*(1-pos))) * (end-start)/2, for pos in [0, 1].

    Written as start*cos^2(pi*pos/2) + end*sin^2(pi*pos/2), the same function without the
    cancellation that would cost float32 its precision near `end` = lr_max/1e5; the cosine
    near pos=1 is taken as sin(pi*(1-pos)/2) (1-pos is exact there) for the same reason.
    """
    pos = jnp.asarray(pos, jnp.float32)
    near, far = (jnp.pi / 2) * pos, (jnp.pi / 2) * (1 - pos)
    cos = jnp.where(pos > 0.5, jnp.sin(far), jnp.cos(near))
    sin = jnp.where(pos < 0.5, jnp.sin(near), jnp.cos(far))
    return start * cos**2 + end * sin**2


def combined_cos(
    pos: jax.typing.ArrayLike, pct: float, start: float, middle: float, end: float
) -> jax.Array:
    """fastai's `combined_cos(pct, start, middle, end)(pos)`: cosine start->middle over
    [0, pct), then middle->end over [pct, 1]."""
    if not 0.0 <= pct <= 1.0:
        raise ValueError(f"pct must be in [0, 1], got {pct}")
    pos = jnp.asarray(pos, jnp.float32)
    first = cos_anneal(start, middle, pos / max(pct, 1e-12))
    second = cos_anneal(middle, end, (pos - pct) / max(1.0 - pct, 1e-12))
    return jnp.where(pos >= pct, second, first)


def one_cycle_value(
    step: jax.typing.ArrayLike, total_steps: int, pct: float, start: float, middle: float,
    end: float,
) -> jax.Array:
    """`combined_cos(step/total_steps, pct, start, middle, end)`, computed from step counts.

    The decay is evaluated from the steps *remaining* (end <- middle), so the last steps near
    lr_max/1e5 keep float32's relative precision instead of losing it in 1 - pos.
    """
    t = jnp.asarray(step, jnp.float32)
    warm = pct * total_steps
    rise = cos_anneal(start, middle, t / max(warm, 1e-12))
    remaining = (total_steps - t) / max(total_steps - warm, 1e-12)
    return jnp.where(t >= warm, cos_anneal(end, middle, remaining), rise)


def _check_total(total_steps: int) -> None:
    if int(total_steps) < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")


@dataclasses.dataclass(frozen=True)
class OneCycle:
    """fastai's `fit_one_cycle`: LR cosine warm-up from lr_max/div to lr_max over `pct_start`
    of the steps, then cosine down to lr_max/div_final; momentum cycles moms[0]->[1]->[2].

    fastai's `Learner` default moms are (0.95, 0.85, 0.95); its text recipes use (0.8, 0.7, 0.8).
    Step t of `total_steps` is at position t/total_steps, as fastai's `pct_train`.
    """

    total_steps: int
    lr_max: float
    pct_start: float = 0.25
    div: float = 25.0
    div_final: float = 1e5
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95)

    def __post_init__(self):
        _check_total(self.total_steps)
        if not 0.0 <= self.pct_start <= 1.0:
            raise ValueError(f"pct_start must be in [0, 1], got {self.pct_start}")

    def __call__(self, step: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
        lr_max, total, pct = self.lr_max, self.total_steps, self.pct_start
        lr = one_cycle_value(step, total, pct, lr_max / self.div, lr_max, lr_max / self.div_final)
        return lr, one_cycle_value(step, total, pct, *self.moms)


def stlr_lr(
    step: jax.typing.ArrayLike,
    total_steps: int,
    lr_max: float = 0.01,
    cut_frac: float = 0.1,
    ratio: float = 32.0,
) -> jax.Array:
    """Slanted triangular LR (paper eq. 3): linear rise for `cut` steps, then linear decay.

    cut = floor(T*cut_frac) (at least 1, so tiny runs still work); p = t/cut for t < cut, else
    1 - (t-cut)/(cut*(1/cut_frac - 1)); lr = lr_max*(1 + p*(ratio-1))/ratio. When T*cut_frac
    is not an integer the paper's p goes negative before step T (a negative LR), so p is
    clipped at 0: the LR then stays at lr_max/ratio.
    """
    _check_total(total_steps)
    cut = max(math.floor(total_steps * cut_frac), 1)
    decay_len = cut * (1 / cut_frac - 1)
    t = jnp.asarray(step, jnp.float32)
    p = jnp.where(t < cut, t / cut, 1 - (t - cut) / decay_len)
    p = jnp.maximum(p, 0.0)
    return lr_max * (1 + p * (ratio - 1)) / ratio


@dataclasses.dataclass(frozen=True)
class STLR:
    """The paper's slanted triangular LR with a constant momentum (paper: Adam beta1 0.7)."""

    total_steps: int
    lr_max: float = 0.01
    cut_frac: float = 0.1
    ratio: float = 32.0
    mom: float = 0.7

    def __post_init__(self):
        _check_total(self.total_steps)
        if not 0.0 < self.cut_frac < 1.0:
            raise ValueError(f"cut_frac must be in (0, 1), got {self.cut_frac}")

    def __call__(self, step: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
        lr = stlr_lr(step, self.total_steps, self.lr_max, self.cut_frac, self.ratio)
        return lr, jnp.full_like(lr, self.mom)


@dataclasses.dataclass(frozen=True)
class Constant:
    """A constant LR and momentum (fastai's `fit`)."""

    lr: float
    mom: float = 0.9

    def __call__(self, step: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
        zero = jnp.zeros_like(jnp.asarray(step, jnp.float32))
        return zero + self.lr, zero + self.mom


def make_schedule(name: str, total_steps: int, lr_max: float, **kwargs) -> Schedule:
    """Schedule by config name: 'one_cycle', 'stlr' or 'constant' (kwargs go to the class)."""
    if name == "one_cycle":
        return OneCycle(total_steps, lr_max, **kwargs)
    if name == "stlr":
        return STLR(total_steps, lr_max, **kwargs)
    if name == "constant":
        return Constant(lr_max, **kwargs)
    raise ValueError(f"unknown schedule {name!r}; expected 'one_cycle', 'stlr' or 'constant'")
