"""LM throughput, ulmfit_jax vs fastai, same machine, same run, interleaved.

Measures tokens/s of one LM training step and of one eval step, for ours and for fastai's
AWD-LSTM, and prints ours/fastai ratios. Both sides do the same work:

- train: forward with all five AWD dropouts, mean token cross-entropy + AR (alpha=2) + TAR
  (beta=1), backward, gradient clipping to norm 0.1, Adam with decoupled weight decay 0.01;
  the hidden state is carried between steps. Ours is the trainer's own jitted step
  (`train_step.lm_train_step` + `optimizer.ulmfit_optimizer`, dropout masks sampled inside the
  step); fastai's is `get_language_model(AWD_LSTM)` + `fastai.optimizer.Adam`.
- eval: forward without dropout, summed cross-entropy and number of correct argmax
  predictions (what a validation pass computes); the hidden state is carried. Ours is
  `train_step.make_lm_eval_step`; fastai's is the same model under `torch.no_grad()`.

The two sides alternate step by step (fastai train, ours train, fastai eval, ours eval, ...)
so that a shared, loaded machine slows both alike; the reported figures are medians over the
timed steps and the ratio is the median of the per-round ratios.

    python benchmarks/lm_throughput.py --size small                          # ~1 minute
    python benchmarks/lm_throughput.py --size full --steps 4 --warmup 1     # WT103 size, ~3 min

Each side runs warm-up steps first (compilation for JAX, allocator warm-up for torch).
`accelerator.py` reuses these step builders on a GPU or TPU (fastai's with a device and AMP,
ours with `compute_dtype` / `lstm_impl`).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

SIZES = {
    "tiny": dict(vocab_size=300, emb_size=16, hidden_size=32, n_layers=3),
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


def timed(step: Callable[[], None]) -> float:
    """Seconds one call of `step` takes."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def interleaved_seconds(
    steps: dict[str, Callable[[], None]], setting: BenchSetting
) -> dict[str, list[float]]:
    """Per-call seconds of each step, the steps called in turn `setting.steps` times, after
    `setting.warmup` untimed rounds."""
    for _ in range(setting.warmup):
        for step in steps.values():
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(setting.steps):
        for name, step in steps.items():
            seconds[name].append(timed(step))
    return seconds


def random_batch(setting: BenchSetting, vocab_size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab_size, size=(setting.batch_size, setting.bptt + 1), dtype=np.int32)


def torch_amp(device: str, amp: bool) -> tuple[Callable[[], Any], Any, Callable[[], None]]:
    """(autocast context factory, GradScaler, device sync) for fastai steps on `device`.

    `amp`: float16 autocast and loss scaling, as fastai's `Learner.to_fp16()` (CUDA only);
    otherwise both are disabled and the step runs in float32.
    """
    import torch

    autocast = functools.partial(torch.autocast, device, dtype=torch.float16, enabled=amp)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    return autocast, torch.amp.GradScaler(device, enabled=amp), sync


def torch_update(loss: Any, model: Any, optimizer: Any, scaler: Any, clip: float | None) -> None:
    """Backward, optional gradient clipping, optimizer step, with `scaler` (a `GradScaler`,
    disabled for float32) used as fastai's `MixedPrecision` callback uses it."""
    import torch

    scaler.scale(loss).backward()
    if clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()


