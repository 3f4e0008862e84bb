"""train.py's own LM training speed beside the bare step benchmark, same sizes and batch.

    python benchmarks/trainer_throughput.py --config configs/quickstart.py
    python benchmarks/trainer_throughput.py --config configs/quickstart.py --set lm.batch_size=128
    python benchmarks/trainer_throughput.py --smoke      # configs/tiny.py: a check, not a figure

1. `train.py --stage lm` runs in a subprocess in a fresh workdir for `--epochs` LM epochs
   (default 2: the first one's compilation is then behind it). Its speed is the last epoch's
   line of `throughput.jsonl`: tokens of every step after the epoch's first, over the time
   until the device finished the last one, with host batching, metrics, checkpoints and
   logging included (the trainer writes it; `trainer/loop.py`).
2. The trainer's jitted LM step alone (`common.ours_steps`: the same `lm_train_step` with
   dropouts, AR/TAR, clipping and the optimizer, over one random batch already on the device)
   at the run's vocab, sizes, batch and bptt, `--steps` timed calls after warm-up; tokens/s =
   batch * bptt / median seconds.

Prints both and the ratio trainer / step; the goal is >= 0.90 (the trainer keeps the device
busy). The trainer's windows vary in length around bptt (`lm.variable_length`), the step's
do not; both count the tokens they ran.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import BenchSetting, interleaved_seconds, load_average, machine, ours_steps

from ulmfit_jax.host_allocator import use_fast_allocator

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.90


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.py")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for the run (train.py's --config.KEY)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed calls of the bare step")
    parser.add_argument("--smoke", action="store_true",
                        help="configs/tiny.py, 2 epochs, 5 steps: checks the script")
    args = parser.parse_args(argv)
    if args.smoke:
        args.config, args.steps = REPO / "configs" / "tiny.py", 5
    return args


def trainer_speed(args: argparse.Namespace, workdir: Path) -> dict:
    """Run train.py's LM stage; its last epoch's throughput record."""
    overrides = [f"--config.{item}" for item in args.set]
    command = [sys.executable, str(REPO / "train.py"), "--config", str(args.config),
               "--workdir", str(workdir), "--stage", "lm", f"--config.lm.epochs={args.epochs}",
               "--config.lm.backward=False", "--config.progress=False", *overrides]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (workdir / "throughput.jsonl").read_text().splitlines()]
    return [r for r in records if r["stage"] == "lm_fwd"][-1]


def step_speed(args: argparse.Namespace, workdir: Path) -> float:
    """tokens/s of the bare jitted LM step at the run's sizes."""
    from ulmfit_jax.text.vocab import Vocab
    from ulmfit_jax.trainer.config import load_config

    config = load_config(args.config, args.set)
    m, lm = config.model, config.lm
    sizes = {"vocab_size": len(Vocab.load(workdir / "vocab.json")), "emb_size": m.emb_size,
             "hidden_size": m.hidden_size, "n_layers": m.n_layers}
    setting = BenchSetting("run", lm.batch_size, lm.bptt, args.steps, warmup=2)
    train, _ = ours_steps(setting, sizes=sizes, lstm_impl=m.lstm_impl)
    seconds = interleaved_seconds({"train": train}, setting)["train"]
    return lm.batch_size * lm.bptt / statistics.median(seconds)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"machine: {machine()}; load average {load_average()}")
    smoke = " (SMOKE RUN: a check of the script, not a figure)" if args.smoke else ""
    print(f"config: {args.config} {' '.join(args.set)}; LM epochs {args.epochs}{smoke}")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_speed(args, Path(tmp))
        step = step_speed(args, Path(tmp))
    ratio = trainer["tokens_per_s"] / step
    print(f"train.py LM epoch {trainer['epoch']}: {trainer['tokens_per_s']:,.0f} tokens/s "
          f"({trainer['tokens']:,} tokens in {trainer['seconds']:.2f} s)")
    print(f"bare LM step: {step:,.0f} tokens/s")
    verdict = "met" if ratio >= GOAL else "NOT met"
    print(f"trainer / step: {ratio:.2f}x (goal >= {GOAL:.2f}x: {verdict})")


if __name__ == "__main__":
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
