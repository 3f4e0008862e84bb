"""Accelerator benchmark: ulmfit_jax vs fastai on one GPU or TPU, same device, same run.

For each batch size it measures, interleaved step by step (as `lm_throughput.py` does, with the
step builders of `common.py`), the median over timed rounds after warm-up of:

- LM training tokens/s: the trainer's jitted `lm_train_step` with `ulmfit_optimizer` (ours);
  `get_language_model(AWD_LSTM)` + fastai's Adam, loss + AR/TAR + clipping (fastai);
- LM eval tokens/s: `make_lm_eval_step` (ours); the same model under `no_grad` (fastai);
- classifier training documents/s: the trainer's `classifier_train_step` on every layer
  (the last, unfrozen phase of gradual unfreezing) vs `get_text_classifier(AWD_LSTM)`, on
  documents of a fixed length, `--clf-chunks` bptt chunks (4 x 70 = 280 tokens by default;
  IMDb training reviews average ~308 fastai tokens, median 229, in a 797-review sample of
  the embedded corpus), 2 classes, no padding, cross-entropy only on both sides (the
  recipe's AR/TAR, `classifier.alpha` / `beta`, left out, as in the figures measured so far);

for these variants, each in the same process on the same device:

- ours: `lstm_impl` scan, wavefront or cuDNN x `compute_dtype` float32 or bfloat16;
- with `--qrnn`, ours with the QRNN encoder (`model.encoder = "qrnn"`) x float32 / bfloat16,
  at the AWD-LSTM's recurrent weight count ("qrnn equal") and at fastai's AWD-QRNN size
  ("qrnn fastai": 400 / 1552 / 4 layers, 15k vocab);
- fastai: float32, and AMP (`torch.autocast` float16 + `GradScaler`, as `Learner.to_fp16()`).

A variant that cannot run here (cuDNN off CUDA, cuDNN in bfloat16, AMP off CUDA, fastai not
installed, fastai on a TPU) is a table row saying "n/a (why)". It also reports each step's
first call (compilation for ours) and its device memory: for ours XLA's plan for the step
(arguments + outputs not aliased to donated inputs + temporaries, `memory_analysis()`), since
the process-wide `peak_bytes_in_use` (printed too, where the backend has it) cannot be reset
between interleaved variants; for fastai `torch.cuda.max_memory_allocated` over the variant's
first calls, minus what was allocated before it was built.

    python benchmarks/accelerator.py                       # WT103 size, batch 64/128/256
    python benchmarks/accelerator.py --batch-sizes 256 --tasks lm_train
    python benchmarks/accelerator.py --smoke               # tiny, seconds on a CPU: no figure
    python benchmarks/accelerator.py --batch-sizes 256 --qrnn   # + the QRNN rows

It ends with a markdown table for `benchmarks/RESULTS.md` and the issue's goals (one
H100/H200-class GPU, batch 256: >= 5x fastai fp32 LM training tokens/s, >= 1M tokens/s, a
WT103 epoch extrapolated to 1 and 8 devices).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from common import (
    MAX_CHUNKS,
    N_CLASSES,
    QRNN_MATCHES,
    SIZES,
    BenchSetting,
    JaxStep,
    adam_hparams,
    add_cpu_devices_argument,
    classifier_batch,
    fastai_classifier_model,
    fastai_optimizer,
    fastai_steps,
    interleaved_seconds,
    load_average,
    machine,
    our_optimizer,
    ours_steps,
    qrnn_sizes,
    timed,
    torch_amp,
    torch_update,
    use_cpu_devices,
)

from ulmfit_jax.host_allocator import use_fast_allocator

TASKS = ("lm_train", "lm_eval", "clf_train")
WT103_TOKENS = 103_000_000
GOAL_BATCH, GOAL_SPEEDUP, GOAL_TOKENS_PER_S, GOAL_EPOCH_MIN_8 = 256, 5.0, 1e6, 2.0
GOAL_DEVICE = re.compile(r"H100|H200|H800", re.IGNORECASE)
SMOKE = dict(size="tiny", bptt=8, batch_sizes=[4], steps=2, warmup=1, clf_chunks=2)


@dataclass(frozen=True)
class Variant:
    """One table row: whose steps (`side`), their options, and why it cannot run here."""

    name: str
    side: str  # "ours" (options: AWDLSTMConfig fields) or "fastai" (options: device, amp)
    options: dict = field(default_factory=dict)
    unavailable: str | None = None


@dataclass
class Measured:
    """One variant at one batch size: per-round seconds and first-call seconds per task."""

    seconds: dict[str, list[float]]
    first: dict[str, float]
    memory: int | None


def ours_classifier_step(setting: BenchSetting, doc_len: int, sizes: dict | None = None,
                         **model_options: Any) -> JaxStep:
    """The trainer's jitted classifier step with `ulmfit_optimizer`, every group training;
    `sizes` default to `SIZES[setting.size]`."""
    from flax import nnx

    from ulmfit_jax.model.classifier import AWDLSTMClassifier
    from ulmfit_jax.model.config import AWDLSTMConfig, ClassifierConfig
    from ulmfit_jax.optim.layer_groups import classifier_layer_groups
    from ulmfit_jax.trainer import sharding
    from ulmfit_jax.trainer.steps import (
        classifier_train_step,
        create_classifier_state,
        make_train_step,
    )

    encoder = AWDLSTMConfig.classifier_defaults(**(sizes or SIZES[setting.size]), **model_options)
    config = ClassifierConfig(encoder, N_CLASSES, bptt=setting.bptt,
                              max_len=MAX_CHUNKS * setting.bptt)
    model = AWDLSTMClassifier(config, rngs=nnx.Rngs(0))
    tx = our_optimizer(model, classifier_layer_groups(encoder.n_layers))
    graphdef, state = create_classifier_state(model, tx)
    mesh = sharding.make_data_mesh()
    docs, labels = classifier_batch(setting, encoder.vocab_size, doc_len)
    batch = sharding.shard_batch({"inputs": docs, "labels": labels}, mesh)
    state = sharding.place_state(state, mesh)
    train = make_train_step(classifier_train_step, mesh, state, graphdef=graphdef,
                            model_config=config, optimizer=tx, alpha=0.0, beta=0.0)
    return JaxStep(train, state, (batch, jax.random.key(0), adam_hparams()))


def fastai_classifier_step(
    setting: BenchSetting, doc_len: int, device: str = "cpu", amp: bool = False
) -> Callable[[], None]:
    """A fastai classifier training step (cross-entropy, backward, Adam) on `device`."""
    import torch
    import torch.nn.functional as F

    model = fastai_classifier_model(setting.size, setting.bptt, device)
    optimizer = fastai_optimizer(model)
    autocast, scaler, sync = torch_amp(device, amp)
    docs, labels = (torch.from_numpy(a).long().to(device)
                    for a in classifier_batch(setting, SIZES[setting.size]["vocab_size"],
                                              doc_len))

    def train_step() -> None:
        model.train()
        with autocast():
            loss = F.cross_entropy(model(docs)[0].float(), labels)
        torch_update(loss, model, optimizer, scaler, clip=None)
        sync()

    return train_step


BUILDERS = {"ours": (ours_steps, ours_classifier_step),
            "fastai": (fastai_steps, fastai_classifier_step)}


def our_variants() -> list[Variant]:
    """scan / wavefront / cuDNN x float32 / bfloat16, with the reason where one cannot run
    here."""
    from ulmfit_jax.errors import ConfigError
    from ulmfit_jax.model.config import AWDLSTMConfig
    from ulmfit_jax.model.cudnn_lstm import on_cuda

    variants = []
    for impl, dtype in (("scan", "float32"), ("scan", "bfloat16"),
                        ("wavefront", "float32"), ("wavefront", "bfloat16"),
                        ("cudnn", "float32"), ("cudnn", "bfloat16")):
        options = {"lstm_impl": impl, "compute_dtype": getattr(jnp, dtype)}
        why = None
        try:
            AWDLSTMConfig(vocab_size=2, **options)
        except ConfigError as error:  # the package's own rule, its first clause for the cell
            why = str(error).split(" (")[0]
        if impl == "cudnn" and not on_cuda() and why is None:
            why = f"cuDNN needs a CUDA GPU; backend: {jax.default_backend()}"
        name = f"ours {'cuDNN' if impl == 'cudnn' else impl} {_short(dtype)}"
        variants.append(Variant(name, "ours", options, why))
    return variants


def qrnn_variants(size: str, matches: tuple[str, ...] = QRNN_MATCHES) -> list[Variant]:
    """Ours with the QRNN encoder (`--qrnn`), float32 and bfloat16: at the recurrent weight
    count of `size`'s AWD-LSTM ("equal"), and at fastai's AWD-QRNN size ("fastai"). Named
    "qrnn ...", not "ours ...": the goals compare our AWD-LSTM with fastai's."""
    return [Variant(f"qrnn {match} {_short(dtype)}", "ours",
                    {"sizes": qrnn_sizes(SIZES[size], match), "encoder_kind": "qrnn",
                     "compute_dtype": getattr(jnp, dtype)})
            for match in matches for dtype in ("float32", "bfloat16")]


