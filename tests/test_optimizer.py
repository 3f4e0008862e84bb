"""Layer groups, discriminative LRs, frozen groups per phase, and parity with fastai's Adam."""

import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from fastai.optimizer import Adam as FastaiAdam
from fastai.optimizer import Optimizer as FastaiOptimizer
from fastai.optimizer import sgd_step
from fastai.text.all import (
    AWD_LSTM,
    CrossEntropyLossFlat,
    Learner,
    awd_lstm_clas_config,
    awd_lstm_clas_split,
    awd_lstm_lm_config,
    awd_lstm_lm_split,
    get_language_model,
    get_text_classifier,
)
from fastai.torch_core import even_mults as fastai_even_mults

from ulmfit_jax.model.awd_lstm import FASTAI_FUSED_BIAS_MULTIPLICITY
from ulmfit_jax.optim import layer_groups as lg
from ulmfit_jax.optim import optimizer as opt
from ulmfit_jax.tree_paths import match_paths, path_strings

VOCAB, EMB, HID, N_LAYERS, N_CLASSES = 10, 4, 6, 3, 3


def _lstm_layers(rng):
    """Encoder layer shapes as in ARCHITECTURE.md (last layer width = emb)."""
    layers = {}
    for l in range(N_LAYERS):
        d_in, d_hid = (EMB if l == 0 else HID), (EMB if l == N_LAYERS - 1 else HID)
        layers[l] = {
            "w_ih": rng.uniform(-1, 1, (d_in, 4 * d_hid)),
            "w_hh": rng.uniform(-1, 1, (d_hid, 4 * d_hid)),
            "bias": rng.uniform(-1, 1, (4 * d_hid,)),
        }
    return layers


def make_params(kind: str, seed: int = 0) -> dict:
    """A small parameter tree with the paths of ARCHITECTURE.md, float32 numpy leaves."""
    rng = np.random.default_rng(seed)
    encoder = {"embedding": rng.uniform(-1, 1, (VOCAB, EMB)), "layers": _lstm_layers(rng)}
    if kind == "lm":
        tree = {"encoder": encoder, "decoder_bias": rng.uniform(-1, 1, (VOCAB,))}
    else:
        widths = [3 * EMB, 5, N_CLASSES]
        blocks = {
            k: {
                "batch_norm": {
                    "scale": rng.uniform(0.5, 1.5, (widths[k],)),
                    "bias": rng.uniform(-1, 1, (widths[k],)),
                },
                "linear": {"kernel": rng.uniform(-1, 1, (widths[k], widths[k + 1]))},
            }
            for k in range(2)
        }
        tree = {"encoder": encoder, "head": {"blocks": blocks}}
    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


def spec_for(kind: str):
    if kind == "lm":
        return lg.lm_layer_groups(N_LAYERS)
    return lg.classifier_layer_groups(N_LAYERS)


def flat_paths(tree) -> dict:
    return dict(
        zip(jax.tree.leaves(path_strings(tree)), jax.tree.leaves(tree), strict=True)
    )


# ---------------------------------------------------------------- layer groups


def test_lm_groups_assignment_and_logged_table(caplog):
    params = make_params("lm")
    with caplog.at_level(logging.INFO, logger="ulmfit_jax.optim.layer_groups"):
        groups = lg.assign_layer_groups(params, lg.lm_layer_groups(N_LAYERS))
    assert groups.names == ("lstm0", "lstm1", "lstm2", "embedding")
    labels = flat_paths(groups.labels)
    assert labels["encoder/embedding"] == 3 and labels["decoder_bias"] == 3
    for l in range(N_LAYERS):
        for name in ("w_ih", "w_hh", "bias"):
            assert labels[f"encoder/layers/{l}/{name}"] == l
    assert groups.table in caplog.text
    assert re.search(r"encoder/layers/1/w_hh\s+\(6, 24\)\s+1:lstm1", groups.table)
    assert re.search(r"decoder_bias\s+\(10,\)\s+3:embedding", groups.table)