def fastai_steps(
    setting: BenchSetting, device: str = "cpu", amp: bool = False
) -> tuple[Callable[[], None], Callable[[], None]]:
    """A fastai training step and eval forward on `device`, closed over a random batch.

    `amp`: float16 autocast and a loss-scaling `GradScaler` around the step, as fastai's
    `Learner.to_fp16()` does (CUDA only). Each step waits for the device before returning.
    """
    import torch
    import torch.nn.functional as F
    from fastai.optimizer import Adam
    from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, get_language_model

    sizes = SIZES[setting.size]
    config = dict(awd_lstm_lm_config, emb_sz=sizes["emb_size"], n_hid=sizes["hidden_size"],
                  n_layers=sizes["n_layers"])
    model = get_language_model(AWD_LSTM, sizes["vocab_size"], config=config).to(device)
    optimizer = Adam(list(model.parameters()), lr=1e-3, mom=0.8, sqr_mom=0.99, wd=0.01)
    autocast, scaler, sync = torch_amp(device, amp)
    batch = torch.from_numpy(random_batch(setting, sizes["vocab_size"], 0)).long().to(device)
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def train_step() -> None:
        model.train()
        with autocast():
            logits, raw, dropped = model(inputs)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                   targets.reshape(-1))
            loss = loss + 2.0 * dropped.float().pow(2).mean() + 1.0 * (
                raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
        torch_update(loss, model, optimizer, scaler, clip=0.1)
        sync()

    def eval_step() -> None:
        # What ours computes too: summed cross-entropy and the count of correct predictions.
        model.eval()
        with torch.no_grad(), autocast():
            logits = model(inputs)[0].reshape(-1, sizes["vocab_size"]).float()
            F.cross_entropy(logits, targets.reshape(-1), reduction="sum").item()
            (logits.argmax(-1) == targets.reshape(-1)).sum().item()

    return train_step, eval_step


@dataclass
class JaxStep:
    """A jitted step `fn(state, *args) -> (state, metrics)` with its carried state. Calling it
    runs one step and waits for all its outputs (the state too: an update still running on
    the device would otherwise be timed with whatever step runs next)."""

    fn: Any
    state: Any
    args: tuple

    def __call__(self) -> None:
        self.state, metrics = self.fn(self.state, *self.args)
        jax.block_until_ready((self.state, metrics))

    def memory_bytes(self) -> int:
        """Device memory of one step as XLA planned it: arguments + outputs not aliased to a
        donated argument + temporaries. Cheap once the step has run (the compile is cached)."""
        stats = self.fn.lower(self.state, *self.args).compile().memory_analysis()
        return (stats.argument_size_in_bytes + stats.output_size_in_bytes
                - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def adam_hparams() -> dict:
    """The scheduled learning rate and momentum a step receives (fixed here)."""
    import jax.numpy as jnp

    return {"lr": jnp.float32(1e-3), "mom": jnp.float32(0.8)}


def ours_steps(setting: BenchSetting, **model_options: Any) -> tuple[JaxStep, JaxStep]:
    """Our jitted training step (the trainer's own) and eval forward, over a random batch.

    `model_options` go to `AWDLSTMConfig` (e.g. `compute_dtype`, `lstm_impl`).
    """
    from flax import nnx

    from ulmfit_jax.model.config import AWDLSTMConfig
    from ulmfit_jax.model.language_model import AWDLSTMLanguageModel
    from ulmfit_jax.optim.layer_groups import lm_layer_groups
    from ulmfit_jax.optim.optimizer import AWD_LSTM_FUSED_BIAS_MULTIPLICITY, ulmfit_optimizer
    from ulmfit_jax.trainer import sharding
    from ulmfit_jax.trainer.steps import (
        create_lm_state,
        lm_train_step,
        make_lm_eval_step,
        make_train_step,
    )

    config = AWDLSTMConfig(**SIZES[setting.size], **model_options)
    model = AWDLSTMLanguageModel(config, rngs=nnx.Rngs(0))
    optimizer = ulmfit_optimizer(nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                                 lm_layer_groups(config.n_layers), wd=0.01, clip_norm=0.1,
                                 multiplicity=AWD_LSTM_FUSED_BIAS_MULTIPLICITY).transform()
    graphdef, state = create_lm_state(model, optimizer, setting.batch_size)
    mesh = sharding.make_data_mesh()
    state = sharding.place_state(state, mesh)
    tokens = random_batch(setting, config.vocab_size, 0)
    batch = sharding.shard_batch({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, mesh)
    train = make_train_step(lm_train_step, mesh, state, graphdef=graphdef, model_config=config,
                            optimizer=optimizer, alpha=2.0, beta=1.0)
    eval_state = {"params": state["params"], "hidden": state["hidden"]}
    evaluate = make_lm_eval_step(mesh, eval_state, graphdef)
    # The train step donates its state: the eval side gets its own copy.
    eval_state = jax.tree.map(jax.numpy.copy, eval_state)
    return (JaxStep(train, state, (batch, jax.random.key(0), adam_hparams())),
            JaxStep(evaluate, eval_state, (batch,)))


def machine() -> str:
    """CPU model name and core count (from /proc/cpuinfo where there is one)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo
                     if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def load_average() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(setting: BenchSetting) -> None:
    """Time both implementations, interleaved, and print tokens/s and ratios."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    sides = {"fastai": fastai_steps(setting), "ours": ours_steps(setting)}
    load_before = load_average()
    steps = {f"{side} {kind}": fns[i] for kind, i in (("train", 0), ("eval", 1))
             for side, fns in sides.items()}
    seconds = interleaved_seconds(steps, setting)
    tokens = setting.batch_size * setting.bptt
    print(f"machine: {machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads),"
          f" jax {jax.__version__}")
    print(f"size={setting.size} {SIZES[setting.size]} bs={setting.batch_size} bptt={setting.bptt}"
          f" warmup={setting.warmup} steps={setting.steps} (median over steps)")
    print(f"{load_before} (before timing), {load_average()} (after)")
    print(f"{'':>7}  {'train tok/s':>18}  {'eval tok/s':>18}   (median / best step)")
    for side in sides:
        cells = [f"{tokens / np.median(seconds[f'{side} {k}']):8.0f} / "
                 f"{tokens / np.min(seconds[f'{side} {k}']):7.0f}" for k in ("train", "eval")]
        print(f"{side:>7}  {cells[0]:>18}  {cells[1]:>18}")
    ratios = {k: np.divide(seconds[f"fastai {k}"], seconds[f"ours {k}"]) for k in ("train", "eval")}
    best = {k: np.min(seconds[f"fastai {k}"]) / np.min(seconds[f"ours {k}"]) for k in ratios}
    cells = [f"{np.median(ratios[k]):7.2f}x / {best[k]:5.2f}x" for k in ("train", "eval")]
    print(f"{'ratio':>7}  {cells[0]:>18}  {cells[1]:>18}   (ours / fastai: median of per-round "
          "ratios / ratio of best steps)")
    for k, values in ratios.items():
        print(f"  per-round {k} ratios: " + " ".join(f"{r:.2f}" for r in values))


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
