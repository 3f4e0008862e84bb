"""ULMFiT in JAX: train a language model and/or a text classifier.

    python train.py --config configs/quickstart.py --workdir runs/quickstart --stage all
    python train.py --config configs/tiny.py --config.lm.epochs=2 --workdir /tmp/t --stage lm

Any config key can be overridden with `--config.<key>=<value>`; an unknown key is an error.
Rerunning the same command resumes from the latest checkpoint in `--workdir`; a workdir
belongs to the config that started it (`--fresh` starts over in it). A user error prints one
line and exits with 2 (`--verbose`: with its traceback); SIGTERM/Ctrl-C save a checkpoint and
exit with 143/130 (see README, "What happens when things go wrong").
"""

# ruff: noqa: E402 (the allocator is chosen before anything else is imported)
from ulmfit_jax.host_allocator import use_fast_allocator

use_fast_allocator()  # may re-execute this command once, with a faster heap allocator

from absl import app, flags
from ml_collections import config_flags

from ulmfit_jax.cli import run_cli
from ulmfit_jax.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, models and logs.")
_STAGE = flags.DEFINE_enum(
    "stage", "all", ["lm", "classifier", "all", "lr_find"],
    "Which ULMFiT stage(s) to run (lr_find: LR finder plot for the LM)."
)
_FRESH = flags.DEFINE_bool(
    "fresh", False, "Start afresh in --workdir: delete its checkpoints, models, vocab and "
    "metrics (the token cache is kept) instead of resuming."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    train_and_evaluate(_CONFIG.value, _WORKDIR.value, _STAGE.value, fresh=_FRESH.value)


if __name__ == "__main__":
    run_cli(main)
