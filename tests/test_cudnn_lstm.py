"""The cuDNN LSTM path on CPU: packing checked by jax's own unpacking, the layer (outputs, state,
masks, gradients) against our scan through jax's reference LSTM, and whole models end to end.

`jax.experimental.rnn.lstm` lowers on CUDA only; here its pure-JAX twin `lstm_ref`, fed through
`unpack_lstm_weights`, stands in for it, so everything but cuDNN's arithmetic is verified.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import rnn

from ulmfit_jax.errors import ConfigError
from ulmfit_jax.model import awd_lstm
from ulmfit_jax.model.classifier import AWDLSTMClassifier
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.model.cudnn_lstm import cudnn_layer, pack_weights
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel, sample_lm_masks
from ulmfit_jax.model.lstm import input_projection_time_major, recurrence_time_major
from ulmfit_jax.model.lstm_impl import resolve_lstm_impl

TIME, BATCH, N_IN, HIDDEN = 9, 4, 5, 6


def reference_lstm(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers,
                   dropout, bidirectional):
    """`rnn.lstm`'s signature on jax's reference LSTM, unpacking with jax's own function."""
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size,
                                                     num_layers, bidirectional)
    return rnn.lstm_ref(x, h_0, c_0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size,
                        hidden_size, num_layers, dropout, bidirectional)


def layer_inputs(seed=0):
    keys = jax.random.split(jax.random.key(seed), 6)
    x = jax.random.normal(keys[0], (TIME, BATCH, N_IN))
    state = (jax.random.normal(keys[1], (BATCH, HIDDEN)), jax.random.normal(keys[2], (BATCH,
                                                                                       HIDDEN)))
    w_ih = 0.4 * jax.random.normal(keys[3], (N_IN, 4 * HIDDEN))
    w_hh = 0.4 * jax.random.normal(keys[4], (HIDDEN, 4 * HIDDEN))
    bias = 0.4 * jax.random.normal(keys[5], (4 * HIDDEN,))
    return x, state, w_ih, w_hh, bias


def leading_padding(skipped):
    """step_mask [time, batch]: row b's first skipped[b] steps are padding."""
    return jnp.arange(TIME)[:, None] >= jnp.asarray(skipped)[None, :]


def scan_layer(x, state, w_ih, w_hh, bias, step_mask=None):
    projected = input_projection_time_major(x, w_ih, bias)
    return recurrence_time_major(projected, state, w_hh, step_mask)


ref_layer = functools.partial(cudnn_layer, lstm_fn=reference_lstm)


def test_packing_is_what_jax_unpacks():
    _, _, w_ih, w_hh, bias = layer_inputs()
    flat = pack_weights(w_ih, w_hh, bias)
    assert flat.shape == (rnn.get_num_params_in_lstm(N_IN, HIDDEN, 1, False),)
    got_ih, got_hh, got_bih, got_bhh = rnn.unpack_lstm_weights(flat, N_IN, HIDDEN, 1, False)
    np.testing.assert_array_equal(got_ih[0], w_ih.T)  # PyTorch/cuDNN: [4h, in], gates i,f,g,o
    np.testing.assert_array_equal(got_hh[0], w_hh.T)
    np.testing.assert_array_equal(got_bih[0] + got_bhh[0], bias)


@pytest.mark.parametrize("skipped, trailing", [(None, 0), ([0, 3, TIME, 1], 0),
                                               ([0, 3, TIME, 1], 2)],
                         ids=["lm", "leading_padding", "padding_around"])
def test_layer_outputs_state_and_gradients_equal_the_scan(skipped, trailing):
    x, state, w_ih, w_hh, bias = layer_inputs()
    mask = None if skipped is None else leading_padding(skipped)
    if trailing:  # the classifier's: no row takes the batch's last steps
        mask &= jnp.arange(TIME)[:, None] < TIME - trailing
    ours, theirs = ref_layer(x, state, w_ih, w_hh, bias, mask), scan_layer(x, state, w_ih, w_hh,
                                                                              bias, mask)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    weights = jax.random.normal(jax.random.key(9), (TIME, BATCH, HIDDEN))

    def loss(layer, *args):
        outputs, (h, c) = layer(*args, mask)
        return jnp.sum(outputs * weights) + jnp.sum(h**2) + jnp.sum(jnp.sin(c))

    argnums = (1, 2, 3, 4, 5)
    got = jax.grad(loss, argnums)(ref_layer, x, state, w_ih, w_hh, bias)
    want = jax.grad(loss, argnums)(scan_layer, x, state, w_ih, w_hh, bias)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.fixture
def cudnn_on_cpu(monkeypatch):
    """lstm_impl='cudnn' models run `cudnn_layer` with jax's reference LSTM inside."""
    monkeypatch.setattr(awd_lstm, "cudnn_layer", ref_layer)


