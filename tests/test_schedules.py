"""Schedules against fastai's own schedule functions (live) and the paper's STLR formula."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fastai.callback.schedule import SchedCos
from fastai.callback.schedule import combined_cos as fastai_combined_cos

from ulmfit_jax.optim import layer_groups, schedules


@pytest.mark.parametrize("pct_start", [0.25, 0.3, 0.99])
@pytest.mark.parametrize("moms", [(0.95, 0.85, 0.95), (0.8, 0.7, 0.8)])
def test_one_cycle_matches_fastai_combined_cos(pct_start, moms):
    total, lr_max, div, div_final = 137, 2e-2, 25.0, 1e5
    sched = schedules.OneCycle(total, lr_max, pct_start=pct_start, moms=moms)
    ref_lr = fastai_combined_cos(pct_start, lr_max / div, lr_max, lr_max / div_final)
    ref_mom = fastai_combined_cos(pct_start, *moms)
    steps = np.arange(total)
    lr, mom = jax.vmap(sched)(steps)
    # fastai holds the in-phase position in float32 (torch `pcts`): an absolute error up to
    # ~(pi/2) * 6e-8 / phase_length of lr_max, visible where the LR is tiny (near lr_max/1e5).
    atol = 2e-7 * lr_max / min(pct_start, 1 - pct_start)
    np.testing.assert_allclose(lr, [ref_lr(t / total) for t in steps], rtol=1e-6, atol=atol)
    np.testing.assert_allclose(mom, [ref_mom(t / total) for t in steps], rtol=1e-6)
    # Against fastai's float64 `SchedCos` at exact positions, ours is float32-exact throughout.
    warm, cool = SchedCos(lr_max / div, lr_max), SchedCos(lr_max, lr_max / div_final)
    exact = [warm(t / (pct_start * total)) if t < pct_start * total
             else cool((t - pct_start * total) / ((1 - pct_start) * total)) for t in steps]
    np.testing.assert_allclose(lr, exact, rtol=2e-6)


def test_one_cycle_per_group_factor_equals_fastai_per_group_schedule():
    """fastai schedules every group from its own lr_g; ours scales the peak schedule."""
    total, n_groups = 50, 5
    lr_g = layer_groups.group_lrs(slice(1e-2 / 2.6**4, 1e-2), n_groups)
    lr_max, scale = lr_g[-1], lr_g / lr_g[-1]  # what the trainer's start_phase sets
    ref = fastai_combined_cos(0.25, lr_g / 25.0, lr_g, lr_g / 1e5)
    lr, _ = jax.vmap(schedules.OneCycle(total, lr_max))(np.arange(total))
    expected = np.stack([ref(t / total) for t in range(total)])
    # Relative to each group's peak; the absolute slack is fastai's float32 position (above).
    np.testing.assert_allclose(np.asarray(lr)[:, None] * scale / lr_g, expected / lr_g,
                               rtol=1e-6, atol=1e-6)


def test_cos_anneal_matches_fastai_sched_cos():
    pos = np.linspace(0, 1, 41).astype(np.float32)  # the positions we compute with
    ref = SchedCos(3e-1, 3e-6)
    np.testing.assert_allclose(schedules.cos_anneal(3e-1, 3e-6, pos),
                               [ref(float(p)) for p in pos], rtol=1e-6)


def _paper_stlr(t, total, lr_max, cut_frac, ratio):
    """Howard & Ruder (2018), eq. 3, evaluated in float64."""
    cut = math.floor(total * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return lr_max * (1 + p * (ratio - 1)) / ratio


@pytest.mark.parametrize("total", [100, 1000, 3170])
def test_stlr_matches_paper_formula(total):
    sched = schedules.STLR(total, lr_max=0.01, cut_frac=0.1, ratio=32.0, mom=0.7)
    for t in [0, 1, total // 20, total // 10 - 1, total // 10, total // 10 + 1, total // 2,
              total - 1]:
        lr, mom = sched(t)
        assert float(lr) == pytest.approx(_paper_stlr(t, total, 0.01, 0.1, 32.0), rel=1e-6), t
        assert float(mom) == pytest.approx(0.7)
    assert float(sched(total // 10)[0]) == pytest.approx(0.01, rel=1e-6)  # the peak at cut
    assert float(sched(0)[0]) == pytest.approx(0.01 / 32, rel=1e-6)


def test_stlr_never_goes_below_the_floor():
    """With T*cut_frac not an integer the paper's p turns negative before T: we clip it."""
    total = 25  # cut = 2, decay length 18: the paper's formula is negative from t = 21 on
    assert _paper_stlr(24, total, 0.01, 0.1, 32.0) < 0
    lr = np.asarray(jax.vmap(schedules.STLR(total))(np.arange(total))[0])
    assert lr.min() == pytest.approx(0.01 / 32, rel=1e-6)
    assert np.all(lr > 0)


def test_constant_and_make_schedule():
    lr, mom = schedules.make_schedule("constant", 10, 3e-3, mom=0.8)(jnp.arange(4))
    np.testing.assert_allclose(lr, [3e-3] * 4, rtol=1e-7)
    np.testing.assert_allclose(mom, [0.8] * 4, rtol=1e-7)
    assert isinstance(schedules.make_schedule("stlr", 10, 1e-2), schedules.STLR)
    assert isinstance(schedules.make_schedule("one_cycle", 10, 1e-2), schedules.OneCycle)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        schedules.make_schedule("cosine", 10, 1e-2)
    with pytest.raises(ValueError, match="total_steps"):
        schedules.OneCycle(0, 1e-2)


def test_schedules_trace_under_jit():
    sched = schedules.OneCycle(100, 1e-2, moms=(0.8, 0.7, 0.8))
    lr, mom = jax.jit(sched)(jnp.int32(25))
    assert float(lr) == pytest.approx(1e-2, rel=1e-6)
    assert float(mom) == pytest.approx(0.7, rel=1e-6)