def _short(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16"}[dtype]


def fastai_unavailable(no_fastai: bool) -> str | None:
    """Why fastai cannot run on jax's device in this process, or None if it can."""
    if no_fastai:
        return "skipped: --no-fastai"
    try:
        import fastai.text.all  # noqa: F401
        import torch
    except ImportError as error:
        return f"fastai/torch not importable: {error}"
    backend = jax.default_backend()
    if backend == "gpu" and not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if backend not in ("gpu", "cpu"):
        return f"fastai has no {backend} backend"
    return None


def fastai_variants(no_fastai: bool) -> list[Variant]:
    """fastai in float32 and with AMP, on the device jax uses (CUDA or CPU)."""
    why = fastai_unavailable(no_fastai)
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    amp_why = why or (None if device == "cuda" else f"AMP float16 needs CUDA; device: {device}")
    return [Variant("fastai fp32", "fastai", {"device": device, "amp": False}, why),
            Variant("fastai AMP fp16", "fastai", {"device": device, "amp": True}, amp_why)]


def build_steps(
    variant: Variant, setting: BenchSetting, doc_len: int, tasks: tuple[str, ...]
) -> dict[str, Callable[[], None]]:
    """The variant's step for each task in `tasks`."""
    lm, classifier = BUILDERS[variant.side]
    steps = {}
    if {"lm_train", "lm_eval"} & set(tasks):
        steps["lm_train"], steps["lm_eval"] = lm(setting, **variant.options)
    if "clf_train" in tasks:
        steps["clf_train"] = classifier(setting, doc_len, **variant.options)
    return {task: steps[task] for task in tasks}


def _on_cuda(variant: Variant) -> bool:
    return variant.options.get("device") == "cuda"


def prepare(
    variant: Variant, setting: BenchSetting, doc_len: int, tasks: tuple[str, ...]
) -> tuple[dict[str, Callable[[], None]], dict[str, float], int | None]:
    """Build the variant's steps and call each once: (steps, first-call seconds, memory)."""
    if _on_cuda(variant):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()
    steps = build_steps(variant, setting, doc_len, tasks)
    first = {task: timed(step) for task, step in steps.items()}
    if variant.side == "ours":
        memory = max(step.memory_bytes() for step in steps.values())
    elif _on_cuda(variant):
        memory = torch.cuda.max_memory_allocated() - allocated_before
    else:
        memory = None
    return steps, first, memory


def measure(
    variants: list[Variant], setting: BenchSetting, doc_len: int, tasks: tuple[str, ...]
) -> dict[str, Measured]:
    """First calls variant by variant, then all steps interleaved round by round."""
    steps, first, memory = {}, {}, {}
    for variant in variants:
        if variant.unavailable is None:
            print(f"batch {setting.batch_size}: preparing {variant.name}", file=sys.stderr,
                  flush=True)
            built, first[variant.name], memory[variant.name] = prepare(
                variant, setting, doc_len, tasks)
            steps.update({(variant.name, task): step for task, step in built.items()})
    seconds = interleaved_seconds(steps, setting)
    return {name: Measured({task: seconds[(name, task)] for task in tasks}, first[name],
                           memory[name]) for name in first}


def _rate(units_per_step: int, seconds: list[float]) -> float:
    return units_per_step / float(np.median(seconds))


def _ratio(seconds: list[float], reference: Measured | None, task: str) -> str:
    """Median over rounds of (reference step time / this step time), as "1.23x"."""
    if reference is None:
        return "n/a"
    return f"{float(np.median(np.divide(reference.seconds[task], seconds))):.2f}x"


def units_per_step(setting: BenchSetting) -> dict[str, int]:
    """Tokens (LM) or documents (classifier) one step processes."""
    tokens = setting.batch_size * setting.bptt
    return {"lm_train": tokens, "lm_eval": tokens, "clf_train": setting.batch_size}


HEADER = ("| batch | variant | LM train tok/s | vs fastai fp32 | LM eval tok/s | vs fastai fp32 "
          "| clf train docs/s | vs fastai fp32 | first call s (LM train / LM eval / clf) "
          "| step memory MiB |")


def table_rows(
    variants: list[Variant], results: dict[str, Measured], setting: BenchSetting,
    tasks: tuple[str, ...],
) -> list[str]:
    """Markdown rows, one per variant, for one batch size."""
    reference = results.get("fastai fp32")
    units = units_per_step(setting)
    rows = []
    for variant in variants:
        cells = [str(setting.batch_size), variant.name]
        measured = results.get(variant.name)
        if measured is None:
            cells += [f"n/a ({variant.unavailable})"] + ["n/a"] * 7
        else:
            for task in TASKS:
                secs = measured.seconds.get(task)
                cells += (["-", "-"] if secs is None else
                          [f"{_rate(units[task], secs):,.1f}", _ratio(secs, reference, task)])
            cells.append(" / ".join(f"{measured.first[t]:.3f}" if t in measured.first else "-"
                                    for t in TASKS))
            cells.append("n/a" if measured.memory is None else f"{measured.memory / 2**20:,.1f}")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def ratio_lines(all_results: dict[int, dict[str, Measured]], baseline: str) -> list[str]:
    """Each variant's median per-round speed ratio to `baseline` (e.g. bf16 vs fp32, cuDNN vs
    scan), per batch size and task."""
    lines = []
    for batch, results in all_results.items():
        if baseline not in results:
            continue
        cells = [f"{name} " + " / ".join(
            _ratio(m.seconds[task], results[baseline], task) if task in m.seconds else "-"
            for task in TASKS) for name, m in results.items() if name != baseline]
        lines.append(f"- batch {batch}, vs {baseline} (LM train / LM eval / clf train): "
                     + "; ".join(cells))
    return lines


def _best_ours(results: dict[str, Measured]) -> str | None:
    """Our variant with the most LM training tokens/s (the least median step time)."""
    ours = {name: np.median(m.seconds["lm_train"]) for name, m in results.items()
            if name.startswith("ours") and "lm_train" in m.seconds}
    return min(ours, key=ours.get) if ours else None


def _verdict(met: bool, applies: bool) -> str:
    if not applies:
        return "not judged on this device and batch"
    return "met" if met else "NOT met"


def goal_lines(all_results: dict[int, dict[str, Measured]], bptt: int, device: str) -> list[str]:
    """The issue's goals, judged on our best LM-training variant at batch 256 (or the largest
    batch measured), with the WT103 epoch extrapolated from one device's tokens/s."""
    batch = GOAL_BATCH if GOAL_BATCH in all_results else max(all_results)
    results = all_results[batch]
    best = _best_ours(results)
    applies = batch == GOAL_BATCH and GOAL_DEVICE.search(device) is not None
    lines = [f"Goals (one H100/H200-class GPU, batch {GOAL_BATCH}); this run: {device}, batch "
             f"{batch}: " + ("the goals apply" if applies else "the goals do NOT apply here; "
                             "figures for reference only")]
    if best is None:
        return lines + ["- LM training was not measured (--tasks)"]
    tokens_per_s = _rate(batch * bptt, results[best].seconds["lm_train"])
    reference = results.get("fastai fp32")
    if reference is None:
        lines.append("- >= 5x fastai fp32 LM training tokens/s: not measured (fastai did not run)")
    else:
        ratio = float(_ratio(results[best].seconds["lm_train"], reference, "lm_train")[:-1])
        lines.append(f"- >= {GOAL_SPEEDUP:g}x fastai fp32 LM training tokens/s: {ratio:.2f}x "
                     f"({best}) -> {_verdict(ratio >= GOAL_SPEEDUP, applies)}")
    lines.append(f"- >= 1M LM training tokens/s: {tokens_per_s:,.0f} ({best}) -> "
                 f"{_verdict(tokens_per_s >= GOAL_TOKENS_PER_S, applies)}")
    one, eight = (WT103_TOKENS / (n * tokens_per_s) / 60 for n in (1, 8))
    verdict = _verdict(eight < GOAL_EPOCH_MIN_8, applies)
    lines.append(f"- WT103 epoch ({WT103_TOKENS / 1e6:.0f}M tokens): {one:,.1f} min on 1 device; "
                 f"{eight:,.1f} min on 8 if data parallelism scaled linearly (an extrapolation, "
                 f"goal < {GOAL_EPOCH_MIN_8:g} min) -> {verdict}")
    return lines


def describe_device(fastai_device: str | None) -> str:
    """jax's device kind (and the host CPU), and torch's device name when fastai runs."""
    devices = jax.devices()
    text = f"{len(devices)} x {devices[0].device_kind} (jax {jax.__version__}, " \
           f"{jax.default_backend()}); host: {machine()}"
    if fastai_device is not None:
        import fastai
        import torch

        name = torch.cuda.get_device_name() if fastai_device == "cuda" else "cpu"
        text += f"; fastai {fastai.__version__} on torch {torch.__version__} {name}"
    return text


def process_peak() -> str:
    """jax's process-wide peak device memory, where the backend reports it."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return "n/a (backend has no memory_stats)" if peak is None else f"{peak / 2**20:,.1f} MiB"


def print_report(variants: list[Variant], all_results: dict[int, dict[str, Measured]],
                 args: argparse.Namespace, device: str) -> None:
    """The markdown table, the settings it ran with, and the goals."""
    tasks = tuple(args.tasks)
    print(f"\n### Accelerator benchmark: {device}\n")
    print(f"size={args.size} {SIZES[args.size]}, bptt {args.bptt}, classifier documents "
          f"{args.clf_chunks} x bptt = {args.clf_chunks * args.bptt} tokens; warm-up "
          f"{args.warmup} + first call, median of {args.steps} interleaved rounds; "
          f"{load_average()} (after); jax process peak device memory {process_peak()}\n")
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    for batch, results in all_results.items():
        setting = BenchSetting(args.size, batch, args.bptt, args.steps, args.warmup)
        print("\n".join(table_rows(variants, results, setting, tasks)))
    print("\nRatios: median over rounds of fastai fp32's step time / the variant's, same batch. "
          "Step memory: ours XLA's plan for the step; fastai CUDA peak of its first calls.\n")
    print("\n".join(ratio_lines(all_results, "ours scan fp32")) + "\n")
    print("\n".join(goal_lines(all_results, args.bptt, device)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--bptt", type=int, default=70)
    parser.add_argument("--steps", type=int, default=10, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds after the first")
    parser.add_argument("--clf-chunks", type=int, default=4,
                        help="classifier document length in bptt chunks")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--no-fastai", action="store_true", help="ours only")
    add_cpu_devices_argument(parser)
    parser.add_argument("--qrnn", action="store_true",
                        help="also ours with a QRNN encoder (equal recurrent weights; fastai's "
                             "AWD-QRNN size)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny CPU-sized run that checks the script: overrides {SMOKE}")
    args = parser.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    return args


def main() -> None:
    args = parse_args()
    use_cpu_devices(args.cpu_devices, args.batch_sizes)  # on a CPU, as train.py
    # fastai's torch shares the device: jax must not take 75% of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # A smoke run stays tiny: fastai's AWD-QRNN size is WT103-sized.
    qrnn = qrnn_variants(args.size, ("equal",) if args.smoke else QRNN_MATCHES) if args.qrnn else []
    variants = our_variants() + qrnn + fastai_variants(args.no_fastai)
    fastai_device = next((v.options["device"] for v in variants
                          if v.side == "fastai" and v.unavailable is None), None)
    if fastai_device == "cpu":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    if fastai_device is None:
        print(f"fastai will not run: {variants[-2].unavailable}; measuring ours only",
              file=sys.stderr)
    device = describe_device(fastai_device)
    doc_len = args.clf_chunks * args.bptt
    all_results = {batch: measure(variants, BenchSetting(args.size, batch, args.bptt,
                                                         args.steps, args.warmup),
                                  doc_len, tuple(args.tasks)) for batch in args.batch_sizes}
    if args.smoke:
        print("\nSMOKE RUN: tiny model on whatever device is here; checks the script, "
              "its figures are not a performance measurement.")
    print_report(variants, all_results, args, device)


if __name__ == "__main__":
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
