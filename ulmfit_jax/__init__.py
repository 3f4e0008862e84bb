"""ULMFiT in JAX/Flax: fastai-exact AWD-LSTM, conversion of fastai weights, sharded training."""

from typing import Any

__all__ = ["Ensemble", "LanguageModel", "TextClassifier", "use_cpu_cores"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy so that `import ulmfit_jax.text` in tokenizer worker processes (and
    # `ulmfit_jax.serving`) don't pay for jax and flax.
    if name == "use_cpu_cores":
        from ulmfit_jax.trainer.cpu_devices import use_cpu_cores

        return use_cpu_cores
    if name in __all__:
        from ulmfit_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'ulmfit_jax' has no attribute {name!r}")
