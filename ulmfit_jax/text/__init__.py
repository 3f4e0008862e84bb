"""The host-side text pipeline: tokenizers, vocab, token cache, LM stream, classifier batches
and corpus sources. Never imports jax: tokenizer worker processes stay light."""

from ulmfit_jax.text.fastai_tokenizer import FastaiTokenizer

__all__ = ["FastaiTokenizer"]