def test_language_model_with_dropout_equals_scan(cudnn_on_cpu):
    config = AWDLSTMConfig(vocab_size=30, emb_size=8, hidden_size=12, n_layers=3,
                           lstm_impl="scan")
    scan_lm = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    cudnn_lm = AWDLSTMLanguageModel(dataclasses.replace(config, lstm_impl="cudnn"),
                                    rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(1), (3, 10), 0, 30)
    masks = sample_lm_masks(jax.random.key(2), config, batch_size=3)  # with DropConnect
    a, b = scan_lm(ids, masks=masks), cudnn_lm(ids, masks=masks)
    np.testing.assert_allclose(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)


def test_classifier_with_front_padding_equals_scan(cudnn_on_cpu):
    encoder = AWDLSTMConfig.classifier_defaults(30, emb_size=8, hidden_size=12, n_layers=2,
                                                lstm_impl="scan")
    config = ClassifierConfig(encoder=encoder, n_classes=3, bptt=4, max_len=8)
    scan_clf = AWDLSTMClassifier(config, rngs=nnx.Rngs(0))
    cudnn_config = dataclasses.replace(config, encoder=dataclasses.replace(encoder,
                                                                           lstm_impl="cudnn"))
    cudnn_clf = AWDLSTMClassifier(cudnn_config, rngs=nnx.Rngs(0))
    # fastai's layout: whole chunks of padding (id 1) in front, the rest at the end.
    ids = jnp.array([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
                     [1, 1, 1, 1, 1, 1, 1, 1, 5, 6, 7, 1],
                     [1, 1, 1, 1, 5, 6, 7, 8, 9, 1, 1, 1]])
    np.testing.assert_allclose(cudnn_clf(ids), scan_clf(ids), rtol=1e-5, atol=1e-5)


def test_auto_is_the_scan_and_cudnn_refuses_bfloat16():
    assert resolve_lstm_impl("auto", jnp.float32) == "scan"  # measured fastest (lstm_impl.py)
    assert resolve_lstm_impl("cudnn", jnp.float32) == "cudnn"
    with pytest.raises(ConfigError, match="float32 only"):
        AWDLSTMConfig(vocab_size=10, lstm_impl="cudnn", compute_dtype=jnp.bfloat16)
    with pytest.raises(ConfigError, match="lstm_impl='cuda'"):
        AWDLSTMConfig(vocab_size=10, lstm_impl="cuda")


def test_run_config_names_bad_kernel_settings():
    from ulmfit_jax.trainer.config import base_config, check_config, lm_model_config

    config = base_config()
    config.model.update(compute_dtype="bfloat16", lstm_impl="scan")
    model = lm_model_config(config, vocab_size=16)
    assert (jnp.dtype(model.compute_dtype), model.lstm_impl) == (jnp.bfloat16, "scan")
    config.model.compute_dtype = "float16"
    with pytest.raises(ConfigError, match=r"model\.compute_dtype.*float16.*bfloat16"):
        check_config(config)
    config.model.update(compute_dtype="float32", lstm_impl="cuda")
    with pytest.raises(ConfigError, match=r"model\.lstm_impl.*cuda"):
        check_config(config)


def test_the_gpu_parity_script_measures_small_differences_through_the_reference(
    cudnn_on_cpu, monkeypatch
):
    """benchmarks/cudnn_parity.py's three checks, run here on jax's reference LSTM: the script
    is ready for a lent GPU (there it uses cuDNN itself)."""
    import importlib
    from pathlib import Path

    # The script imports its sibling benchmarks/common.py.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    parity = importlib.import_module("cudnn_parity")
    vocab, bptt = 50, 6
    config = AWDLSTMConfig.lm_defaults(vocab, emb_size=8, hidden_size=12, n_layers=2)
    encoder = AWDLSTMConfig.classifier_defaults(vocab, emb_size=8, hidden_size=12, n_layers=2)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, vocab, (4, bptt + 1), dtype=np.int32)
    docs = rng.integers(2, vocab, (4, 2 * bptt), dtype=np.int32)
    docs[:2, :3] = 1
    diffs = [parity.lm_eval_diff(config, ids[:, :-1]),
             parity.classifier_eval_diff(encoder, docs, bptt), parity.lm_train_diff(config, ids)]
    # Non-zero: the "cudnn" models really ran the other kernel (rounding differs from the scan).
    assert 0 < diffs[0] <= parity.EVAL_GOAL and 0 < diffs[1] <= parity.EVAL_GOAL
    assert 0 < diffs[2] <= parity.TRAIN_TOLERANCE
    assert not parity.on_cuda()
