"""ULMFiT in JAX/Flax: fastai-exact AWD-LSTM, conversion of fastai weights, sharded training."""

from typing import Any

__all__ = ["Ensemble", "LanguageModel", "TextClassifier"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy so that `import ulmfit_jax.text` in tokenizer worker processes (and
    # `ulmfit_jax.serving`) don't pay for jax and flax.
    if name in __all__:
        from ulmfit_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'ulmfit_jax' has no attribute {name!r}")