def test_classifier_groups_assignment():
    groups = lg.assign_layer_groups(make_params("clf"), lg.classifier_layer_groups(N_LAYERS))
    assert groups.names == ("embedding", "lstm0", "lstm1", "lstm2", "head")
    labels = flat_paths(groups.labels)
    assert labels["encoder/embedding"] == 0
    assert labels["encoder/layers/2/bias"] == 3
    assert labels["head/blocks/0/batch_norm/scale"] == 4
    assert labels["head/blocks/1/linear/kernel"] == 4


def test_uncovered_parameter_is_an_error_naming_its_path():
    params = make_params("lm")
    params["extra"] = {"weird": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="extra/weird"):
        lg.assign_layer_groups(params, lg.lm_layer_groups(N_LAYERS))


def test_group_covering_nothing_is_an_error():
    with pytest.raises(ValueError, match="lstm3"):
        lg.assign_layer_groups(make_params("lm"), lg.lm_layer_groups(N_LAYERS + 1))


def test_first_match_wins():
    spec = [("bias_first", r".*/bias"), ("rest", r".*")]
    groups = lg.assign_layer_groups(make_params("lm"), spec)
    labels = flat_paths(groups.labels)
    assert labels["encoder/layers/0/bias"] == 0
    assert labels["encoder/layers/0/w_ih"] == 1
    assert labels["decoder_bias"] == 1  # 'decoder_bias' has no '/bias' component


# ---------------------------------------------------------------- discriminative LRs


@pytest.mark.parametrize(
    "lr", [3e-3, slice(1e-5, 1e-2), slice(2e-3), [1e-4, 2e-4, 3e-4, 4e-4, 5e-4]]
)
def test_group_lrs_match_fastai_set_hyper(lr):
    n = 5
    fastai_opt = FastaiOptimizer([[torch.zeros(1)] for _ in range(n)], [sgd_step], lr=0.1)
    fastai_opt.set_hyper("lr", lr)
    expected = [h["lr"] for h in fastai_opt.hypers]
    np.testing.assert_allclose(lg.group_lrs(lr, n), expected, rtol=1e-15)


def test_paper_factor_equals_fastai_slice_recipe():
    """The recipe slice(lr/2.6**4, lr) over 5 groups is the paper's 'divide by 2.6' rule."""
    lr = 1e-2
    paper = [lr / 2.6 ** (5 - 1 - g) for g in range(5)]  # group g = the one above / 2.6
    np.testing.assert_allclose(paper, fastai_even_mults(lr / 2.6**4, lr, 5), rtol=1e-12)
    np.testing.assert_allclose(lg.group_lrs(slice(lr / 2.6**4, lr), 5), paper, rtol=1e-12)
    np.testing.assert_allclose(lg.even_mults(1e-5, 1e-2, 4), fastai_even_mults(1e-5, 1e-2, 4))


def test_lr_factors_and_bad_lengths():
    lrs = lg.group_lrs(slice(1e-4, 1e-2), 3)
    assert lrs[-1] == pytest.approx(1e-2)  # the schedule's peak; factors are lrs / lrs[-1]
    with pytest.raises(ValueError, match="2 learning rates for 3 layer groups"):
        lg.group_lrs([1e-3, 1e-2], 3)
    with pytest.raises(ValueError, match="out of range"):
        lg.trainable_groups(4, -5)


# ---------------------------------------------------------------- fastai's rules, live


