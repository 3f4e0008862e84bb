"""Train steps: every trainable parameter moves, frozen ones don't, no recompiles, AR/TAR,
another optax optimizer under the same layer groups."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ulmfit_jax.model.awd_lstm import FASTAI_FUSED_BIAS_MULTIPLICITY
from ulmfit_jax.model.classifier import AWDLSTMClassifier
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel
from ulmfit_jax.optim import optimizer as opt
from ulmfit_jax.optim.layer_groups import classifier_layer_groups, lm_layer_groups
from ulmfit_jax.trainer import sharding
from ulmfit_jax.trainer import steps as train_step
from ulmfit_jax.trainer.train_state import ClassifierEvalState, LMEvalState

VOCAB, BATCH, TIME = 48, 4, 7
HP = {"lr": jnp.float32(1e-2), "mom": jnp.float32(0.8)}


def ulmfit_optimizer(params, spec, **kwargs):
    return opt.ulmfit_optimizer(params, spec, multiplicity=FASTAI_FUSED_BIAS_MULTIPLICITY,
                                **kwargs)


def lm_setup(alpha=2.0, beta=1.0, freeze_to=(0,), **optimizer_options):
    """One LM step per `freeze_to` (a dict by n; one step if a single n), the placed state."""
    config = AWDLSTMConfig(vocab_size=VOCAB, emb_size=8, hidden_size=12, n_layers=2)
    model = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    options = {"wd": 0.01, "clip_norm": 0.4, **optimizer_options}
    optimizer = ulmfit_optimizer(params, lm_layer_groups(2), **options)
    graphdef, state = train_step.create_lm_state(model, optimizer.transform(), BATCH)
    mesh = sharding.make_data_mesh()
    steps = {n: train_step.make_train_step(
        train_step.lm_train_step, mesh, state, graphdef=graphdef, model_config=config,
        optimizer=optimizer.transform(n), alpha=alpha, beta=beta,
    ) for n in freeze_to}
    step = steps if len(steps) > 1 else steps[freeze_to[0]]
    return step, sharding.place_state(state, mesh), optimizer.groups, mesh


def lm_batch(seed=0):
    ids = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, TIME + 1), dtype=np.int32)
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}


def copy_tree(tree):
    return jax.tree.map(np.array, tree)


def changed_paths(before, after):
    flat_b = dict(jax.tree_util.tree_leaves_with_path(before))
    return {
        jax.tree_util.keystr(path): not np.array_equal(flat_b[path], leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(after)
    }


def test_lm_step_moves_trainable_and_keeps_frozen_without_recompiling():
    steps, state, groups, mesh = lm_setup(freeze_to=(-1, 0))
    rng = jax.random.PRNGKey(0)
    state = state.replace(opt_state=opt.reset_moments(state.opt_state))  # fastai's freeze_to(-1)
    before = copy_tree(state.params)
    state, metrics = steps[-1](state, lm_batch(0), rng, HP)  # embedding + decoder only
    moved = changed_paths(before, state.params)
    for path, did_move in moved.items():
        expect = "embedding" in path or "decoder_bias" in path
        assert did_move == expect, path
    assert float(metrics["count"]) == BATCH * TIME
    assert np.isfinite(float(metrics["loss_sum"]))
    assert any(np.abs(np.asarray(h)).max() > 0 for pair in state.hidden for h in pair)

    state = state.replace(opt_state=opt.reset_moments(state.opt_state))  # fastai's unfreeze
    before = copy_tree(state.params)
    state, _ = steps[0](state, lm_batch(1), rng, HP)
    assert all(changed_paths(before, state.params).values())
    state, _ = steps[0](state, lm_batch(2), rng,
                        {"lr": jnp.float32(3e-3), "mom": jnp.float32(0.7)})
    assert int(state.step) == 3
    for step in steps.values():  # one compilation per freeze_to, whatever lr/mom
        assert step._cache_size() == 1, "a new lr/mom recompiled the step"


def test_ar_tar_change_gradient_but_not_reported_loss():
    rng = jax.random.PRNGKey(3)
    results = []
    for alpha, beta in [(0.0, 0.0), (50.0, 50.0)]:
        step, state, _, _ = lm_setup(alpha, beta)
        state, metrics = step(state, lm_batch(0), rng, HP)
        results.append((float(metrics["loss_sum"]), copy_tree(state.params)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert not np.array_equal(
        results[0][1]["encoder"]["layers"][0]["w_hh"], results[1][1]["encoder"]["layers"][0]["w_hh"]
    )


@pytest.mark.parametrize("batch, time", [(3, 5), (1, 5), (3, 1)])
def test_activation_regularization_is_fastais_rnn_regularizer(batch, time):
    import torch
    from fastai.callback.rnn import RNNRegularizer

    rng = np.random.default_rng(batch * 10 + time)
    raw, dropped = (rng.normal(size=(batch, time, 4)).astype(np.float32) for _ in range(2))
    for alpha, beta in [(2.0, 1.0), (0.0, 3.0), (1.5, 0.0)]:
        reg = RNNRegularizer(alpha=alpha, beta=beta)
        rnn = SimpleNamespace(out=torch.from_numpy(dropped), raw_out=torch.from_numpy(raw))
        reg.learn = SimpleNamespace(training=True, loss_grad=torch.zeros(()), rnn=rnn)
        reg.after_loss()
        expected = reg.learn.loss_grad.item()
        if np.isnan(expected):  # fastai's TAR over one time step (a mean of nothing); ours: 0
            assert time == 1 and batch > 1
            expected = alpha * float(np.mean(dropped.astype(np.float64)**2))
        ours = train_step.activation_regularization(jnp.asarray(raw), jnp.asarray(dropped),
                                                    alpha, beta)
        np.testing.assert_allclose(float(ours), expected, rtol=1e-6)
        # The classifier's form: only the first `length` positions count, zeros after them.
        padded = [jnp.pad(jnp.asarray(a), ((0, 0), (0, 3), (0, 0))) for a in (raw, dropped)]
        cut = train_step.activation_regularization(*padded, alpha, beta, jnp.int32(time))
        np.testing.assert_allclose(float(cut), float(ours), rtol=1e-6)


def test_lm_dropout_depends_on_step_number():
    step, state, _, _ = lm_setup()
    rng = jax.random.PRNGKey(0)
    batch = lm_batch(0)
    hidden0 = jax.tree.map(np.array, state.hidden)
    _, m0 = step(jax.tree.map(jnp.array, state.replace(hidden=hidden0)), batch, rng, HP)
    shifted = jax.tree.map(jnp.array, state).replace(step=jnp.int32(5))
    _, m5 = step(shifted, batch, rng, HP)
    assert float(m0["loss_sum"]) != float(m5["loss_sum"])


def test_lm_eval_step_is_deterministic_and_carries_state():
    config = AWDLSTMConfig(vocab_size=VOCAB, emb_size=8, hidden_size=12, n_layers=2)
    model = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    graphdef, state = train_step.create_lm_state(model, ulmfit_optimizer(
        nnx.to_pure_dict(nnx.state(model, nnx.Param)), lm_layer_groups(2)).transform(), BATCH)
    mesh = sharding.make_data_mesh()
    eval_state = LMEvalState(params=state.params, hidden=state.hidden)
    evaluate = train_step.make_lm_eval_step(mesh, eval_state, graphdef)
    s1, m1 = evaluate(eval_state, lm_batch(0))
    _, m2 = evaluate(eval_state, lm_batch(0))
    _, m3 = evaluate(s1, lm_batch(0))
    assert float(m1["loss_sum"]) == float(m2["loss_sum"])
    assert float(m1["loss_sum"]) != float(m3["loss_sum"])  # carried state changes the result


def test_classifier_step_trains_head_and_batchnorm_only_when_frozen():
    enc = AWDLSTMConfig.classifier_defaults(VOCAB, emb_size=8, hidden_size=12, n_layers=2)
    config = ClassifierConfig(encoder=enc, n_classes=3, bptt=4, max_len=8)
    model = AWDLSTMClassifier(config, rngs=nnx.Rngs(1))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    optimizer = ulmfit_optimizer(params, classifier_layer_groups(2), wd=0.01)
    graphdef, state = train_step.create_classifier_state(model, optimizer.transform())
    mesh = sharding.make_data_mesh()
    frozen_step, step = (train_step.make_train_step(
        train_step.classifier_train_step, mesh, state, graphdef=graphdef, model_config=config,
        optimizer=optimizer.transform(n), alpha=2.0, beta=1.0,
    ) for n in (-1, 0))
    state = sharding.place_state(state, mesh)
    ids = np.random.default_rng(0).integers(2, VOCAB, (BATCH, 10), dtype=np.int32)
    ids[0, :3] = 1  # a padded document
    batch = {"inputs": ids, "labels": np.array([0, 1, 2, 1], np.int32)}
    rng = jax.random.PRNGKey(0)
    state = state.replace(opt_state=opt.reset_moments(state.opt_state))  # fastai's freeze_to(-1)
    before, stats_before = copy_tree(state.params), copy_tree(state.batch_stats)
    state, metrics = frozen_step(state, batch, rng, HP)
    for path, did_move in changed_paths(before, state.params).items():
        assert did_move == ("head" in path), path
    assert all(changed_paths(stats_before, state.batch_stats).values())
    assert float(metrics["count"]) == BATCH

    state = state.replace(opt_state=opt.reset_moments(state.opt_state))  # fastai's unfreeze
    before = copy_tree(state.params)
    state, _ = step(state, batch, rng, HP)
    assert all(changed_paths(before, state.params).values())
    assert step._cache_size() == 1 and frozen_step._cache_size() == 1

    evaluate = train_step.make_classifier_eval_step(mesh, graphdef)
    eval_state = ClassifierEvalState(params=state.params, batch_stats=state.batch_stats)
    out = evaluate(eval_state, {**batch, "weights": np.array([1, 1, 1, 0], np.float32)})
    assert float(out["count"]) == 3
    np.testing.assert_allclose(np.asarray(out["probs"]).sum(-1), 1.0, rtol=1e-6)


def _classifier_setup():
    enc = AWDLSTMConfig.classifier_defaults(VOCAB, emb_size=8, hidden_size=12, n_layers=2)
    config = ClassifierConfig(encoder=enc, n_classes=3, bptt=4, max_len=8)
    model = AWDLSTMClassifier(config, rngs=nnx.Rngs(1))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    optimizer = ulmfit_optimizer(params, classifier_layer_groups(2), wd=0.01, clip_norm=0.5)
    graphdef, state = train_step.create_classifier_state(model, optimizer.transform())
    options = {"graphdef": graphdef, "model_config": config, "alpha": 2.0, "beta": 1.0}
    return optimizer, state, options


@pytest.mark.parametrize("freeze_to", [-1, -2, 1])
def test_a_step_without_frozen_gradients_updates_like_the_full_step_for_less_work(freeze_to):
    optimizer, state, options = _classifier_setup()
    mesh = sharding.make_data_mesh()
    frozen = optimizer.frozen_mask(freeze_to)
    unfrozen = train_step.make_train_step(train_step.classifier_train_step, mesh, state,
                                          optimizer=optimizer.transform(0), **options)
    options["optimizer"] = optimizer.transform(freeze_to)
    full = train_step.make_train_step(train_step.classifier_train_step, mesh, state, **options)
    cut = train_step.make_train_step(train_step.classifier_train_step, mesh, state,
                                     frozen=frozen, **options)
    ids = np.random.default_rng(0).integers(2, VOCAB, (BATCH, 10), dtype=np.int32)
    batch = {"inputs": ids, "labels": np.array([0, 1, 2, 1], np.int32)}
    args = (batch, jax.random.PRNGKey(0), HP)
    flops = [f.lower(state, *args).compile().cost_analysis()["flops"]
             for f in (unfrozen, full, cut)]
    new_full, metrics_full = full(copy_tree(state), *args)
    new_cut, metrics_cut = cut(copy_tree(state), *args)
    # Same update (clipping included: fastai's norm leaves frozen parameters out too).
    for a, b in zip(jax.tree.leaves(new_full), jax.tree.leaves(new_cut), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    assert float(metrics_cut["loss_sum"]) == pytest.approx(float(metrics_full["loss_sum"]))
    # The head-only step does no backward pass through the encoder; freezing just the
    # embedding saves only its own gradient. (At the quickstart's sizes the three ratios are
    # 0.24, 0.42 and 0.88; this tiny model's head weighs more.) The frozen optimizer zeroes
    # the frozen gradients at trace time, so XLA drops their backward pass on its own too.
    ratio = {-1: 0.7, -2: 0.95, 1: 1.0}[freeze_to]
    assert flops[2] < ratio * flops[0] and flops[1] < ratio * flops[0], flops
    assert any(jax.tree.leaves(frozen)) and not all(jax.tree.leaves(frozen))


def test_sum_metrics_count_correct_predictions_like_argmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 9, 50)).astype(np.float32)
    targets = rng.integers(0, 50, size=(6, 9))
    targets[:, :4] = logits[:, :4].argmax(-1)  # some right, the rest mostly wrong
    weights = (rng.random((6, 9)) > 0.3).astype(np.float32)
    ce = np.zeros((6, 9), np.float32)
    metrics = train_step._sum_metrics(jnp.asarray(ce), jnp.asarray(logits),
                                      jnp.asarray(targets), jnp.asarray(weights))
    expected = ((logits.argmax(-1) == targets) * weights).sum()
    assert float(metrics["correct"]) == pytest.approx(expected)
    assert float(metrics["count"]) == pytest.approx(weights.sum())


def test_another_optax_optimizer_trains_the_tiny_lm_under_the_same_groups():
    """LAMB (for large batches) in place of Adam: the same layer groups, discriminative LR
    factors, frozen groups and schedule inputs; configs/tiny.py's model and batch sizes."""
    config = AWDLSTMConfig(vocab_size=VOCAB, emb_size=16, hidden_size=32, n_layers=2)
    model = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    optimizer = ulmfit_optimizer(params, lm_layer_groups(2), wd=0.01, clip_norm=0.4,
                                 inner=optax.lamb)
    batch_size, bptt = 16, 32
    graphdef, state = train_step.create_lm_state(model, optimizer.transform(), batch_size)
    state = state.replace(opt_state=opt.set_lr_scale(state.opt_state, [0.25, 0.5, 1.0]))
    mesh = sharding.make_data_mesh()
    step = train_step.make_train_step(
        train_step.lm_train_step, mesh, state, graphdef=graphdef, model_config=config,
        optimizer=optimizer.transform(), alpha=2.0, beta=1.0)
    state = sharding.place_state(state, mesh)
    # Rows count up in steps of 5 from random starts: learnable in a few dozen steps.
    starts = np.random.default_rng(0).integers(0, VOCAB, (batch_size, 1))
    ids = ((starts + 5 * np.arange(bptt + 1)[None]) % VOCAB).astype(np.int32)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:]}
    hparams = {"lr": jnp.float32(0.1), "mom": jnp.float32(0.8)}
    losses, before = [], copy_tree(state.params)
    for t in range(40):
        state = state.replace(hidden=jax.tree.map(jnp.zeros_like, state.hidden))
        state, metrics = step(state, batch, jax.random.PRNGKey(t), hparams)
        losses.append(float(metrics["loss_sum"]) / float(metrics["count"]))
        if t == 0:  # LAMB's trust ratio: each weight moves by its group's lr times its norm
            for layer, scale in ((0, 0.25), (1, 0.5)):
                w0 = before["encoder"]["layers"][layer]["w_hh"]
                w1 = np.asarray(state.params["encoder"]["layers"][layer]["w_hh"])
                ratio = np.linalg.norm(w1 - w0) / np.linalg.norm(w0)
                assert ratio == pytest.approx(0.1 * scale, rel=0.02)
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses
    assert step._cache_size() == 1
