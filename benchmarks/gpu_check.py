"""GPU check: cuDNN parity, the accelerator benchmark beside fastai, the GPU tests: one report.

    python benchmarks/gpu_check.py                       # a CUDA GPU; under 8 minutes
    python benchmarks/gpu_check.py --out report.md       # report elsewhere
    python benchmarks/gpu_check.py --smoke               # tiny sizes, any device: the script

On a lent device machine (the project's device kit; one step may run past its default 240 s):

    DEVICE_STEP_S=500 bash .device/run.sh "python benchmarks/gpu_check.py --out \\$OUT/gpu_check.md"

Three parts, each a subprocess with its own time limit (together under 8 minutes), in order:

1. `cudnn_parity.py` (WT103 size, batch 64): cuDNN's LSTM against the scan, same weights;
2. `accelerator.py --batch-sizes 64 256` (WT103 size, fastai fp32 and AMP beside ours,
   `TIMED_ROUNDS` rounds after `WARMUP_ROUNDS`);
3. pytest with `JAX_PLATFORMS=cuda` on `GPU_TESTS` (the files whose arithmetic a GPU changes).

The report (markdown, `--out`, default `gpu_check.md`) names the device, gives each part's
verdict and time in a table, then each part's output. The exit status is 1 when a part failed
or ran out of time (its output so far is in the report), 0 otherwise. Without a CUDA device
(and without `--smoke`) it says so in one line and exits 2. `--smoke` runs every part at tiny
size on whatever device is here (the tests: `SMOKE_TESTS` only): a check of the script, not
of the GPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ulmfit_jax.host_allocator import use_fast_allocator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GPU_TESTS = ("test_lstm", "test_cudnn_lstm", "test_language_model", "test_classifier",
             "test_train_step", "test_fastai_weights", "test_optimizer")
SMOKE_TESTS = ("test_lstm",)
TIMED_ROUNDS, WARMUP_ROUNDS = 5, 2
# Seconds per part on the GPU; together under 8 minutes with the device probe.
LIMITS = {"parity": 80, "accelerator": 240, "tests": 120}
SMOKE_LIMIT = 300
PROBE = ("import jax; from ulmfit_jax.model.cudnn_lstm import on_cuda; d = jax.devices(); "
         "print(on_cuda()); print(f'{len(d)} x {d[0].device_kind} ({d[0].platform}), "
         "jax {jax.__version__}')")


@dataclass(frozen=True)
class Part:
    """One check: its title, command, extra environment and time limit."""

    key: str
    title: str
    command: list[str]
    env: dict[str, str]
    limit_s: int


@dataclass(frozen=True)
class Outcome:
    part: Part
    returncode: int | None  # None: ran out of time
    seconds: float
    output: str


def parts(smoke: bool) -> list[Part]:
    """The three checks, at WT103 size on the GPU or tiny with `smoke`."""
    python = sys.executable
    tests = SMOKE_TESTS if smoke else GPU_TESTS
    parity = ["--size", "tiny", "--batch", "4", "--bptt", "8"] if smoke else []
    accelerator = (["--smoke"] if smoke else
                   ["--batch-sizes", "64", "256", "--steps", str(TIMED_ROUNDS),
                    "--warmup", str(WARMUP_ROUNDS)])
    test_env = {} if smoke else {"JAX_PLATFORMS": "cuda"}

    def limit(key: str) -> int:
        return SMOKE_LIMIT if smoke else LIMITS[key]

    return [
        Part("parity", "cuDNN parity", [python, "benchmarks/cudnn_parity.py", *parity], {},
             limit("parity")),
        Part("accelerator", "Accelerator benchmark (fastai beside)",
             [python, "benchmarks/accelerator.py", *accelerator], {}, limit("accelerator")),
        Part("tests", "GPU test subset",
             [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-ra",
              *[f"tests/{name}.py" for name in tests]], test_env, limit("tests")),
    ]


def probe_device() -> tuple[bool, str]:
    """(on a CUDA GPU, device description), asked of a child process: this one never starts
    jax, whose device memory the parts need."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          cwd=ROOT, env=_env({}), timeout=120, check=False)
    if proc.returncode != 0:
        return False, f"jax could not start: {proc.stderr.strip().splitlines()[-1:]}"
    on_cuda, description = proc.stdout.strip().splitlines()[-2:]
    return on_cuda == "True", description


