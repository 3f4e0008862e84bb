"""What `benchmarks/accelerator.py --smoke` must print on a CPU: every variant in one table,
finite figures for those that run here, and a reason for those that cannot."""

import math

VARIANTS = ["ours scan fp32", "ours scan bf16", "ours wavefront fp32", "ours wavefront bf16",
            "ours cuDNN fp32", "ours cuDNN bf16", "fastai fp32", "fastai AMP fp16"]
RUNNABLE_ON_CPU = ["ours scan fp32", "ours scan bf16", "ours wavefront fp32",
                   "ours wavefront bf16", "fastai fp32"]
COLUMNS = ["batch", "variant", "LM train tok/s", "vs fastai fp32", "LM eval tok/s",
           "vs fastai fp32", "clf train docs/s", "vs fastai fp32",
           "first call s (LM train / LM eval / clf)", "step memory MiB"]
RATES, RATIOS, FIRST_CALLS, MEMORY = (2, 4, 6), (3, 5, 7), 8, 9
UNAVAILABLE_ON_CPU = {"ours cuDNN fp32": "CUDA", "ours cuDNN bf16": "float32 only",
                      "fastai AMP fp16": "CUDA"}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _table(report: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header and rows (cells, by variant) of the markdown table in the benchmark's report."""
    lines = [line for line in report.splitlines() if line.startswith("| ")]
    rows = [_cells(line) for line in lines[1:]]
    assert all(len(row) == len(COLUMNS) for row in rows)
    return _cells(lines[0]), {row[1]: row for row in rows}


def _positive(text: str) -> float:
    value = float(text.replace(",", "").removesuffix("x"))
    assert math.isfinite(value) and value > 0, text
    return value


def check_cpu_smoke_report(report: str) -> None:
    """Assert that `report` (the benchmark's output from its "### Accelerator benchmark"
    heading on) is the complete smoke table of a CPU run at batch 4."""
    header, rows = _table(report)
    assert header == COLUMNS
    assert list(rows) == VARIANTS
    for name in RUNNABLE_ON_CPU:
        row = rows[name]
        assert row[0] == "4"
        for column in (*RATES, *RATIOS):
            _positive(row[column])
        assert len([_positive(s) for s in row[FIRST_CALLS].split("/")]) == 3
    assert [rows["fastai fp32"][column] for column in RATIOS] == ["1.00x"] * 3
    for name in RUNNABLE_ON_CPU[:4]:
        _positive(rows[name][MEMORY])
    assert rows["fastai fp32"][MEMORY] == "n/a"  # no CUDA peak on a CPU
    for name, reason in UNAVAILABLE_ON_CPU.items():
        assert rows[name][2].startswith("n/a (") and reason in rows[name][2]
        assert rows[name][3:] == ["n/a"] * 7
    assert "the goals do NOT apply here" in report
    assert "WT103 epoch (103M tokens)" in report
