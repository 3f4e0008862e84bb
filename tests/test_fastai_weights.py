"""fastai state dict <-> parameter trees: round trips, fastai's key order, strict errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.fastai_reference import fastai_classifier, fastai_lm, state_dict_numpy
from ulmfit_jax.convert import fastai_layout as layout
from ulmfit_jax.convert.fastai_weights import (
    classifier_params_from_fastai,
    classifier_params_to_fastai,
    encoder_params_from_fastai,
    encoder_params_to_fastai,
    lm_params_from_fastai,
    lm_params_to_fastai,
)


def _load_into(model: torch.nn.Module, state: dict) -> None:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})


def _assert_same_model(a: torch.nn.Module, b: torch.nn.Module, ids: torch.Tensor) -> None:
    for m in (a, b):
        m.eval()
        m.reset()
    with torch.no_grad():
        np.testing.assert_allclose(a(ids)[0].numpy(), b(ids)[0].numpy(), atol=1e-6)


def test_lm_round_trip_keeps_fastai_order_and_outputs():
    model = fastai_lm(vocab=23, emb=6, hidden=10, n_layers=3, seed=0)
    original = state_dict_numpy(model)
    config, params = lm_params_from_fastai(original)
    sizes = (config.vocab_size, config.emb_size, config.hidden_size, config.n_layers)
    assert sizes == (23, 6, 10, 3)
    assert params["encoder"]["layers"][1]["w_ih"].shape == (10, 40)
    exported = lm_params_to_fastai(params)
    assert list(exported) == list(original)  # load_pretrained copies by position
    fresh = fastai_lm(vocab=23, emb=6, hidden=10, n_layers=3, seed=1)
    _load_into(fresh, exported)
    _assert_same_model(model, fresh, torch.randint(0, 23, (2, 7)))
    _, again = lm_params_from_fastai(exported)
    for l in range(3):
        np.testing.assert_array_equal(again["encoder"]["layers"][l]["bias"],
                                      params["encoder"]["layers"][l]["bias"])


def test_encoder_layout_matches_save_encoder():
    model = fastai_lm(vocab=19, emb=6, hidden=10, n_layers=2)
    original = state_dict_numpy(model[0])  # what save_encoder writes
    config, encoder = encoder_params_from_fastai(original)
    assert config.n_layers == 2
    exported = encoder_params_to_fastai(encoder)
    assert list(exported) == list(original)
    fresh = fastai_lm(vocab=19, emb=6, hidden=10, n_layers=2, seed=1)
    fresh[0].load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()})
    fresh[1].decoder.bias.data.copy_(model[1].decoder.bias.data)
    _assert_same_model(model, fresh, torch.randint(0, 19, (2, 5)))


def test_classifier_round_trip_with_batch_norm_stats():
    model = fastai_classifier(29, emb=6, hidden=10, n_layers=3, n_classes=4, bptt=5, max_len=10)
    original = state_dict_numpy(model)
    config, state = classifier_params_from_fastai(original, bptt=5, max_len=10)
    assert config.n_classes == 4 and config.head_sizes == (50,)
    assert state["head"]["blocks"][0]["linear"]["kernel"].shape == (18, 50)
    exported = classifier_params_to_fastai(state, config)
    assert list(exported) == list(original)
    fresh = fastai_classifier(29, emb=6, hidden=10, n_layers=3, n_classes=4, bptt=5, max_len=10,
                              seed=1)
    _load_into(fresh, exported)
    for name in ("running_mean", "running_var"):
        np.testing.assert_array_equal(getattr(fresh[1].layers[1][0], name).numpy(),
                                      original[f"1.layers.1.0.{name}"])
    _assert_same_model(model, fresh, torch.randint(2, 29, (2, 12)))


def _lm_state() -> dict:
    return state_dict_numpy(fastai_lm(vocab=11, emb=4, hidden=6, n_layers=2))


def test_missing_key_is_named():
    state = _lm_state()
    del state["0.rnns.1.module.bias_hh_l0"]
    with pytest.raises(ValueError, match=r"missing key '0\.rnns\.1\.module\.bias_hh_l0'.*\(16,\)"):
        lm_params_from_fastai(state)


def test_unexpected_key_is_named():
    state = _lm_state()
    state["0.extra.weight"] = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"unexpected key '0\.extra\.weight'.*\(2, 3\)"):
        lm_params_from_fastai(state)


def test_wrong_shape_names_key_and_both_shapes():
    state = _lm_state()
    state["0.rnns.0.module.weight_ih_l0"] = np.zeros((24, 5), np.float32)
    pattern = r"'0\.rnns\.0\.module\.weight_ih_l0' has shape \(24, 5\), expected \(24, 4\)"
    with pytest.raises(ValueError, match=pattern):
        lm_params_from_fastai(state)


def test_untied_decoder_is_rejected():
    state = _lm_state()
    state["1.decoder.weight"] = state["1.decoder.weight"] + 1
    with pytest.raises(ValueError, match=r"'1\.decoder\.weight'"):
        lm_params_from_fastai(state)


def test_v1_dropped_weight_copy_is_ignored():
    state = _lm_state()
    state["0.rnns.0.module.weight_hh_l0"] = np.zeros((24, 6), np.float32)
    lm_params_from_fastai(state)


@pytest.mark.parametrize("kind", ["lm", "encoder", "classifier"])
def test_layout_keys_order_and_shapes_are_fastai_state_dicts(kind):
    """`fastai_layout` (the one definition both converters use) against fastai's own modules."""
    if kind == "classifier":
        model = fastai_classifier(vocab=11, emb=4, hidden=6, n_layers=3, n_classes=3, bptt=8,
                                  max_len=16)
        layout_kind = layout.KIND_CLASSIFIER
    else:
        model = fastai_lm(vocab=11, emb=4, hidden=6, n_layers=3)
        layout_kind = layout.KIND_LM
        if kind == "encoder":
            model, layout_kind = model[0], layout.KIND_ENCODER
    theirs = state_dict_numpy(model)
    v1_copies = [k for k in theirs if k.endswith("module.weight_hh_l0")]  # torch's dropped copy
    theirs = {k: v for k, v in theirs.items() if k not in v1_copies}
    sizes = layout.validate(theirs, layout_kind, "fastai")
    expected = layout.expected_shapes(layout_kind, sizes)
    assert list(expected) == list(theirs)
    assert list(expected.values()) == [tuple(v.shape) for v in theirs.values()]