def _env(extra: dict[str, str]) -> dict[str, str]:
    """This environment with the repository importable and `extra` set."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_part(part: Part) -> Outcome:
    """Run `part` from the repository root, its output (stdout and stderr) kept."""
    start = time.monotonic()
    try:
        proc = subprocess.run(part.command, cwd=ROOT, env=_env(part.env), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=part.limit_s, check=False)
        returncode, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as expired:
        returncode = None
        output = expired.stdout if isinstance(expired.stdout, str) else (
            (expired.stdout or b"").decode(errors="replace"))
    return Outcome(part, returncode, time.monotonic() - start, output)


def verdict(outcome: Outcome) -> str:
    """One cell: what the part found."""
    if outcome.returncode is None:
        return f"TIMED OUT after {outcome.part.limit_s} s"
    if outcome.part.key == "parity" and outcome.output.lstrip().startswith("n/a"):
        return "n/a: " + outcome.output.strip().splitlines()[0].removeprefix("n/a: ")
    if outcome.returncode != 0:
        return f"FAILED (exit {outcome.returncode})"
    if outcome.part.key == "parity":
        return "OVER tolerance" if "OVER" in outcome.output else "within tolerance"
    if outcome.part.key == "tests":
        summary = [line for line in outcome.output.splitlines()
                   if re.search(r"\d+ (passed|failed)", line)]
        return summary[-1].strip("= ") if summary else "ran"
    return "ran"


def _interesting(outcome: Outcome) -> str:
    """The part's output without jax/absl log noise and progress lines."""
    lines = [line for line in outcome.output.splitlines()
             if not re.match(r"(WARNING|I0000|W0000|E0000)|.*preparing ", line)]
    return "\n".join(lines).strip()


def report(outcomes: list[Outcome], device: str, smoke: bool, command: str) -> str:
    """The markdown report: device, summary table, then each part's output."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    total = sum(o.seconds for o in outcomes)
    lines = [f"# GPU check: {device}", "",
             f"{date}; `{command}`; {total:.0f} s in all."]
    if smoke:
        lines += ["", "SMOKE RUN: tiny sizes on whatever device is here; a check of the "
                  "script, not of the GPU."]
    lines += ["", "| part | result | seconds (limit) |", "|---|---|---|"]
    lines += [f"| {o.part.title} | {verdict(o)} | {o.seconds:.0f} ({o.part.limit_s}) |"
              for o in outcomes]
    for o in outcomes:
        body = _interesting(o)
        lines += ["", f"## {o.part.title}", "", f"`python {' '.join(o.part.command[1:])}`", ""]
        if o.part.key == "accelerator" and "### Accelerator benchmark" in body:
            lines.append(body[body.index("### Accelerator benchmark"):])  # already markdown
        else:
            lines += ["```text", body[-20_000:], "```"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.md"),
                        help="the report (markdown)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on any device: checks the script, no GPU figure")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    on_cuda, device = probe_device()
    if not on_cuda and not args.smoke:
        print(f"error: gpu_check needs a CUDA GPU; jax sees {device} "
              "(--smoke checks the script here)", file=sys.stderr)
        return 2
    command = "python benchmarks/gpu_check.py" + (" --smoke" if args.smoke else "")
    outcomes = []
    for part in parts(args.smoke):
        print(f"gpu_check: {part.title} (limit {part.limit_s} s)", file=sys.stderr, flush=True)
        outcomes.append(run_part(part))
        print(f"gpu_check: {verdict(outcomes[-1])}", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(outcomes, device, args.smoke, command))
    print(f"gpu_check: report {args.out}", file=sys.stderr)
    ok = all(o.returncode == 0 for o in outcomes)
    return 0 if ok else 1


if __name__ == "__main__":
    use_fast_allocator()  # train.py's heap allocator, for both sides alike
    sys.exit(main())