def _fastai_name_to_path(name: str) -> str:
    """fastai v2 parameter names -> our paths (both LSTM biases map to our fused bias)."""
    name = name.removeprefix("0.module.").removeprefix("0.")
    rules = [
        (r"encoder\.weight", "encoder/embedding"),
        (r"1\.decoder\.bias", "decoder_bias"),
        (r"rnns\.(\d+)\.weight_hh_l0_raw", r"encoder/layers/\1/w_hh"),
        (r"rnns\.(\d+)\.module\.weight_ih_l0", r"encoder/layers/\1/w_ih"),
        (r"rnns\.(\d+)\.module\.bias_[ih]h_l0", r"encoder/layers/\1/bias"),
        (r"1\.layers\.(\d+)\.0\.weight", r"head/blocks/\1/batch_norm/scale"),
        (r"1\.layers\.(\d+)\.0\.bias", r"head/blocks/\1/batch_norm/bias"),
        (r"1\.layers\.(\d+)\.2\.weight", r"head/blocks/\1/linear/kernel"),
    ]
    for pattern, repl in rules:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    raise AssertionError(f"unmapped fastai parameter {name}")


def _fastai_learner(kind: str) -> Learner:
    if kind == "lm":
        config = {**awd_lstm_lm_config, "emb_sz": EMB, "n_hid": HID, "n_layers": N_LAYERS}
        model = get_language_model(AWD_LSTM, VOCAB, config=config)
        splitter = awd_lstm_lm_split
    else:
        config = {**awd_lstm_clas_config, "emb_sz": EMB, "n_hid": HID, "n_layers": N_LAYERS}
        model = get_text_classifier(AWD_LSTM, VOCAB, N_CLASSES, config=config, lin_ftrs=[5])
        splitter = awd_lstm_clas_split
    learn = Learner(None, model, loss_func=CrossEntropyLossFlat(), splitter=splitter,
                    opt_func=FastaiAdam)
    learn.create_opt()
    return learn


@pytest.mark.parametrize("kind", ["lm", "clf"])
def test_groups_decay_and_train_bn_rules_match_fastai_learner(kind):
    learn = _fastai_learner(kind)
    names = {id(p): n for n, p in learn.model.named_parameters()}
    params = make_params(kind)
    ours_group = flat_paths(lg.assign_layer_groups(params, spec_for(kind)).labels)
    ours_decay = flat_paths(match_paths(params, opt.FASTAI_NO_DECAY))
    ours_force = flat_paths(match_paths(params, opt.FASTAI_FORCE_TRAIN))
    seen = set()
    for group, plist in enumerate(learn.opt.param_lists):
        for p in plist:
            path = _fastai_name_to_path(names[id(p)])
            seen.add(path)
            state = learn.opt.state[p]
            assert ours_group[path] == group, path
            assert (not ours_decay[path]) == state.get("do_wd", True), path
            assert ours_force[path] == state.get("force_train", False), path
    assert seen == set(ours_group)
    assert not flat_paths(match_paths(params, opt.FASTAI_NO_DECAY))["encoder/layers/0/bias"]


# ---------------------------------------------------------------- parity with fastai Adam


def _phases(n_groups):
    """(freeze_to argument, steps): all frozen (only train_bn params move), then fastai's
    gradual unfreezing."""
    return [(n_groups, 1), (-1, 2), (-2, 2), (0, 3)]


def _torch_side(params, groups):
    """fastai parameter lists: our fused LSTM bias becomes two tensors (bias_ih, bias_hh)."""
    tensors, lists = {}, [[] for _ in groups.names]
    for path, value in flat_paths(params).items():
        fused = re.search(r"layers/\d+/bias$", path)
        parts = [value * 0.25, value * 0.75] if fused else [value]
        tensors[path] = [torch.tensor(np.array(v, np.float32)) for v in parts]
        lists[flat_paths(groups.labels)[path]].extend(tensors[path])
    return tensors, lists


def _optimizer(params, kind, **kwargs):
    return opt.ulmfit_optimizer(params, spec_for(kind),
                                multiplicity=FASTAI_FUSED_BIAS_MULTIPLICITY, **kwargs)


def _jit_update(tx):
    """One jitted update; the scheduled lr and mom go in as data."""
    return jax.jit(lambda g, s, p, lr, mom: tx.update(g, opt.set_schedule(s, lr, mom), p))


