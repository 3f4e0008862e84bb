"""LM throughput, ulmfit_jax vs fastai, same machine, same run, interleaved.

Measures tokens/s of one LM training step and of one eval step, for ours and for fastai's
AWD-LSTM, and prints ours/fastai ratios. Both sides do the same work:

- train: forward with all five AWD dropouts, mean token cross-entropy + AR (alpha=2) + TAR
  (beta=1), backward, gradient clipping to norm 0.1, Adam with decoupled weight decay 0.01;
  the hidden state is carried between steps. Ours is the trainer's own jitted step
  (`steps.lm_train_step` + `optimizer.ulmfit_optimizer`, dropout masks sampled inside the
  step); fastai's is `get_language_model(AWD_LSTM)` + `fastai.optimizer.Adam`.
- eval: forward without dropout, summed cross-entropy and number of correct argmax
  predictions (what a validation pass computes); the hidden state is carried. Ours is
  `steps.make_lm_eval_step`; fastai's is the same model under `torch.no_grad()`.

The two sides alternate step by step (fastai train, ours train, fastai eval, ours eval, ...)
so that a shared, loaded machine slows both alike; the reported figures are medians over the
timed steps and the ratio is the median of the per-round ratios.

    python benchmarks/lm_throughput.py --size small                          # ~1 minute
    python benchmarks/lm_throughput.py --size full --steps 4 --warmup 1     # WT103 size, ~3 min
    python benchmarks/lm_throughput.py --size small --qrnn equal    # + ours with a QRNN encoder

`--qrnn equal` adds a third side, ours with the QRNN encoder (`model.encoder = "qrnn"`) whose
recurrent weights equal the AWD-LSTM's (same vocab, embedding and layers, wider hidden);
`--qrnn fastai` the QRNN at fastai's AWD-QRNN size (400 / 1552 / 4 layers, 15k vocab). Its
ratios to our AWD-LSTM are printed too.

Each side runs warm-up steps first (compilation for JAX, allocator warm-up for torch).
The step builders live in `common.py`, which `accelerator.py` uses too on a GPU or TPU
(fastai's with a device and AMP, ours with `compute_dtype` / `lstm_impl`).
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np
from common import (
    QRNN_MATCHES,
    SIZES,
    BenchSetting,
    add_cpu_devices_argument,
    fastai_steps,
    interleaved_seconds,
    load_average,
    machine,
    ours_steps,
    qrnn_sizes,
    use_cpu_devices,
)

from ulmfit_jax.host_allocator import use_fast_allocator


def run(setting: BenchSetting, qrnn: str | None = None) -> None:
    """Time both implementations (and our QRNN with `qrnn`), interleaved; print tokens/s and
    ratios."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    sides = {"fastai": fastai_steps(setting), "ours": ours_steps(setting)}
    if qrnn is not None:
        qrnn_size = qrnn_sizes(SIZES[setting.size], qrnn)
        print(f"qrnn: {qrnn_size} ({qrnn})")
        sides["qrnn"] = ours_steps(setting, qrnn_size, encoder_kind="qrnn")
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
    if qrnn is not None:
        for base in ("ours", "fastai"):
            cells = [f"{np.median(np.divide(seconds[f'{base} {k}'], seconds[f'qrnn {k}'])):7.2f}x"
                     for k in ("train", "eval")]
            print(f"{'qrnn':>7}  {cells[0]:>18}  {cells[1]:>18}   (qrnn / {base}: median of "
                  "per-round ratios)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=70)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    add_cpu_devices_argument(parser)
    parser.add_argument("--qrnn", choices=QRNN_MATCHES, default=None,
                        help="also ours with a QRNN encoder: equal recurrent weights, or "
                             "fastai's AWD-QRNN size")
    args = parser.parse_args()
    use_cpu_devices(args.cpu_devices, [args.bs])
    run(BenchSetting(args.size, args.bs, args.bptt, args.steps, args.warmup), args.qrnn)


if __name__ == "__main__":
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
