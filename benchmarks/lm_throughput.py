"""LM throughput, ulmfit_jax vs fastai, same machine, same run.

Measures tokens/s of one LM training step (forward with all five dropouts, cross-entropy +
AR/TAR, backward, clipping, Adam) and of the eval forward, for ours and for fastai's AWD-LSTM,
and prints ours/fastai ratios.

    python benchmarks/lm_throughput.py --size small          # seconds
    python benchmarks/lm_throughput.py --size full --bs 32   # WT103 size: vocab 60k, 400/1152/3

Each side runs warm-up steps first (compilation for JAX, allocator warm-up for torch), then
the timed steps; the state is carried between steps as in real training.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SIZES = {
    "small": dict(vocab_size=8_000, emb_size=128, hidden_size=256, n_layers=2),
    "quickstart": dict(vocab_size=12_000, emb_size=200, hidden_size=512, n_layers=3),
    "full": dict(vocab_size=60_000, emb_size=400, hidden_size=1152, n_layers=3),
}


@dataclass(frozen=True)
class BenchSetting:
    size: str
    batch_size: int
    bptt: int
    steps: int
    warmup: int


def _time_steps(step: Callable[[], None], setting: BenchSetting) -> float:
    """Tokens per second of `step`, after `setting.warmup` untimed calls."""
    for _ in range(setting.warmup):
        step()
    start = time.perf_counter()
    for _ in range(setting.steps):
        step()
    elapsed = time.perf_counter() - start
    return setting.steps * setting.batch_size * setting.bptt / elapsed


def _random_batch(setting: BenchSetting, vocab_size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab_size, size=(setting.batch_size, setting.bptt + 1), dtype=np.int32)


def fastai_steps(setting: BenchSetting) -> tuple[Callable[[], None], Callable[[], None]]:
    """A fastai training step and eval forward, closed over a random batch."""
    import torch
    import torch.nn.functional as F
    from fastai.optimizer import Adam
    from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, get_language_model

    sizes = SIZES[setting.size]
    config = dict(awd_lstm_lm_config, emb_sz=sizes["emb_size"], n_hid=sizes["hidden_size"],
                  n_layers=sizes["n_layers"])
    model = get_language_model(AWD_LSTM, sizes["vocab_size"], config=config)
    optimizer = Adam(list(model.parameters()), lr=1e-3, mom=0.8, sqr_mom=0.99, wd=0.01)
    batch = torch.from_numpy(_random_batch(setting, sizes["vocab_size"], 0)).long()
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def train_step() -> None:
        model.train()
        logits, raw, dropped = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss = loss + 2.0 * dropped.pow(2).mean() + 1.0 * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad()

    def eval_step() -> None:
        model.eval()
        with torch.no_grad():
            model(inputs)

    return train_step, eval_step


def ours_steps(setting: BenchSetting) -> tuple[Callable[[], None], Callable[[], None]]:
    """Our jitted training step (the trainer's own) and eval forward, over a random batch."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ulmfit_jax import sharding
    from ulmfit_jax.language_model import AWDLSTMLanguageModel
    from ulmfit_jax.model_config import AWDLSTMConfig
    from ulmfit_jax.optimizer import lm_layer_groups, ulmfit_adam
    from ulmfit_jax.train_step import create_lm_state, lm_train_step, make_lm_eval_step
    from ulmfit_jax.train_step import make_train_step

    sizes = SIZES[setting.size]
    config = AWDLSTMConfig(**sizes)
    model = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    optimizer, _ = ulmfit_adam(nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                               lm_layer_groups(config.n_layers), wd=0.01, clip_norm=0.1)
    graphdef, state = create_lm_state(model, optimizer, setting.batch_size)
    mesh = sharding.make_data_mesh()
    tokens = _random_batch(setting, sizes["vocab_size"], 0)
    batch = sharding.shard_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, mesh)
    train = make_train_step(lm_train_step, mesh, state, graphdef=graphdef, model_config=config,
                            optimizer=optimizer, alpha=2.0, beta=1.0)
    evaluate = make_lm_eval_step(mesh, {"params": state["params"], "hidden": state["hidden"]},
                                 graphdef)
    hparams = {"lr": jnp.float32(1e-3), "mom": jnp.float32(0.8)}
    rng = jax.random.key(0)
    # The train step donates its state: the eval side gets its own copy.
    eval_state = jax.tree.map(jnp.copy, {"params": state["params"], "hidden": state["hidden"]})
    box = {"train": state, "eval": eval_state}

    def train_step() -> None:
        box["train"], metrics = train(box["train"], batch, rng, hparams)
        jax.block_until_ready(metrics)

    def eval_step() -> None:
        box["eval"], metrics = evaluate(box["eval"], batch)
        jax.block_until_ready(metrics)

    return train_step, eval_step


def run(setting: BenchSetting) -> None:
    """Time both implementations and print tokens/s and ratios."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    results = {}
    for name, make in (("fastai", fastai_steps), ("ours", ours_steps)):
        train_step, eval_step = make(setting)
        results[name] = (_time_steps(train_step, setting), _time_steps(eval_step, setting))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"size={setting.size} {SIZES[setting.size]} bs={setting.batch_size} "
          f"bptt={setting.bptt} steps={setting.steps}")
    for name, (train_tps, eval_tps) in results.items():
        print(f"{name:>7}: train {train_tps:10.0f} tok/s   eval {eval_tps:10.0f} tok/s")
    ours, ref = results["ours"], results["fastai"]
    print(f"  ratio: train {ours[0] / ref[0]:.2f}x   eval {ours[1] / ref[1]:.2f}x  (ours / fastai)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=70)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    run(BenchSetting(args.size, args.bs, args.bptt, args.steps, args.warmup))


if __name__ == "__main__":
    main()
