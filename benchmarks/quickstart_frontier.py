"""Accuracy vs wall-clock minutes on the quickstart's IMDb split: ours, fastai and TF-IDF.

    python benchmarks/quickstart_frontier.py --side ours --config configs/quickstart.py \
        --config configs/quickstart_15min.py
    python benchmarks/quickstart_frontier.py --side fastai --config configs/quickstart.py
    python benchmarks/quickstart_frontier.py --side tfidf       # the full split, no config
    python benchmarks/quickstart_frontier.py --report           # markdown table + frontier.png
    python benchmarks/quickstart_frontier.py --smoke --side ours fastai tfidf   # seconds

Each run appends one JSON line to `--out` (default `benchmarks/frontier/results.jsonl`; with
`--smoke`, `benchmarks/frontier/smoke.jsonl`): the classifier's validation accuracy at the
end of every epoch with the wall-clock minutes since launch, the final accuracy, the machine
(CPU model, cores, load average before and after, versions) and the date. Run one side at a
time on a quiet machine: the two sides share nothing but the CPU.

- `ours`: `python train.py --config C --workdir <fresh> --stage all` as a subprocess, the
  clock started just before the launch, so tokenizing, compiling, the LM and the classifier
  all count. Its `metrics.csv` is polled every `--poll` seconds: an epoch's point is when its
  `classifier_{fwd,bwd},valid,accuracy` row first appears (late by at most one poll). The final
  point is `metrics.json`'s accuracy (the fwd+bwd ensemble's with `lm.backward`) when the
  process exits.
- `fastai`: the same recipe in fastai 2.8.12 (`benchmarks/frontier_fastai.py`, a subprocess
  too; its docstring lists every deviation) on the same documents: `common.chosen_documents`
  chooses them with the trainer's own functions and seeds.
- `tfidf`: `common.tfidf_accuracy` on the config's training and validation reviews
  (without `--config`: the full split, 19,924 / 4,980), timed from reading the corpus.

`--set key=value` overrides a config key for every run (`--config.key=value` of train.py).
`--smoke` runs `configs/tiny.py` (a few hundred reviews): a check of the script, not a figure.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import EVENTS, classifier_documents, machine, tfidf_accuracy

from ulmfit_jax.errors import ConfigError, UserError
from ulmfit_jax.host_allocator import use_fast_allocator
from ulmfit_jax.trainer.config import load_config

REPO = Path(__file__).resolve().parents[1]
FRONTIER_DIR = REPO / "benchmarks" / "frontier"
DEFAULT_OUT = FRONTIER_DIR / "results.jsonl"
SMOKE_OUT = FRONTIER_DIR / "smoke.jsonl"
DEFAULT_PLOT = FRONTIER_DIR / "frontier.png"
SMOKE_CONFIG = REPO / "configs" / "tiny.py"
FASTAI_SCRIPT = Path(__file__).resolve().with_name("frontier_fastai.py")
BUDGET_MINUTES = 15.0
SIDES = ("ours", "fastai", "tfidf")


def machine_info() -> dict:
    """CPU model name (lscpu's "Model name", from /proc/cpuinfo), cores and load average."""
    return {"machine": machine(), "cores": os.cpu_count() or 1,
            "load_before": [round(x, 2) for x in os.getloadavg()],
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of `packages` (without importing them)."""
    return {p: importlib.metadata.version(p) for p in packages}


# --- ours -------------------------------------------------------------------------------


def complete_rows(csv_path: Path) -> list[dict[str, str]]:
    """The rows of a metrics CSV that another process may be appending to (a last line
    without its newline is still being written and is left for the next poll)."""
    if not csv_path.exists():
        return []
    text = csv_path.read_text()
    text = text[:text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text)))


def new_valid_points(rows: list[dict[str, str]], seen: set, minutes: float) -> list[dict]:
    """Validation accuracies of every stage not `seen` before, each timed at `minutes`."""
    points = []
    for r in rows:
        key = (r["stage"], r["step"])
        if r["split"] == "valid" and r["name"] == "accuracy" and key not in seen:
            seen.add(key)
            epoch = sum(1 for stage, _ in seen if stage == r["stage"])
            points.append({"stage": r["stage"], "epoch": epoch, "minutes": minutes,
                           "accuracy": float(r["value"])})
    return points


def final_accuracy(metrics_json: Path) -> float:
    """The run's result: the fwd+bwd ensemble's accuracy if there is one, else the forward
    classifier's."""
    summary = json.loads(metrics_json.read_text())
    return float(summary.get("ensemble", summary["classifier_fwd"])["accuracy"])


def run_logged(command: list[str], log_path: Path, on_poll, poll: float) -> tuple[float, float]:
    """Run `command` (output to `log_path`), calling `on_poll(minutes)` every `poll` seconds
    and once after it exits; return its start (`time.monotonic()`) and its minutes. A
    failure exits with the log's tail."""
    with log_path.open("w") as log:
        start = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while process.poll() is None:
            on_poll((time.monotonic() - start) / 60)
            time.sleep(poll)
        minutes = (time.monotonic() - start) / 60
    on_poll(minutes)
    if process.returncode != 0:
        tail = log_path.read_text()[-3000:]
        sys.exit(f"{' '.join(command)} failed with exit code {process.returncode}:\n{tail}")
    return start, minutes


def run_ours(config_path: Path, overrides: list[str], run_dir: Path, poll: float) -> dict:
    """train.py from an empty workdir; points from its metrics.csv as they appear."""
    workdir = run_dir / "workdir"
    command = [sys.executable, str(REPO / "train.py"), f"--config={config_path}",
               *[f"--config.{o}" for o in overrides], f"--workdir={workdir}", "--stage=all"]
    points: list[dict] = []
    seen: set = set()

    def on_poll(minutes: float) -> None:
        points.extend(new_valid_points(complete_rows(workdir / "metrics.csv"), seen, minutes))

    _, minutes = run_logged(command, run_dir / "train.log", on_poll, poll)
    return {"points": points, "minutes": minutes,
            "accuracy": final_accuracy(workdir / "metrics.json"),
            "versions": versions("jax", "jaxlib", "flax", "optax")}


# --- fastai ------------------------------------------------------------------------------


def fastai_unsupported(config) -> list[str]:
    """The config keys whose values the fastai recipe cannot reproduce (empty: all can)."""
    checks = {
        "data.tokenizer": config.data.tokenizer == "fastai",
        "data.source": config.data.source not in ("wikitext", "text_files"),
        "data.lm_source": config.data.lm_source not in ("wikitext", "text_files"),
        "data.csv_label_cols": len(config.data.csv_label_cols) == 1,  # one label column
        "data.csv_label_delim": not config.data.csv_label_delim,  # (single-label: Categorize)
        "lm.init_from": not config.lm.init_from,
        "lm.schedule": config.lm.schedule == "one_cycle",
        "lm.variable_length": not config.lm.variable_length,
        "classifier.schedule": config.classifier.schedule == "one_cycle",
        "checkpoint.restore_best": not config.checkpoint.restore_best,
        "model.compute_dtype": config.model.compute_dtype == "float32",
    }
    return [key for key, ok in checks.items() if not ok]


def run_fastai(config, run_dir: Path, poll: float) -> dict:
    """`frontier_fastai.py` on this config; its epoch events become points."""
    (run_dir / "config.json").write_text(config.to_json_best_effort())
    start, minutes = run_logged([sys.executable, str(FASTAI_SCRIPT), f"--run-dir={run_dir}",
                                 f"--threads={os.cpu_count() or 1}"],
                                run_dir / "fastai.log", lambda _: None, poll)
    # Epoch events carry the subprocess's time.monotonic(), a system-wide clock on Linux.
    events = [json.loads(line) for line in (run_dir / EVENTS).read_text().splitlines()]
    points = [{**{k: e[k] for k in ("stage", "epoch", "accuracy")},
               "minutes": (e["time"] - start) / 60} for e in events if "stage" in e]
    (final,) = [e["final_accuracy"] for e in events if "final_accuracy" in e]
    return {"points": points, "minutes": minutes, "accuracy": final,
            "versions": versions("fastai", "torch", "spacy")}


# --- TF-IDF ------------------------------------------------------------------------------


def run_tfidf(config) -> dict:
    """TF-IDF + logistic regression on the config's reviews, timed from reading the corpus."""
    start = time.monotonic()
    _, train, valid = classifier_documents(config)
    accuracy = tfidf_accuracy(train, valid)
    return {"points": [], "minutes": (time.monotonic() - start) / 60, "accuracy": accuracy,
            "versions": versions("scikit-learn")}


# --- runs and records --------------------------------------------------------------------


def config_label(path: Path | None) -> str:
    """The config path as written in the results (relative to the repository when inside)."""
    if path is None:
        return "full split"
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run_side(side: str, config_path: Path | None, args: argparse.Namespace) -> dict:
    """One measured run of `side`, as the record appended to the results."""
    from ulmfit_jax.trainer.config import base_config

    config = load_config(config_path, args.set) if config_path else base_config()
    if side == "fastai" and (bad := fastai_unsupported(config)):
        raise ConfigError(f"the fastai recipe cannot reproduce config.{', config.'.join(bad)} "
                         "as set; use our trainer's values or drop --side fastai")
    record = {"side": side, "config": config_label(config_path), "overrides": args.set,
              "smoke": args.smoke, **machine_info()}
    run_dir = Path(tempfile.mkdtemp(prefix=f"frontier-{side}-", dir=args.workdir))
    try:
        if side == "ours":
            record.update(run_ours(config_path, args.set, run_dir, args.poll))
        elif side == "fastai":
            record.update(run_fastai(config, run_dir, args.poll))
        else:
            record.update(run_tfidf(config))
    finally:
        if args.keep:
            print(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    record["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return record


def append_record(out: Path, record: dict) -> None:
    """Add `record` as one line of `out` (created with its folder if needed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_records(out: Path) -> list[dict]:
    """Every record of a results file, in the order they were run."""
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


# --- report ------------------------------------------------------------------------------


def run_name(record: dict) -> str:
    """Side, config and overrides of a run, for the table and the legend."""
    name = f"{record['side']} {Path(record['config']).stem}"
    return name + "".join(f" {o}" for o in record["overrides"])


def classifier_points(record: dict) -> list[dict]:
    """The record's per-epoch classifier validation points, in time order."""
    return [p for p in record["points"] if p["stage"].startswith("classifier")]


def markdown_table(records: list[dict]) -> str:
    """One row per run: final accuracy and minutes, every classifier epoch, machine load."""
    lines = ["| run | accuracy | minutes | classifier epochs: accuracy @ minutes | LM done "
             "(min) | load average before / after | date |", "|---|---|---|---|---|---|---|"]
    for r in records:
        epochs = ", ".join(f"{p['accuracy']:.1%} @ {p['minutes']:.2f}"
                           for p in classifier_points(r)) or "-"
        lm_done = [p["minutes"] for p in r["points"] if p["stage"].startswith("lm")]
        smoke = " (smoke)" if r["smoke"] else ""
        lines.append(
            f"| {run_name(r)}{smoke} | {r['accuracy']:.1%} | {r['minutes']:.2f} | {epochs} | "
            f"{f'{max(lm_done):.2f}' if lm_done else '-'} | {r['load_before'][0]:.1f} / "
            f"{r['load_after'][0]:.1f} | {r['date'][:16].replace('T', ' ')} UTC |")
    machines = sorted({f"{r['machine']}" for r in records})
    return "\n".join(lines) + "\n\nMachine: " + "; ".join(machines)


def plot_frontier(records: list[dict], path: Path) -> Path:
    """Accuracy vs minutes, one line per run, the TF-IDF accuracy as a horizontal line and
    the 15-minute budget as a vertical one; written to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in records:
        if r["side"] == "tfidf":
            ax.axhline(r["accuracy"], color="grey", linestyle="--",
                       label=f"TF-IDF + LR {r['accuracy']:.1%} ({r['minutes'] * 60:.0f} s)")
            continue
        points = classifier_points(r)
        minutes = [p["minutes"] for p in points] + [r["minutes"]]
        accuracy = [p["accuracy"] for p in points] + [r["accuracy"]]
        ax.plot(minutes, accuracy, marker="o", label=f"{run_name(r)} {r['accuracy']:.1%}")
    ax.axvline(BUDGET_MINUTES, color="red", linestyle=":", label=f"{BUDGET_MINUTES:.0f} min")
    ax.set(xlabel="wall-clock minutes since launch", ylabel="validation accuracy",
           title="IMDb (embedded split): accuracy vs wall-clock time")
    ax.grid(alpha=0.3)
    # Below the axes: run names with their overrides can be long.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.12))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# --- command line ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", nargs="+", choices=SIDES, default=[],
                        help="what to measure (several: one after the other)")
    parser.add_argument("--config", action="append", type=Path, default=[],
                        help="run config (repeat for several runs per side)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run, e.g. data.max_lm_docs=6000")
    parser.add_argument("--out", type=Path, help=f"results file (default {DEFAULT_OUT})")
    parser.add_argument("--report", action="store_true",
                        help="print the results as a markdown table and draw --plot")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--smoke", action="store_true",
                        help=f"a run in seconds on {config_label(SMOKE_CONFIG)}")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--workdir", type=Path, help="where runs are made (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory")
    args = parser.parse_args(argv)
    if not args.side and not args.report:
        parser.error("nothing to do: give --side and/or --report")
    if args.smoke and not args.config:
        args.config = [SMOKE_CONFIG]
    if args.out is None:
        args.out = SMOKE_OUT if args.smoke else DEFAULT_OUT
    if args.set and not args.config:
        parser.error("--set changes a --config; give one")
    if {"ours", "fastai"} & set(args.side) and not args.config:
        parser.error("--side ours/fastai needs --config (e.g. configs/quickstart.py)")
    for path in args.config:
        if not path.is_file():
            parser.error(f"--config {path}: not found")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    for side in args.side:
        configs = args.config if side != "tfidf" or args.config else [None]
        for config_path in configs:
            try:
                record = run_side(side, config_path, args)
            except UserError as e:  # a config that cannot run: the user's to fix
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            append_record(args.out, record)
            print(f"{run_name(record)}: accuracy {record['accuracy']:.4f} after "
                  f"{record['minutes']:.2f} min -> {args.out}")
    if args.report:
        if not args.out.exists():
            sys.exit(f"error: {args.out}: no results yet; run a --side first")
        records = read_records(args.out)
        print(markdown_table(records))
        print(f"plot: {plot_frontier(records, args.plot)}")


if __name__ == "__main__":
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    main()