@pytest.mark.parametrize("kind", ["lm", "clf"])
@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_matches_fastai_adam_with_freezing(kind, clip_norm):
    wd, sqr_mom, eps = 0.1, 0.99, 1e-5
    params = make_params(kind)
    optimizer = _optimizer(params, kind, wd=wd, sqr_mom=sqr_mom, eps=eps, clip_norm=clip_norm)
    groups = optimizer.groups
    decay = flat_paths(jax.tree.map(lambda m: not m, match_paths(params, opt.FASTAI_NO_DECAY)))
    force = flat_paths(match_paths(params, opt.FASTAI_FORCE_TRAIN))
    tensors, lists = _torch_side(params, groups)
    fast = FastaiAdam(lists, lr=1e-3, mom=0.9, sqr_mom=sqr_mom, eps=eps, wd=wd)
    for path, ts in tensors.items():
        for t in ts:
            fast.state[t]["do_wd"], fast.state[t]["force_train"] = decay[path], force[path]

    n = groups.n_groups
    lrs = lg.group_lrs(slice(3e-2 / 2.6 ** (n - 1), 3e-2), n)
    lr_max, scale = lrs[-1], lrs / lrs[-1]
    jparams = jax.tree.map(jnp.asarray, params)
    state = opt.set_lr_scale(optimizer.init(jparams), scale)
    rng = np.random.default_rng(1)
    step = 0
    for freeze_arg, n_steps in _phases(n):
        fast.freeze_to(freeze_arg)
        fast.clear_state()  # fastai's Learner.freeze_to
        state = opt.reset_moments(state)
        update = _jit_update(optimizer.transform(freeze_arg))  # one compiled step per phase
        for _ in range(n_steps):
            lr_t, mom_t = lr_max * (0.3 + 0.1 * step), 0.8 - 0.02 * step
            grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
            for path, g in flat_paths(grads).items():
                for t in tensors[path]:
                    t.grad = torch.tensor(g) if t.requires_grad else None
            if clip_norm is not None:
                all_tensors = [t for ts in tensors.values() for t in ts]
                torch.nn.utils.clip_grad_norm_(all_tensors, clip_norm)
            fast.set_hyper("lr", slice(lr_t / 2.6 ** (n - 1), lr_t))
            fast.set_hyper("mom", mom_t)
            fast.step()
            updates, state = update(grads, state, jparams, lr_t, mom_t)
            jparams = jax.tree.map(lambda p, u: p + u, jparams, updates)
            step += 1
            for path, ours in flat_paths(jparams).items():
                theirs = sum(t.detach().numpy().astype(np.float64) for t in tensors[path])
                np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7,
                                           err_msg=f"{path} step {step}")
        assert update._cache_size() == 1  # a new lr/mom never recompiles


# ---------------------------------------------------------------- frozen groups, one step each


def test_frozen_params_get_exactly_zero_update_and_the_state_keeps_its_structure():
    params = jax.tree.map(jnp.asarray, make_params("clf"))
    optimizer = _optimizer(params, "clf", wd=0.1, clip_norm=1.0)
    labels = flat_paths(optimizer.groups.labels)
    force = flat_paths(match_paths(params, opt.FASTAI_FORCE_TRAIN))
    grads = jax.tree.map(jnp.ones_like, params)
    state = opt.set_lr_scale(optimizer.init(params), lg.group_lrs(slice(1e-4, 1e-2), 5) / 1e-2)
    structure = jax.tree.structure(state)
    for n in (-1, -2, -3, 0, -4, 5):
        update = _jit_update(optimizer.transform(n))
        state = opt.reset_moments(state)
        for lr in (1e-2, 3e-3):  # two steps: the second with moments and a new lr, no recompile
            updates, state = update(grads, state, params, lr, 0.8)
        assert jax.tree.structure(state) == structure, n
        trainable = lg.trainable_groups(5, n)
        frozen = flat_paths(optimizer.frozen_mask(n))
        for path, u in flat_paths(updates).items():
            moved = bool(trainable[labels[path]]) or force[path]
            assert frozen[path] == (not moved), (n, path)
            assert np.all(np.asarray(u) != 0) if moved else np.all(np.asarray(u) == 0), (n, path)
        moments = [leaf for leaf in jax.tree.leaves(opt.schedule_state(state).inner_state)
                   if np.ndim(leaf) > 0]
        assert any(np.any(np.asarray(m) != 0) for m in moments)
        assert update._cache_size() == 1


