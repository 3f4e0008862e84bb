"""LR finder: a toy regression sweep, divergence stop, fastai's smoothing and suggestions."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastai.callback.schedule import SchedExp, minimum, steep, valley
from fastai.learner import AvgSmoothLoss

from ulmfit_jax.optim import lr_finder


def _linear_regression_step_fn(seed: int = 0, dim: int = 10, batch: int = 256):
    """SGD on mean squared error with standard-normal features: the Hessian is ~2I, so
    plain gradient descent is best near lr 0.5 and diverges above ~1."""
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=dim)
    w = np.zeros(dim)

    def step_fn(lr: float) -> float:
        nonlocal w
        x = rng.normal(size=(batch, dim))
        y = x @ w_true + 0.1 * rng.normal(size=batch)
        residual = x @ w - y
        loss = float(np.mean(residual**2))
        w = w - lr * 2 * x.T @ residual / batch
        return loss

    return step_fn


def test_toy_regression_suggestions_are_sensible_and_plot_is_written(tmp_path):
    result = lr_finder.find_lr(_linear_regression_step_fn(), start_lr=1e-5, end_lr=100.0,
                               num_it=100)
    assert result.diverged and len(result.lrs) < 100
    assert result.lrs[-1] < 100.0
    assert set(result.suggestions) == {"valley", "minimum", "steep"}
    for name, lr in result.suggestions.items():
        assert 1e-2 <= lr <= 1.0, (name, lr)
    path = lr_finder.plot_lr_find(result, tmp_path / "plots" / "lr_find.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stops_at_first_smoothed_loss_above_four_times_best():
    losses = [1.0] * 20 + [0.5] * 10 + [2.0 ** k for k in range(1, 30)]
    seen = []

    def step_fn(lr):
        seen.append(lr)
        return losses[len(seen) - 1]

    result = lr_finder.find_lr(step_fn, num_it=len(losses))
    smoother, best, expected_stop = AvgSmoothLoss(), float("inf"), None
    for i, loss in enumerate(losses):
        smoother.accumulate(SimpleNamespace(loss=torch.tensor(loss)))
        best = min(best, float(smoother.value))
        if float(smoother.value) > 4 * best:
            expected_stop = i
            break
    assert result.diverged and len(seen) == expected_stop + 1 < len(losses)


def test_nan_loss_stops_the_sweep():
    losses = iter([1.0] * 30 + [float("nan")] + [1.0] * 100)
    result = lr_finder.find_lr(lambda lr: next(losses), num_it=100)
    assert result.diverged and len(result.lrs) == 31


def test_lr_sequence_and_smoothing_match_fastai():
    losses = np.random.default_rng(0).uniform(1, 3, size=40)
    remaining = iter(losses)
    result = lr_finder.find_lr(lambda lr: next(remaining), start_lr=1e-6, end_lr=1.0, num_it=40,
                               stop_div=False)
    sched = SchedExp(1e-6, 1.0)
    np.testing.assert_allclose(result.lrs, [sched(i / 40) for i in range(40)], rtol=1e-12)
    smoother, expected = AvgSmoothLoss(beta=0.98), []
    for loss in losses:
        smoother.accumulate(SimpleNamespace(loss=torch.tensor(float(loss))))  # fastai: float32
        expected.append(float(smoother.value))
    np.testing.assert_allclose(result.losses, expected, rtol=1e-6)
    np.testing.assert_array_equal(result.raw_losses, losses)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suggestions_match_fastai_functions(seed):
    result = lr_finder.find_lr(_linear_regression_step_fn(seed), start_lr=1e-5, end_lr=100.0,
                               num_it=100)
    lrs = torch.tensor(result.lrs[100 // 10 : -5])
    losses = torch.tensor(result.losses[100 // 10 : -5])
    for name, fastai_rule in (("valley", valley), ("minimum", minimum), ("steep", steep)):
        expected_lr, (point_lr, point_loss) = fastai_rule(lrs, losses, 100)
        assert result.suggestions[name] == pytest.approx(float(expected_lr), rel=1e-12), name
        assert result.points[name] == pytest.approx((float(point_lr), float(point_loss))), name


def test_stateful_train_step_threads_state_and_checks_the_iterator():
    def train_step(state, batch, lr):
        return state + 1, float(batch) * (1 + lr)

    calls = []
    result = lr_finder.find_lr_with_state(
        lambda s, b, lr: (calls.append(s), train_step(s, b, lr))[1], 0, itertools.repeat(1.0),
        num_it=20, stop_div=False,
    )
    assert calls == list(range(20)) and len(result.lrs) == 20
    with pytest.raises(ValueError, match="ran out"):
        lr_finder.find_lr_with_state(train_step, 0, [1.0] * 5, num_it=20)


def test_bad_arguments():
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lr_finder.find_lr(lambda lr: 1.0, start_lr=1.0, end_lr=1e-3)
    result = lr_finder.find_lr(lambda lr: 1.0, num_it=20, suggest=())
    with pytest.raises(ValueError, match="unknown LR suggestion 'best'"):
        lr_finder.suggest_lr(result, "best")
