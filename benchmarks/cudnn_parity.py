"""cuDNN LSTM vs the scan LSTM on this device: the check to run first on a lent CUDA GPU.

    python benchmarks/cudnn_parity.py                 # WT103 size (60k vocab, 400/1152/3)
    python benchmarks/cudnn_parity.py --size small    # 8k vocab, 128/256/2 (`common.SIZES`)

Same parameters, same batch, `model.lstm_impl` "scan" vs "cudnn", float32:
  * LM eval logits (carried state from zeros) and a classifier's eval logits on documents
    with leading padding (the cuDNN path moves it behind `seq_lengths`): goal max |diff|
    <= 1e-5;
  * one LM training step (dropouts, AR/TAR, clipping, Adam) from the same state and rng:
    the stated tolerance is max |diff| <= 1e-4 on the updated parameters (cuDNN sums the
    gates in another order, and Adam's first step divides by sqrt(v), which magnifies
    rounding where a gradient is near zero).
On a device without CUDA it prints why it cannot check and exits 0 (the CPU tests check the
weight packing against jax's own `unpack_lstm_weights` and `lstm_ref`).
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from common import SIZES, adam_hparams, our_optimizer
from flax import nnx

from ulmfit_jax.host_allocator import use_fast_allocator
from ulmfit_jax.model.classifier import AWDLSTMClassifier
from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
from ulmfit_jax.model.cudnn_lstm import on_cuda
from ulmfit_jax.model.language_model import AWDLSTMLanguageModel
from ulmfit_jax.optim.layer_groups import lm_layer_groups
from ulmfit_jax.trainer import sharding, steps

EVAL_GOAL, TRAIN_TOLERANCE = 1e-5, 1e-4


def _max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _with_params(model_cls, config, params):
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, params)


def lm_eval_diff(config: AWDLSTMConfig, ids: np.ndarray) -> float:
    scan = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    params = nnx.state(scan)
    cudnn = _with_params(AWDLSTMLanguageModel, dataclasses.replace(config, lstm_impl="cudnn"),
                         params)
    logits = [jax.jit(lambda m, x: m(x, state=None, masks=None).logits)(m, ids)
              for m in (scan, cudnn)]
    return _max_diff(*logits)


def classifier_eval_diff(encoder: AWDLSTMConfig, ids: np.ndarray, bptt: int) -> float:
    config = ClassifierConfig(encoder=encoder, n_classes=2, bptt=bptt, max_len=ids.shape[1])
    scan = AWDLSTMClassifier(config, rngs=nnx.Rngs(0))
    cudnn_config = dataclasses.replace(
        config, encoder=dataclasses.replace(encoder, lstm_impl="cudnn"))
    cudnn = _with_params(AWDLSTMClassifier, cudnn_config, nnx.state(scan))
    logits = [jax.jit(lambda m, x: m(x, masks=None, train=False))(m, ids) for m in (scan, cudnn)]
    return _max_diff(*logits)


def lm_train_diff(config: AWDLSTMConfig, ids: np.ndarray) -> float:
    mesh = sharding.make_data_mesh(jax.devices()[:1])
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:]}
    params_after = []
    for impl in ("scan", "cudnn"):
        model_config = dataclasses.replace(config, lstm_impl=impl)
        model = AWDLSTMLanguageModel(model_config, rngs=nnx.Rngs(0))
        tx = our_optimizer(model, lm_layer_groups(config.n_layers), clip_norm=0.4)
        graphdef, state = steps.create_lm_state(model, tx, ids.shape[0])
        step = steps.make_train_step(steps.lm_train_step, mesh, state,
                                     graphdef=graphdef, model_config=model_config,
                                     optimizer=tx, alpha=2.0, beta=1.0)
        state, _ = step(sharding.place_state(state, mesh), batch, jax.random.PRNGKey(1),
                        adam_hparams())
        params_after.append(jax.device_get(state.params))
    return _max_diff(*params_after)


def _verdict(diff: float, bound: float) -> str:
    return f"{diff:.2e} ({'within' if diff <= bound else 'OVER'} {bound:.0e})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--bptt", type=int, default=70)
    args = parser.parse_args()
    if not on_cuda():
        print(f"n/a: cuDNN needs a CUDA GPU; this device is {jax.devices()[0].platform}")
        return
    sizes = SIZES[args.size]
    vocab, sizes = sizes["vocab_size"], {k: v for k, v in sizes.items() if k != "vocab_size"}
    config = AWDLSTMConfig.lm_defaults(vocab, **sizes)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, vocab, (args.batch, args.bptt + 1), dtype=np.int32)
    docs = rng.integers(2, vocab, (args.batch, 2 * args.bptt), dtype=np.int32)
    docs[: args.batch // 2, : args.bptt // 2] = 1  # leading padding in half of the documents
    encoder = AWDLSTMConfig.classifier_defaults(vocab, **sizes)
    print(f"device {jax.devices()[0].device_kind}, size {args.size}, batch {args.batch}, "
          f"bptt {args.bptt}: max |cudnn - scan|")
    print(f"  LM eval logits:          {_verdict(lm_eval_diff(config, ids[:, :-1]), EVAL_GOAL)}")
    print(f"  classifier eval logits:  "
          f"{_verdict(classifier_eval_diff(encoder, docs, args.bptt), EVAL_GOAL)}")
    print(f"  LM train step params:    "
          f"{_verdict(lm_train_diff(config, ids), TRAIN_TOLERANCE)}")


if __name__ == "__main__":
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