def test_reset_moments_zeroes_moments_and_counts_and_keeps_lr_factors():
    params = jax.tree.map(jnp.asarray, make_params("lm"))
    optimizer = _optimizer(params, "lm")
    state = opt.set_lr_scale(optimizer.init(params), [0.1, 0.2, 0.5, 1.0])
    _, state = optimizer.transform().update(
        jax.tree.map(jnp.ones_like, params), opt.set_schedule(state, 1e-3, 0.9), params)
    assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(state[1].inner_state))
    state = opt.reset_moments(state)
    for leaf in jax.tree.leaves(state[1].inner_state):
        assert not np.any(np.asarray(leaf))
    np.testing.assert_array_equal(state[1].hyperparams["lr_scale"],
                                  np.float32([0.1, 0.2, 0.5, 1.0]))
    assert opt.n_groups(state) == 4


def test_update_without_params_is_a_clear_error():
    params = jax.tree.map(jnp.asarray, make_params("lm"))
    tx = _optimizer(params, "lm").transform()
    with pytest.raises(ValueError, match="requires the current value of parameters"):
        tx.update(params, tx.init(params), None)


def test_freezing_and_lr_scales_reach_the_optimizer_state_inside_a_chain():
    params = jax.tree.map(jnp.asarray, make_params("lm"))
    optimizer = _optimizer(params, "lm")
    adam = optimizer.transform(-1)
    chained = optax.chain(optax.scale(1.0), adam)
    grads = jax.tree.map(jnp.ones_like, params)
    plain_state = opt.set_lr_scale(adam.init(params), [0.1, 0.2, 0.5, 1.0])
    chain_state = opt.set_lr_scale(chained.init(params), [0.1, 0.2, 0.5, 1.0])
    assert isinstance(chain_state, tuple) and opt.n_groups(chain_state) == 4
    plain, _ = adam.update(grads, opt.set_schedule(plain_state, 1e-2, 0.8), params)
    wrapped, _ = chained.update(grads, opt.set_schedule(chain_state, 1e-2, 0.8), params)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(wrapped), strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.all(np.asarray(wrapped["encoder"]["layers"][0]["w_ih"]) == 0)  # frozen group
    assert np.all(np.asarray(wrapped["encoder"]["embedding"]) != 0)


def test_optimizer_functions_refuse_a_state_without_layer_groups():
    params = jax.tree.map(jnp.asarray, make_params("lm"))
    with pytest.raises(ValueError, match="exactly one LayerGroupOptimizer state, found 0"):
        opt.reset_moments(optax.adam(1e-3).init(params))


def test_fused_bias_rule_is_the_callers_choice():
    """No multiplicity is assumed: without the AWD-LSTM rule a layer bias is an ordinary
    parameter (a new encoder's `encoder/layers/N/bias` is not silently doubled)."""
    params = make_params("lm")
    with pytest.raises(TypeError, match="multiplicity"):
        opt.ulmfit_optimizer(params, spec_for("lm"))  # type: ignore[call-arg]
    plain = opt.ulmfit_optimizer(params, spec_for("lm"), multiplicity=())
    fused = _optimizer(params, "lm")
    assert flat_paths(plain.multiplicity)["encoder/layers/0/bias"] == 1.0
    assert flat_paths(fused.multiplicity)["encoder/layers/0/bias"] == 2.0
    assert flat_paths(fused.multiplicity)["encoder/layers/0/w_ih"] == 1.0
