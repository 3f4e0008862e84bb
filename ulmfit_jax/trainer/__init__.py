"""ULMFiT training: `train_and_evaluate(config, workdir, stage)` (see `run`)."""

from typing import Any

__all__ = ["EXAMPLE_REVIEWS", "base_config", "train_and_evaluate"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a trainer submodule (sharding, steps) does not load every stage.
    if name in __all__:
        from ulmfit_jax.trainer import run

        return getattr(run, name)
    raise AttributeError(f"module 'ulmfit_jax.trainer' has no attribute {name!r}")
