"""Run logs in the workdir: `metrics.csv`, TensorBoard events, `loss_curve.png`, `metrics.json`.

The CSV is in long format (`stage,step,split,name,value`) so any stage can add any metric.
On resume, rows after the restored step of the resumed stage are dropped (they are replayed),
and TensorBoard purges its events after that step, so a resumed run logs what an
uninterrupted one would. In a multi-process run only process 0's logger is `active`; the
others' write nothing and read no rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ulmfit_jax.atomic_io import atomic_write

if TYPE_CHECKING:  # imported when the first writer opens: a run without TensorBoard skips it
    from tensorboardX import SummaryWriter

CSV_FIELDS = ("stage", "step", "split", "name", "value")
THROUGHPUT_FILE = "throughput.jsonl"


class MetricLogger:
    """Appends scalar metrics to the CSV and TensorBoard; writes the PNG and JSON summaries."""

    def __init__(self, workdir: str | Path, tensorboard: bool = True, active: bool = True):
        self.workdir = Path(workdir)
        self.csv_path = self.workdir / "metrics.csv"
        self.json_path = self.workdir / "metrics.json"
        self.active = active
        self._tensorboard = tensorboard and active
        self._writers: dict[str, SummaryWriter] = {}
        if not active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.csv_path.exists():
            with self.csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(CSV_FIELDS)

    def _writer(self, stage: str, purge_step: int | None = None) -> SummaryWriter | None:
        if not self._tensorboard:
            return None
        if stage not in self._writers:
            from tensorboardX import SummaryWriter

            self._writers[stage] = SummaryWriter(
                str(self.workdir / "tensorboard" / stage), purge_step=purge_step
            )
        return self._writers[stage]

    def resume(self, stage: str, step: int) -> None:
        """Drop the CSV rows of `stage` after `step` (a resumed run will log them again)."""
        if not self.active:
            return
        rows = self.read_rows()
        kept = [r for r in rows if r["stage"] != stage or int(r["step"]) <= step]
        with self.csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS)
            writer.writeheader()
            writer.writerows(kept)
        self._writer(stage, purge_step=step + 1)

    def log(self, stage: str, step: int, split: str, values: Mapping[str, float]) -> None:
        """Record `values` (name -> number) of `split` ("train", "valid") at `step` of `stage`."""
        if not self.active:
            return
        with self.csv_path.open("a", newline="") as f:
            writer = csv.writer(f)
            for name, value in values.items():
                writer.writerow((stage, int(step), split, name, repr(float(value))))
        tb = self._writer(stage)
        if tb is not None:
            for name, value in values.items():
                tb.add_scalar(f"{split}/{name}", float(value), int(step))

    def log_throughput(self, stage: str, epoch: int, tokens: int, seconds: float) -> None:
        """Append one epoch's steady-state training speed to `throughput.jsonl` (timings vary
        run to run, so they stay out of the metrics a resumed run must reproduce)."""
        if not self.active or seconds <= 0:
            return
        record = {"stage": stage, "epoch": epoch, "tokens": tokens, "seconds": seconds,
                  "tokens_per_s": tokens / seconds}
        with (self.workdir / THROUGHPUT_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read_rows(self) -> list[dict[str, str]]:
        """All CSV rows as dicts."""
        with self.csv_path.open(newline="") as f:
            return list(csv.DictReader(f))

    def write_summary(self, summary: Mapping[str, object]) -> None:
        """Merge `summary` into `metrics.json` (final metrics of each stage)."""
        if not self.active:
            return
        current = json.loads(self.json_path.read_text()) if self.json_path.exists() else {}
        current.update(summary)
        atomic_write(self.json_path, json.dumps(current, indent=2, sort_keys=True))

    def plot_loss_curves(self) -> Path | None:
        """Draw train/valid loss of every stage into `loss_curve.png`; return its path
        (None from an inactive logger)."""
        if not self.active:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        curves: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for r in self.read_rows():
            if r["name"] == "loss":
                curves.setdefault((r["stage"], r["split"]), []).append(
                    (int(r["step"]), float(r["value"]))
                )
        stages = sorted({stage for stage, _ in curves}) or ["(none)"]
        fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
        for ax, stage in zip(axes[0], stages, strict=True):
            for split in ("train", "valid"):
                points = sorted(curves.get((stage, split), []))
                if points:
                    steps, losses = zip(*points, strict=True)
                    ax.plot(steps, losses, marker="o" if split == "valid" else None, label=split)
            ax.set(title=stage, xlabel="step", ylabel="loss")
            if ax.lines:  # (an empty legend is a matplotlib warning: lr_find logs no losses)
                ax.legend()
        fig.tight_layout()
        path = self.workdir / "loss_curve.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        """Flush and close the TensorBoard writers."""
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
